"""`maestro task edit -t TASK --exec ... --containerImage ...`: fix a task that is not live, then
`maestro task retry` runs the new version.

Jobs carry their expanded command (the scheduler expands a task once, into one row per config
file, and dispatch runs the row's command), so a new `--exec` is expanded again here for every job
that has not succeeded, from the rows' own config file and output directory; succeeded jobs keep
the command they ran. The other fields (image, queue, limits, priority) are read from the task at
dispatch and need nothing more. The values are validated exactly as `task create` does, the
change is recorded in the task's history (`task_events`: who, when, each field from -> to), and
`maestro task show` prints that history.

Editable while the task is registered, broken, partial or killed, with no job still running (a
broken task's running scouts finish on their own first). Refused while scouting or running (kill
it first) and once completed (every job succeeded: create a new task instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestra import expansion
from orchestra.db.models import Dataset, Job, TaskEvent
from orchestra.errors import OrchestraError
from orchestra.security import privileged_edit
from orchestra.db.job_lookup import live_counts
from orchestra.services.context import Context
from orchestra.services.validation import check_image, check_priority, check_retries, parse_duration
from orchestra.states import JobStatus, TaskStatus

NO_LIMIT = ("none", "0")  # `--max-time none`: remove the limit


@dataclass(frozen=True)
class EditRequest:
    """The new values; None leaves a field as it is."""

    command: str | None = None
    image: str | None = None
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = None
    max_time: str | None = None


@dataclass(frozen=True)
class Edited:
    name: str
    status: str
    changes: dict[str, dict[str, Any]]  # field -> {"from": old, "to": new}
    n_jobs: int  # jobs given the new command


@dataclass(frozen=True)
class Event:
    """One entry of a task's history."""

    at: float
    actor: str
    what: str
    details: dict[str, Any]


def _validated(req: EditRequest) -> dict[str, Any]:
    """The requested values as the task's columns hold them, each checked like `task create`."""
    values: dict[str, Any] = {}
    if req.command is not None:
        expansion.check_template(req.command)
        values["command"] = req.command
    if req.image is not None:
        check_image(req.image)
        values["image"] = req.image
    if req.queue is not None:
        values["queue"] = req.queue
    if req.priority is not None:
        check_priority(req.priority)
        values["priority"] = req.priority
    if req.max_retries is not None:
        check_retries(req.max_retries)
        values["max_retries"] = req.max_retries
    if req.max_time is not None:
        values["max_time"] = None if req.max_time.strip().lower() in NO_LIMIT else parse_duration(req.max_time)
    if not values:
        raise OrchestraError("nothing to edit; give at least one of --exec, --containerImage, --queue, --priority, "
                             "--max-retries, --max-time")
    return values


def _refuse_live(name: str, status: str, request: str | None, running: int) -> None:
    if request:
        raise OrchestraError(f"task {name} is still being stopped ({request}); edit it in a moment")
    if status in (TaskStatus.SCOUTING, TaskStatus.RUNNING):
        raise OrchestraError(f"task {name} is {status}; stop it first (`maestro task kill -t {name}`), then edit it "
                             "and `maestro task retry` it")
    if status == TaskStatus.COMPLETED:
        raise OrchestraError(f"task {name} is completed (every job succeeded); create a new task to run "
                             "another version")
    if running:
        raise OrchestraError(f"task {name} still has {running} running job(s); wait until they end "
                             f"(`maestro job list -t {name}`), then edit it")


def edit(ctx: Context, ref: str, req: EditRequest) -> Edited:
    """Validate, then change the task and its unfinished jobs' commands and record it, in one transaction."""
    from orchestra.services.tasks import find

    values = _validated(req)
    with ctx.transaction() as session:
        task, owner = find(session, ref)
        ctx.require_owner(owner, f"task {task.name!r}")
        running = sum(live_counts(session, [task.id])[task.id].values())
        _refuse_live(task.name, task.status, task.request, running)
        if "queue" in values:
            cluster = ctx.settings.cluster(task.cluster)
            if values["queue"] not in cluster.queues:
                raise OrchestraError(f"queue {values['queue']!r} does not exist on cluster {cluster.name}; "
                                     f"use one of: {', '.join(cluster.queues)}")
        changes = privileged_edit.changed_fields(task, values)
        if not changes:
            raise OrchestraError(f"nothing changes: task {task.name} already has these values")
        commands = _reexpanded(session, task.id, task.name, task.data_dataset_id, values["command"]) \
            if "command" in changes else {}
        n = privileged_edit.edit(session, task.id, ctx.user, ctx.identity.actor,
                                 {k: values[k] for k in changes}, commands)
        ctx.audit(session, "task edit", task.name)
        return Edited(task.name, task.status, changes, n)


def _reexpanded(session: Session, task_id: int, name: str, data_id: int | None, template: str) -> dict[int, str]:
    """job id -> the new command, for every job of the task that has not succeeded."""
    rows = session.execute(select(Job.id, Job.config_path, Job.output_dir).where(
        Job.task_id == task_id, Job.status != JobStatus.SUCCEEDED.value).order_by(Job.id)).all()
    if not rows:
        return {}
    data_path = session.scalar(select(Dataset.path).where(Dataset.id == data_id)) if data_id is not None else None
    if data_path is None:
        raise OrchestraError(f"task {name}'s data dataset was deleted, so its jobs cannot be given a new command "
                             "(%DATA is unknown); create a new task instead")
    return {job_id: expansion.expand_command(template, data_path, config, out) for job_id, config, out in rows}


def history(session: Session, task_id: int) -> list[Event]:
    """The task's recorded changes, oldest first."""
    rows = session.execute(select(TaskEvent.at, TaskEvent.actor, TaskEvent.what, TaskEvent.details)
                           .where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)).all()
    return [Event(at, actor, what, dict(details or {})) for at, actor, what, details in rows]
