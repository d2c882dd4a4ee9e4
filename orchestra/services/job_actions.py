"""One job at a time, like sacct and scancel/scontrol requeue: show a job with every attempt, kill
it, retry it (`maestro job show|kill|retry`).

Kill and retry validate everything here, with the user's one-line refusals, then make the write
through orchestra/security/privileged_jobs.py (Python on SQLite, the owner's checked functions of
migration 0007 on PostgreSQL). Stopping a running job needs the backend: it is recorded on the job's
live attempt (`stopping`) and the scheduler's next pass stops it, as it does for a task kill and a
timeout, so the CLI never talks to a backend.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestra.db.job_lookup import settled_counts
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.errors import NotFound, OrchestraError
from orchestra.reasons import ended
from orchestra.security import privileged_jobs
from orchestra.services.context import Context
from orchestra.services.validation import known_job_id
from orchestra.states import (FINAL_JOB, FINAL_TASK, LIVE_ATTEMPT, LIVE_JOB, JobStatus, TaskStatus, retry_status,
                              scout_verdict)


@dataclass(frozen=True)
class AttemptInfo:
    """One run of a job (a step, in sacct's words)."""

    number: int
    status: str
    host: str | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    reason: str | None
    log_path: str | None
    stopping: str | None  # why the scheduler is stopping it, while it is still live

    @property
    def runtime_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        # Never negative: the end of a very short attempt may be stamped by another clock (the
        # job's exit file) a few milliseconds before the scheduler's start stamp.
        return max(0.0, (self.ended_at or time.time()) - self.started_at)


@dataclass(frozen=True)
class JobDetail:
    id: int
    index: int
    task: str
    task_id: int
    task_status: str
    owner: str
    is_scout: bool
    status: str
    failures: int
    max_retries: int
    exit_code: int | None
    reason: str | None
    command: str
    config_path: str
    output_dir: str
    queued_at: float
    attempts: list[AttemptInfo]


def _job(session: Session, job_id: int) -> tuple[Job, Task, str]:
    """The job, its task and the task's owner; NotFound with the way to find job ids."""
    if not known_job_id(job_id):
        raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
    row = session.execute(
        select(Job, Task, User.name).join(Task, Task.id == Job.task_id).join(User, User.id == Task.owner_id)
        .where(Job.id == job_id)
    ).first()
    if row is None:
        raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
    return row[0], row[1], row[2]


def show(ctx: Context, job_id: int) -> JobDetail:
    """A job and every attempt of it, oldest first (anyone may read it, like `squeue`)."""
    with ctx.transaction() as session:
        job, task, owner = _job(session, job_id)
        attempts = [
            AttemptInfo(a.number, a.status, a.host, a.started_at, a.ended_at, a.exit_code,
                        ended(a.status, a.exit_code, a.reason, task.max_time) or None, a.log_path, a.stopping)
            for a in session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
        ]
        return JobDetail(job.id, job.index, task.name, task.id, task.status, owner, job.is_scout, job.status,
                         job.failures, task.max_retries, job.exit_code,
                         ended(job.status, job.exit_code, job.reason, task.max_time) or job.reason or None,
                         job.command, job.config_path, job.output_dir, job.queued_at, attempts)


@dataclass(frozen=True)
class JobAction:
    """What a job kill or retry did: the job's state now, and its task's."""

    job_id: int
    index: int
    task: str
    outcome: str  # kill: "killed" (at once) or "stopping" (next pass); retry: "queued" or "held"
    task_status: str


def _owned(ctx: Context, session: Session, job_id: int) -> tuple[Job, Task]:
    job, task, owner = _job(session, job_id)
    ctx.require_owner(owner, f"job {job_id} of task {task.name!r}")
    return job, task


def kill(ctx: Context, job_id: int) -> JobAction:
    """Kill one job: held or queued, it ends killed at once; starting or running, the scheduler
    stops it in its next pass and records it killed. Its task then follows the usual rules (a
    running task whose last live job this was ends partial)."""
    with ctx.transaction() as session:
        job, task = _owned(ctx, session, job_id)
        if task.request:
            raise OrchestraError(f"task {task.name!r} is already being stopped ({task.request}); "
                                 f"job {job_id} stops with it")
        if job.status in FINAL_JOB:
            raise OrchestraError(f"job {job_id} already ended ({job.status}); nothing to kill")
        if job.status in LIVE_JOB and not session.scalar(select(func.count()).where(
                Attempt.job_id == job_id, Attempt.status.in_([s.value for s in LIVE_ATTEMPT]),
                Attempt.stopping.is_(None))):
            raise OrchestraError(f"job {job_id} is already being stopped; the scheduler ends it in its next pass")
        outcome = privileged_jobs.kill_job(session, job, task, ctx.user)
        ctx.audit(session, "job kill", f"{task.name} job {job_id}")
        ctx.wake_scheduler(session)
        return JobAction(job_id, job.index, task.name, outcome, task.status)


def _retry_refusal(ctx: Context, session: Session, job: Job, task: Task) -> str | None:
    """Why this job may not be retried now (None: it may)."""
    if task.request:
        return f"task {task.name!r} is still being stopped ({task.request}); retry in a moment"
    if job.status == JobStatus.SUCCEEDED:
        return f"job {job.id} succeeded; nothing to retry"
    if job.status not in (JobStatus.FAILED, JobStatus.KILLED):
        return (f"job {job.id} is {job.status}; only a failed or killed job can be retried "
                f"(`maestro job kill {job.id}` stops it)")
    if task.status not in FINAL_TASK:
        return None
    to = retry_status(True, task.released_at is not None, not task.bypass and task.n_scouts > 0)
    if to != TaskStatus.SCOUTING:
        return None
    hint = f"`maestro task retry -t {task.name}` runs all its failed scouts again"
    if not job.is_scout:
        return f"job {job.id} is not a scout, and task {task.name!r} was never released; {hint}"
    # The task scouts again with this one scout re-queued: refused if the verdict is broken at once.
    counts = settled_counts(session, [task.id], scouts_only=True)[task.id]
    failed = counts.get(JobStatus.FAILED, 0) + counts.get(JobStatus.KILLED, 0) - 1
    threshold = ctx.settings.scheduler.scout_success_threshold
    if scout_verdict(counts.get(JobStatus.SUCCEEDED, 0), failed, task.n_scouts, threshold) == TaskStatus.BROKEN:
        return f"retrying job {job.id} alone cannot meet the scout threshold of task {task.name!r}; {hint}"
    return None


def retry(ctx: Context, job_id: int) -> JobAction:
    """Queue a failed or killed job again with a fresh retry budget; a task that had ended resumes
    (running, or scouting if it was never released: `states.retry_status`)."""
    with ctx.transaction() as session:
        job, task = _owned(ctx, session, job_id)
        refusal = _retry_refusal(ctx, session, job, task)
        if refusal:
            raise OrchestraError(refusal)
        outcome = privileged_jobs.retry_job(session, job, task, ctx.user)
        status = session.scalar(select(Task.status).where(Task.id == task.id)) or ""
        ctx.audit(session, "job retry", f"{task.name} job {job_id}")
        ctx.wake_scheduler(session)
        return JobAction(job_id, job.index, task.name, outcome, status)
