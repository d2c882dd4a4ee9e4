"""Rendering of `services.task_notes` (what a task waits for, its dependencies, its history) and
of what `task create` / `task edit` say about them: lines `maestro task show` prints after the
task's own detail."""
from __future__ import annotations

from typing import Any

from orchestra.cli.common import console, duration, when
from orchestra.security.privileged_edit import EDITABLE
from orchestra.services.dependencies import OPTION
from orchestra.services.task_edit import Edited
from orchestra.services.task_notes import TaskNotes
from orchestra.services.tasks import CreatedTask


def _value(field: str, value: Any) -> str:
    if field == "max_time":
        return duration(value) if value is not None else "none"
    return repr(value) if isinstance(value, str) else str(value)


def change_line(changes: dict[str, dict[str, Any]]) -> str:
    """`command 'a' -> 'b'; max_retries 1 -> 2`, fields in a fixed order (PostgreSQL's jsonb keeps its own)."""
    order = sorted(changes, key=lambda k: (EDITABLE.index(k) if k in EDITABLE else len(EDITABLE), k))
    return "; ".join(f"{k} {_value(k, changes[k].get('from'))} -> {_value(k, changes[k].get('to'))}" for k in order)


def notes(n: TaskNotes) -> None:
    if n.waiting:
        console.print(f"  {'waiting':24} {n.waiting}", markup=False)
    if n.dependencies:
        deps = ", ".join(f"{OPTION[d['kind']]} {d['task']} ({d['status']})" for d in n.dependencies)
        console.print(f"  {'dependencies':24} {deps}", markup=False)
    if n.history:
        console.print("  history:")
        for e in n.history:
            console.print(f"    {when(e.at)} {e.actor} {e.what}: {change_line(e.details)}", markup=False)


def created(task: CreatedTask, dry_run: bool) -> None:
    """`task create`'s lines: the usual ones (views.created), unless its job count is known only at
    its expansion (a --from-task config dataset); then what it waits for."""
    from orchestra.cli import views

    if not task.jobs_later:
        views.created(task, dry_run)
    else:
        done = "would be created (dry run; nothing was written)" if dry_run else f"created (id {task.id})"
        console.print(f"task {task.name} {done} on {task.cluster}/{task.queue}: one job per file of its config "
                      f"dataset, recorded when {task.name} is expanded", markup=False)
    for line in task.waits_for:
        console.print(f"  {line}", markup=False)


def edited(e: Edited) -> None:
    jobs = f"; {e.n_jobs} unfinished job(s) get the new command" if e.n_jobs else ""
    retry = "" if e.status == "registered" else f"; `maestro task retry -t {e.name}` runs it"
    console.print(f"edited {e.name} ({e.status}): {change_line(e.changes)}{jobs}{retry}", markup=False)
