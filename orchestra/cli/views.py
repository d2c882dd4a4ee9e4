"""Rendering for what the services return: details and the remaining rich tables. Listings (task,
job, dataset, queue, usage...) are described in `tables` and laid out by `listing`. No logic here."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

from orchestra.cli import listing, tables
from orchestra.cli.common import console, size, when
from orchestra.reasons import span
from orchestra.services.datasets import DatasetInfo
from orchestra.services.tasks import CreatedTask, TaskDetail

if TYPE_CHECKING:  # the fair-share views load numpy: only when those commands run
    from orchestra.replay import ReplayResult
    from orchestra.services.queue import JobExplanation, QueueReport
    from orchestra.services.status import StatusReport

STATUS_STYLE = tables.STATUS_STYLE


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


def counts_line(counts: dict[str, int]) -> str:
    """Every job state, in the order of the tables' columns and the JSON's `counts`."""
    return ", ".join(f"{s} {counts.get(s, 0)}" for s in tables.STATES)


def ended_line(counts: dict[str, int], total: int) -> str:
    ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "killed"))
    return (f"{ended} of {total} ended: {counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} failed, "
            f"{counts.get('killed', 0)} killed")


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
        ("job states", counts_line(s.counts)), ("progress", ended_line(s.counts, s.n_jobs)),
        ("max retries / max time", f"{d.max_retries} / {span(d.max_time) if d.max_time else 'none'}"),
        ("priority", str(s.priority)), ("outputs", d.output_root), ("created", when(s.created_at)),
    ]
    for key, value in lines:
        console.print(f"  {key:24} {value}", markup=False)
    if d.failed:
        console.print("  failed attempts (newest first, scouts first):")
        for f in d.failed:
            console.print(f"    job {f.job_id} (#{f.job_index}) attempt {f.attempt}: {f.reason}", markup=False)
            for line in f.log_tail.splitlines():
                console.print(f"      | {line}", markup=False)
    more = d.failed_total - len(d.failed)
    if more > 0:
        console.print(f"  {more:,} more failure{'s' if more > 1 else ''}: maestro job list -t {s.name} --status failed",
                      markup=False)


def dataset_detail(info: DatasetInfo, files: Sequence[tuple[str, int]], fmt: str | None = None,
                   noheader: bool = False) -> None:
    """The dataset, then its files as a listing (a table, or TSV when piped: the lines above it go
    to stderr then, so the TSV parses)."""
    def above() -> None:
        say = ((lambda line, **_: console.print(line, markup=False, soft_wrap=False)) if console.is_terminal
               else (lambda line, **_: sys.stderr.write(line + "\n")))
        say(f"{info.name} by {info.owner} on {info.cluster}: {info.path}", markup=False)
        say(f"  {info.n_files} file(s), {size(info.total_size)}, registered {when(info.created_at)}", markup=False)

    listing.emit(tables.files(files, info.n_files, info.name), fmt, noheader, before=above)


def queue_preamble(report: QueueReport) -> None:
    """`maestro queue`'s lines above its table: slots per queue, holds; on stderr when piped."""
    say = ((lambda line, **_: console.print(line, markup=False, soft_wrap=False)) if console.is_terminal
           else (lambda line, **_: sys.stderr.write(line + "\n")))  # a terminal: folded at its width
    state = ", ".join(f"{q.cluster}/{q.queue} {q.busy} of {q.slots} slots in use{' (HELD)' if q.held else ''}"
                      for q in report.queues)
    say(f"queues: {state}", markup=False)
    for q in report.queues:
        if q.held:
            say(q.held, markup=False)
    if report.run_as_note:
        say(report.run_as_note, markup=False)


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
    listing.block(tables.slots(report.queues))
    if report.users:
        listing.block(tables.loads(report.users))
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
