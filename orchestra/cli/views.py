"""Rendering with rich: tables and details for what the services return. No logic lives here."""
from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from orchestra.cli.common import console, duration, progress_bar, size, when
from orchestra.services.datasets import DatasetInfo
from orchestra.services.jobs import JobRow
from orchestra.services.tasks import CreatedTask, TaskDetail, TaskSummary
from orchestra.states import JobStatus

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
