"""Jobs for users: list a task's jobs with their latest attempt, and read (or follow) a job's log."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from sqlalchemy import select

from orchestra.db.models import Attempt, Job, Task, User
from orchestra.errors import NotFound, OrchestraError
from orchestra.services.context import Context
from orchestra.services.tasks import find
from orchestra.states import LIVE_JOB, JobStatus


@dataclass(frozen=True)
class JobRow:
    id: int
    index: int
    is_scout: bool
    status: str
    attempts: int
    exit_code: int | None
    reason: str | None
    host: str | None
    started_at: float | None
    ended_at: float | None
    log_path: str | None

    @property
    def runtime(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at


def list_jobs(ctx: Context, task_ref: str, status: str | None = None, limit: int = 200) -> list[JobRow]:
    if status is not None and status not in {s.value for s in JobStatus}:
        raise OrchestraError(f"--status {status!r} is unknown; use one of: {', '.join(s.value for s in JobStatus)}")
    with ctx.transaction() as session:
        task, _ = find(session, task_ref)
        query = (
            select(Job, Attempt.host, Attempt.log_path)
            .outerjoin(Attempt, (Attempt.job_id == Job.id) & (Attempt.number == Job.attempts))
            .where(Job.task_id == task.id)
            .order_by(Job.index)
            .limit(limit)
        )
        if status:
            query = query.where(Job.status == status)
        return [
            JobRow(j.id, j.index, j.is_scout, j.status, j.attempts, j.exit_code, j.reason, host, j.started_at,
                   j.ended_at, log)
            for j, host, log in session.execute(query)
        ]


def _attempt(ctx: Context, job_id: int, number: int | None) -> tuple[str | None, str, int]:
    with ctx.transaction() as session:
        row = session.execute(
            select(Job.status, Job.attempts, User.name).join(Task, Task.id == Job.task_id)
            .join(User, User.id == Task.owner_id).where(Job.id == job_id)
        ).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
        status, attempts, _owner = row
        number = number or attempts
        if number == 0:
            raise OrchestraError(f"job {job_id} has not started yet ({status}); no log so far")
        log = session.scalar(select(Attempt.log_path).where(Attempt.job_id == job_id, Attempt.number == number))
        if log is None:
            raise NotFound(f"job {job_id} has no attempt {number}; it has {attempts}")
        return log, status, number


def stream_log(ctx: Context, job_id: int, number: int | None = None, follow: bool = False) -> None:
    """Copy the log to stdout; with follow, keep going until the job is no longer live."""
    log, status, number = _attempt(ctx, job_id, number)
    position = 0
    while True:
        try:
            with open(log, "rb") as handle:
                handle.seek(position)
                chunk = handle.read()
                position += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
        except FileNotFoundError:
            if not follow:
                raise OrchestraError(f"log {log} of job {job_id} is not there (yet); try --follow") from None
        if not follow:
            return
        with ctx.transaction() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id)) or ""
        if status not in LIVE_JOB and status != JobStatus.QUEUED:
            follow = False  # one last read picks up the tail
        time.sleep(0.5)
