"""Rendering of the job-level commands (`maestro job show|kill|retry`) and of `maestro task watch`.

No logic: what to show comes from orchestra/services/job_actions.py and orchestra/services/watch.py.
Every line fits any width: one fact per line (folded, never cut) rather than wide tables, and the
live view's bar takes the width it is given (rich's ProgressBar), so it never wraps.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestra.cli.common import console, duration, when
from orchestra.services.job_actions import AttemptInfo, JobAction, JobDetail
from orchestra.services.watch import TaskSnapshot
from orchestra.states import JobStatus

STATES = [s.value for s in JobStatus]  # held, queued, starting, running, succeeded, failed, killed


def iso(ts: float | None) -> str | None:
    """ISO 8601 with the local time zone (`2026-12-01T10:00:03+01:00`), None for no time."""
    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def job_ref(job_id: int, index: int) -> str:
    """`job 13 (#12)`: the id a user types back, the index beside it."""
    return f"job {job_id} (#{index})"


def _ended(a: AttemptInfo) -> str:
    if a.ended_at is None:
        return "stopping" if a.stopping else "-"
    same_day = a.started_at is not None and time.localtime(a.started_at)[:3] == time.localtime(a.ended_at)[:3]
    return time.strftime("%H:%M:%S", time.localtime(a.ended_at)) if same_day else when(a.ended_at)


def job_detail(d: JobDetail) -> None:
    """`maestro job show`: the job, then each attempt as a block (like sacct's steps)."""
    scout = ", scout" if d.is_scout else ""
    console.print(f"job {d.id} (#{d.index}{scout}) of {d.task} (id {d.task_id}, {d.task_status}) by {d.owner}: "
                  f"{d.status}", markup=False)
    lines = [
        ("reason", d.reason or "-"),
        ("exit code", "-" if d.exit_code is None else str(d.exit_code)),
        ("attempts", f"{len(d.attempts)} ({d.failures} failure(s) counted against --max-retries {d.max_retries}; "
                     "a user's retry starts the count again)"),
        ("command", d.command), ("config file", d.config_path), ("output dir", d.output_dir),
        ("queued", when(d.queued_at)),
    ]
    for key, value in lines:
        console.print(f"  {key:12} {value}", markup=False)
    if not d.attempts:
        console.print("  no attempt yet", markup=False)
    for a in d.attempts:
        exit_code = "" if a.exit_code is None else f"  exit {a.exit_code}"
        console.print(f"attempt {a.number}  {a.status:9} {when(a.started_at)} -> {_ended(a)} "
                      f"({duration(a.runtime_seconds)}){exit_code}  host {a.host or '-'}", markup=False)
        if a.stopping and a.ended_at is None:
            console.print(f"  reason     being stopped: {a.stopping}", markup=False)
        elif a.reason and a.reason != f"exit code {a.exit_code}":  # the code is on the line above
            console.print(f"  reason     {a.reason}", markup=False)
        console.print(f"  log        {a.log_path or '-'}", markup=False)


def job_json(d: JobDetail) -> dict[str, Any]:
    """`maestro job show --json`: times in ISO 8601 with a zone, durations in seconds."""
    return {
        "id": d.id, "index": d.index, "task": d.task, "task_id": d.task_id, "task_status": d.task_status,
        "owner": d.owner, "is_scout": d.is_scout, "status": d.status, "failures": d.failures,
        "max_retries": d.max_retries, "exit_code": d.exit_code, "reason": d.reason, "command": d.command,
        "config_path": d.config_path, "output_dir": d.output_dir, "queued_at": iso(d.queued_at),
        "attempts": [{
            "number": a.number, "status": a.status, "host": a.host, "started_at": iso(a.started_at),
            "ended_at": iso(a.ended_at),
            "runtime_seconds": None if a.runtime_seconds is None else round(a.runtime_seconds, 3),
            "exit_code": a.exit_code, "reason": a.reason, "stopping": a.stopping, "log_path": a.log_path,
        } for a in d.attempts],
    }


def job_killed(done: JobAction) -> None:
    what = job_ref(done.job_id, done.index)
    if done.outcome == "killed":
        console.print(f"killed {what} of {done.task}", markup=False)
    else:
        console.print(f"stopping {what} of {done.task}: the scheduler stops it in its next pass and records it "
                      "killed", markup=False)


def job_retried(done: JobAction) -> None:
    what = job_ref(done.job_id, done.index)
    if done.outcome == "held":
        console.print(f"re-queued {what} of {done.task}: held until the task's scouts release it "
                      f"(task {done.task_status})", markup=False)
    else:
        console.print(f"re-queued {what} of {done.task} with a fresh retry budget (task {done.task_status})",
                      markup=False)


# ---------------------------------------------------------------- task watch

WATCH_COLUMNS = ["time", "task", "status", *STATES, "jobs"]


def watch_line(snap: TaskSnapshot, now: float) -> str:
    """One tab-separated line per change (`kubectl get -w`): the time, the state and every count."""
    status = snap.status if snap.request is None else f"{snap.status}({snap.request})"
    cells = [iso(now) or "", snap.name, status, *(str(snap.counts.get(s, 0)) for s in STATES), str(snap.n_jobs)]
    return "\t".join(cells)


def final_line(snap: TaskSnapshot) -> str:
    """The watch's last word: the state it ended in, and why when it did not complete."""
    ended = ", ".join(f"{snap.counts[s]} {s}" for s in STATES if snap.counts.get(s)) or "no jobs"
    why = f"; {snap.reason}" if snap.reason and snap.status != "completed" else ""
    return f"task {snap.name} {snap.status}: {ended}{why}"


def watch_view(snap: TaskSnapshot, now: float, interval: float) -> RenderableType:
    """The live view: title, progress bar (ended of all jobs), counts per state, running jobs and
    the latest failures; refreshed in place every `interval` seconds."""
    title = Text.assemble((f"{snap.name}", "bold"), f" (id {snap.task_id}) by {snap.owner}: ", (snap.status, "bold"))
    if snap.request:
        title.append(f" ({snap.request} being applied)")
    parts: list[RenderableType] = [title]
    if snap.reason:
        parts.append(Text(f"reason: {snap.reason}"))
    bar = Table.grid(expand=True, padding=(0, 1))
    bar.add_column(ratio=1)
    bar.add_column(no_wrap=True)
    total = max(snap.n_jobs, 1)
    bar.add_row(ProgressBar(total=total, completed=min(snap.n_ended, total)),
                Text(f"{snap.n_ended}/{snap.n_jobs} ended, {snap.counts.get('succeeded', 0)} succeeded"))
    parts.append(bar)
    counts = Table(box=None, padding=(0, 1), show_edge=False)
    for state in STATES:
        counts.add_column(state, justify="right", no_wrap=True)
    counts.add_row(*(str(snap.counts.get(s, 0)) for s in STATES))
    parts.append(counts)
    if snap.running:
        parts.append(Text("running:", style="bold"))
        for r in snap.running:
            runtime = duration(now - r.started_at) if r.started_at else "starting"
            stop = f", stopping ({r.stopping})" if r.stopping else ""
            parts.append(Text(f"  {job_ref(r.job_id, r.index)} attempt {r.attempt} on {r.host or '-'}, "
                              f"{runtime}{stop}"))
        more = snap.counts.get("running", 0) + snap.counts.get("starting", 0) - len(snap.running)
        if more > 0:
            parts.append(Text(f"  and {more} more"))
    if snap.failures:
        parts.append(Text("latest failures:", style="bold"))
        for f in snap.failures:
            why = f.reason or f.status
            parts.append(Text(f"  {job_ref(f.job_id, f.index)} attempt {f.attempt} {f.status}: {why}"))
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    parts.append(Text(f"every {interval:g}s, last {clock}; Ctrl-C stops watching, not the task", style="dim"))
    return Group(*parts)
