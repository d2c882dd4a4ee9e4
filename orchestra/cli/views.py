"""Rendering with rich: tables and details for what the services return. No logic lives here."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

from orchestra.cli.common import console, duration, progress_bar, size, when
from orchestra.services.datasets import DatasetInfo
from orchestra.services.jobs import JobRow
from orchestra.services.tasks import CreatedTask, TaskDetail, TaskSummary
from orchestra.states import JobStatus

if TYPE_CHECKING:  # the fair-share views load numpy: only when those commands run
    from orchestra.replay import ReplayResult
    from orchestra.services.queue import JobExplanation, QueueReport
    from orchestra.services.status import StatusReport
    from orchestra.services.usage import UsageReport

STATUS_STYLE = {
    "registered": "cyan", "scouting": "yellow", "running": "blue", "completed": "green",
    "partial": "magenta", "broken": "red", "killed": "red", "succeeded": "green", "failed": "red",
    "queued": "cyan", "held": "dim", "starting": "yellow",
}


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def created(task: CreatedTask, dry_run: bool) -> None:
    if dry_run:
        console.print(f"dry run: task {task.name} would have {task.n_jobs} job(s) on {task.cluster}/{task.queue}, "
                      f"{task.n_scouts} scout(s); nothing was written. First commands:", markup=False)
    else:
        scouts = f"{task.n_scouts} scout job(s) test it first" if task.n_scouts else "released at once (--bypass)"
        console.print(f"created task {task.name} (id {task.id}): {task.n_jobs} job(s) on "
                      f"{task.cluster}/{task.queue}; {scouts}", markup=False)
        return
    for command in task.first_commands:
        console.print(f"  {command}", markup=False)


def task_table(rows: Sequence[TaskSummary]) -> None:
    table = Table(title=None, show_lines=False)
    for column in ("id", "task", "user", "queue", "held", "queued", "running", "done", "failed", "progress", "status"):
        table.add_column(column, justify="right" if column in ("id", "held", "queued", "running", "done", "failed") else "left")
    for r in rows:
        c = r.counts
        running = c.get(JobStatus.RUNNING, 0) + c.get(JobStatus.STARTING, 0)
        failed = c.get(JobStatus.FAILED, 0) + c.get(JobStatus.KILLED, 0)
        table.add_row(
            str(r.id), r.name, r.owner, r.queue, str(c.get(JobStatus.HELD, 0)), str(c.get(JobStatus.QUEUED, 0)),
            str(running), str(c.get(JobStatus.SUCCEEDED, 0)), str(failed), progress_bar(r.done, r.n_jobs),
            styled(r.status),
        )
    console.print(table)
    if not rows:
        console.print("no tasks")


def task_detail(d: TaskDetail) -> None:
    s = d.summary
    console.print(f"[bold]{s.name}[/] (id {s.id}) by {s.owner}: {styled(s.status)}")
    if s.reason:
        console.print(f"  reason: {s.reason}", markup=False)
    if s.request:
        console.print(f"  pending request: {s.request} (the scheduler acts on it next pass)")
    lines = [
        ("cluster / queue", f"{s.cluster} / {s.queue}"), ("image", d.image), ("command", d.command),
        ("config dataset", d.config_dataset or "(deleted)"), ("data dataset", d.data_dataset or "(deleted)"),
        ("jobs", f"{s.n_jobs} ({d.n_scouts} scouts{', bypassed' if d.bypass else ''})"),
        ("job states", ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items())) or "-"),
        ("max retries / max time", f"{d.max_retries} / {duration(d.max_time)}"),
        ("priority", str(s.priority)), ("outputs", d.output_root), ("created", when(s.created_at)),
    ]
    for key, value in lines:
        console.print(f"  {key:24} {value}", markup=False)
    if d.failed:
        console.print("  failed attempts (newest first, scouts first):")
        for f in d.failed:
            console.print(f"    job {f.job_index} attempt {f.attempt}: exit code {f.exit_code}, {f.reason or 'failed'}",
                          markup=False)
            for line in f.log_tail.splitlines():
                console.print(f"      | {line}", markup=False)


def job_table(rows: Sequence[JobRow]) -> None:
    table = Table()
    for column in ("job", "index", "scout", "status", "attempts", "exit", "host", "started", "runtime", "reason"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.id), str(r.index), "yes" if r.is_scout else "", styled(r.status), str(r.attempts),
            "" if r.exit_code is None else str(r.exit_code), r.host or "", when(r.started_at),
            duration(r.runtime), r.reason or "",
        )
    console.print(table)


def dataset_table(rows: Sequence[DatasetInfo]) -> None:
    table = Table()
    for column in ("id", "dataset", "owner", "cluster", "kind", "files", "size", "path"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r.id), r.name, r.owner, r.cluster, "dir" if r.is_dir else "file", str(r.n_files),
                      size(r.total_size), r.path)
    console.print(table)


def dataset_detail(info: DatasetInfo, files: Sequence[tuple[str, int]]) -> None:
    console.print(f"[bold]{info.name}[/] by {info.owner} on {info.cluster}: {info.path}")
    console.print(f"  {info.n_files} file(s), {size(info.total_size)}, registered {when(info.created_at)}")
    for path, n in files:
        console.print(f"  {size(n):>10}  {path}", markup=False)
    if info.n_files > len(files):
        console.print(f"  ... and {info.n_files - len(files)} more")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def queue_table(report: QueueReport, per_job: bool = False) -> None:
    """`maestro queue`: pending work in dispatch order (per queue), the priority and why it waits."""
    state = ", ".join(f"{q.cluster}/{q.queue} {q.busy} of {q.slots} slots in use{' (HELD)' if q.held else ''}"
                      for q in report.queues)
    console.print(f"queues: {state}", markup=False)
    for q in report.queues:
        if q.held:
            console.print(q.held, markup=False)
    if report.run_as_note:
        console.print(report.run_as_note, markup=False)
    table = Table()
    columns = ["pos", "queue", "task", "user", "state", "job" if per_job else "jobs", "priority", "fairshare", "age",
               "taskprio", "scout", "why pending"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("pos", "jobs", "job", "priority", "fairshare", "age",
                                                                 "taskprio", "scout") else "left")
    for r in report.rows:
        w = r.weighted or {}
        if per_job and r.job_id is not None:
            what = f"{r.job_id} (#{r.job_index}{', scout' if r.scouts else ''})"
        else:
            what = f"{r.pending}{' scouts' if r.scouts else ''}"
        table.add_row(
            str(r.position) if r.position else "-", f"{r.cluster}/{r.queue}", f"{r.task} ({r.task_id})", r.user,
            styled(r.state), what, _num(r.total), _num(w.get("fairshare")), _num(w.get("age")),
            _num(w.get("priority")), _num(w.get("scout")), r.reason,
        )
    console.print(table)
    if not report.rows:
        console.print("no pending jobs")
    elif report.jobs_truncated:
        console.print("(more pending jobs not shown: raise --limit, or drop --jobs for one row per task)")
    wt = report.weights
    console.print(f"priority = {wt['fairshare']:g} x fairshare + {wt['age']:g} x age + {wt['priority']:g} x task "
                  f"priority (+{wt['scout']:g} while scouting); pos = place in its queue's dispatch order",
                  markup=False, style="dim")


def job_why(e: JobExplanation) -> None:
    console.print(f"job {e.job_id} (#{e.job_index}{', scout' if e.is_scout else ''}) of {e.task} by {e.user}: "
                  f"{styled(e.status)}")
    if e.position:
        console.print(f"  position {e.position} in {e.cluster}/{e.queue}", markup=False)
    if e.weighted is not None and e.total is not None:
        w = e.weighted
        console.print(f"  priority {e.total:.0f} = fairshare {w['fairshare']:.0f} + age {w['age']:.0f} + "
                      f"task priority {w['priority']:.0f} + scout {w['scout']:.0f}", markup=False)
    console.print(f"  why: {e.reason}", markup=False)


def usage_table(report: UsageReport) -> None:
    """`maestro usage`: per-user shares, decayed usage and the fair-share factor (like sshare)."""
    table = Table()
    accounts = any(r.account for r in report.rows)
    columns = ("user", *(("account",) if accounts else ()), "share", "norm share", "usage h", "effective h",
               "norm usage", "fairshare", "running", "queued", "held", "cap")
    for column in columns:
        table.add_column(column, justify="left" if column in ("user", "account") else "right")
    for r in report.rows:
        cap = "none" if r.cap <= 0 else f"{r.cap}{'' if r.cap_from == 'user' else ' (default)'}"
        table.add_row(
            r.user, *((r.account or "-",) if accounts else ()), f"{r.share:g}", f"{r.norm_share:.3f}", f"{r.usage / 3600:.1f}", f"{r.effective / 3600:.1f}",
            f"{r.norm_usage:.3f}", f"{r.fairshare:.3f}{'' if r.ranked else '*'}", str(r.running), str(r.queued),
            str(r.held), cap,
        )
    console.print(table)
    if not report.rows:
        console.print("no users")
    console.print(
        f"usage: weighted slot-hours, halved every {report.half_life_days:g} days; effective = usage + what the "
        "running jobs will weigh; * = nothing queued: the factor it would have if it queued now",
        markup=False, style="dim")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return f"{d}d{h:02d}:{m:02d}" if d else f"{h}:{m:02d}"


def simulation(result: ReplayResult, every: int | None = None) -> None:
    """`orchestra simulate`: running slots per user over time, then the fair-slice summary and costs."""
    import numpy as np

    n = len(result.times)
    if every is None:
        every = max(1, -(-n // 40))
    table = Table(title=f"running slots per user (of {result.slots}), every {every} cycle(s) of {result.cycle:g} s")
    table.add_column("time", justify="right")
    table.add_column("cycle", justify="right")
    for user, share in zip(result.users, result.shares):
        table.add_column(f"{user} ({share:g})", justify="right")
    table.add_column("busy", justify="right")
    table.add_column("pending", justify="right")
    arrivals: dict[int, list[str]] = {}
    for user in result.users:
        c = int(np.searchsorted(result.times, result.arrival(user) - 1e-9))
        arrivals.setdefault(c, []).append(user)
    for c in range(n):
        if c % every and c not in arrivals and c != n - 1:
            continue
        busy = int(result.running[c].sum())
        cells = []
        for j in range(len(result.users)):
            r = int(result.running[c, j])
            pct = f" ({100 * r / busy:.0f}%)" if busy else ""
            cells.append(f"{r}{pct}" if r or result.pending[c, j] else "-")
        mark = " <- " + ", ".join(arrivals[c]) + " arrive" if c in arrivals and c else ""
        table.add_row(_clock(result.times[c]) + mark, str(c), *cells, str(busy), f"{int(result.pending[c].sum()):,}")
    console.print(table)
    caveat = ("; counts slots, not their charge: with queues of different charge (gpu) it is only indicative"
              if len(result.trace.queues) > 1 else "")
    console.print("fair slice: within one slot of share x busy slots / shares of the users running or waiting"
                  + caveat, markup=False)
    for user, info in result.fair_slice().items():
        if info["arrives_at"] is None:
            console.print(f"  {user}: arrives after the end", markup=False)
            continue
        if info["fair_cycle"] is None:
            got = "never within the simulated time"
        else:
            running = int(result.running[info["fair_cycle"], result.users.index(user)])
            got = (f"reached at cycle {info['fair_cycle']} ({info['cycles_to_fair']} cycle(s) after arriving; "
                   f"target {info['target']:.1f}, running {running})")
        console.print(f"  {user}: arrives at {_clock(info['arrives_at'])} (cycle {info['arrives_cycle']}), {got}",
                      markup=False)
    w = result.cycle_wall
    state = "every task done" if result.finished else "stopped before every task was done"
    console.print(
        f"simulated {_clock(result.times[-1] if n else 0)} in {n} cycles ({state}); wall time: setup "
        f"{result.setup_wall:.1f} s, task submission {result.submit_wall:.1f} s, cycles {w.sum():.1f} s "
        f"(mean {1000 * w.mean() if n else 0:.0f} ms, max {1000 * w.max() if n else 0:.0f} ms)", markup=False)


def scheduler_warning(line: str | None) -> None:
    """The scheduler-liveness warning: one line on stderr, so `--json` output stays parseable."""
    if line:
        sys.stderr.write(line + "\n")


def status(report: StatusReport) -> None:
    """`orchestra status`: the scheduler's liveness, slots per queue, load per user, holds."""
    from orchestra.services.status import ago

    live = report.scheduler
    console.print(f"Orchestra {report.version}", markup=False)
    if live.state == "never":
        state = "never ran on this database"
    elif live.state == "stopped":
        state = f"stopped at {when(live.stopped_at)} ({ago(live.now - (live.stopped_at or live.now))} ago)"
    else:
        state = "NOT SEEN (stale)" if live.state == "stale" else "running"
    console.print(f"scheduler        {state}", markup=False)
    if live.holder:
        console.print(f"  lease holder   {live.holder} (until {when(live.lease_expires_at)})", markup=False)
    elif live.state != "never":
        console.print("  lease holder   none", markup=False)
    if live.heartbeat_at is not None:
        console.print(f"  heartbeat      {ago(live.heartbeat_age or 0)} ago ({when(live.heartbeat_at)}; stale after "
                      f"{ago(live.threshold)})", markup=False)
    if live.last_cycle_at is not None:
        console.print(f"  last cycle     {when(live.last_cycle_at)} ({ago(live.now - live.last_cycle_at)} ago)",
                      markup=False)
    table = Table(title=None)
    for column in ("queue", "used", "total", "free"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for q in report.queues:
        table.add_row(f"{q.cluster}/{q.queue}", str(q.busy), str(q.slots), str(q.free))
    console.print(table)
    if report.users:
        table = Table(title=None)
        for column in ("user", "queued", "held", "running"):
            table.add_column(column, justify="left" if column == "user" else "right")
        for u in report.users:
            table.add_row(u.user, str(u.queued), str(u.held), str(u.running))
        console.print(table)
    else:
        console.print("users            nothing queued or running", markup=False)
    if report.holds:
        console.print("holds:", markup=False)
        for h in report.holds:
            since = f" since {when(h.since)}" if h.since else ""
            tries = f"; {h.tries} launch(es) refused" if h.tries else ""
            after = ""
            if h.next_try is not None:
                left = h.next_try - live.now
                after = f"; next try in {ago(left)}" if left >= 1 else "; next try at the next cycle"
            console.print(f"  {h.kind} {h.target}{since}: {h.reason}{tries}{after}", markup=False)
    else:
        console.print("holds            none", markup=False)
