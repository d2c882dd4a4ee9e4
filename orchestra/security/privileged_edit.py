"""`maestro task edit`'s write: a task's editable columns, its unfinished jobs' commands, and the
history row, in one step.

On PostgreSQL a user's role may not UPDATE tasks or jobs (migration 0003): this calls
`orchestra_task_edit` (migration 0008), a SECURITY DEFINER function that checks `session_user`
owns the task (or is an admin) and that the task is not live, then writes and records the change
with `actor` = session_user. On SQLite the same write is the Python below. Tests of `task edit`
run on both databases, so the twins cannot drift. The caller (services/task_edit.py) has already
validated the new values and produced the user's one-line errors.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import BigInteger, Text, bindparam, cast, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session

from orchestra.db.bulk import bulk_update
from orchestra.db.engine import is_sqlite
from orchestra.db.job_lookup import live_jobs_exist
from orchestra.db.models import Job, Task, TaskEvent
from orchestra.errors import OrchestraError
from orchestra.security.privileged import _call
from orchestra.states import JobStatus, TaskStatus

EDITABLE = ("command", "image", "queue", "priority", "max_retries", "max_time")
EDITABLE_STATES = (TaskStatus.REGISTERED, TaskStatus.BROKEN, TaskStatus.PARTIAL, TaskStatus.KILLED)


def changed_fields(task: Task, changes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{field: {"from": old, "to": new}} for each value that differs: the history's details."""
    return {k: {"from": getattr(task, k), "to": v} for k, v in changes.items() if getattr(task, k) != v}


def edit(session: Session, task_id: int, by: str, actor: str, changes: Mapping[str, Any],
         commands: Mapping[int, str]) -> int:
    """Apply `changes` to the task and give its jobs `commands` (job id -> new command; succeeded
    jobs keep theirs); record the edit. Returns the number of jobs whose command was replaced."""
    if not is_sqlite(session.connection()):
        ids, texts = list(commands), list(commands.values())
        fn = func.orchestra_task_edit(
            task_id, by, cast(bindparam("edit_changes", dict(changes), type_=JSONB), JSONB),
            cast(bindparam("edit_jobs", ids, type_=ARRAY(BigInteger)), ARRAY(BigInteger)),
            cast(bindparam("edit_commands", texts, type_=ARRAY(Text)), ARRAY(Text)))
        return int(_call(session, fn))  # type: ignore[arg-type]
    if set(changes) - set(EDITABLE):
        raise OrchestraError(f"only {', '.join(EDITABLE)} can be edited")
    task = session.execute(select(Task).where(Task.id == task_id)).scalar_one()
    live = session.scalar(select(live_jobs_exist(task_id)))
    if task.request is not None or task.status not in EDITABLE_STATES or live:
        raise OrchestraError(f"task {task.name} cannot be edited while it is {task.status} or has running jobs")
    details = changed_fields(task, changes)
    if not details:
        raise OrchestraError(f"nothing to change in task {task.name}")
    now = time.time()
    session.execute(update(Task).where(Task.id == task_id).values(**dict(changes), updated_at=now))
    todo = [{"id": job_id, "command": command} for job_id, command in commands.items()]
    bulk_update(session, Job.__table__, todo,
                where=[Job.task_id == task_id, Job.status != JobStatus.SUCCEEDED.value])
    session.execute(insert(TaskEvent).values(task_id=task_id, at=now, actor=actor, what="edit", details=details))
    return len(todo)
