"""Writes a user may ask for on one job but not make directly: kill and retry (`maestro job kill|retry`).

As in orchestra/security/privileged.py: on PostgreSQL a user's role may not write jobs or
attempts, so each call goes to a SECURITY DEFINER function of migration 0007 that checks
`session_user` owns the task (or is an admin) before writing; on SQLite (one OS user) the same
writes run here in Python. The two sit side by side and every test of job kill/retry runs on both
databases. The service (orchestra/services/job_actions.py) has already refused what is not allowed
with the user's one-line errors; these functions re-check only what the database's integrity and
security depend on (PostgreSQL) or trust the service's checks made in the same transaction (SQLite).
"""
from __future__ import annotations

import time

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from orchestra.db.engine import is_sqlite
from orchestra.db.models import Attempt, Job, Task
from orchestra.db.job_lookup import lowered_queue_from
from orchestra.security.privileged import _call
from orchestra.states import LIVE_ATTEMPT, JobStatus, TaskStatus, retry_status

KILLED = "killed"  # a pending job ended now
STOPPING = "stopping"  # a live job's attempt is marked; the scheduler's next pass stops it
LIVE = tuple(s.value for s in LIVE_ATTEMPT)


def kill_job(session: Session, job: Job, task: Task, by: str) -> str:
    """A held or queued job ends KILLED now; a live one gets its attempt marked `stopping` (the
    scheduler signals it and records it killed once its process is gone). Returns which."""
    if not is_sqlite(session.connection()):
        return str(_call(session, func.orchestra_job_kill(job.id, by)))
    now = time.time()
    was = job.status  # read first: the ORM update below also changes the loaded object
    if was in (JobStatus.HELD, JobStatus.QUEUED):
        session.execute(update(Job).where(Job.id == job.id).values(
            status=JobStatus.KILLED.value, reason=f"killed by {by}", ended_at=now))
        if was == JobStatus.QUEUED:
            session.execute(update(Task).where(Task.id == task.id).values(
                n_queued=Task.n_queued - 1, updated_at=now))
        return KILLED
    session.execute(update(Attempt).where(Attempt.job_id == job.id, Attempt.status.in_(LIVE),
                                          Attempt.stopping.is_(None)).values(stopping=f"killed by {by}"))
    return STOPPING


def retry_job(session: Session, job: Job, task: Task, by: str) -> str:
    """A failed or killed job is queued again with a fresh retry budget (held while its task
    scouts and it is not a scout); an ended task resumes as `states.retry_status` says. Returns
    the job's new status."""
    if not is_sqlite(session.connection()):
        return str(_call(session, func.orchestra_job_retry(job.id, by)))
    now = time.time()
    was = task.status  # read first: the ORM updates below also change the loaded objects
    if was in (TaskStatus.SCOUTING, TaskStatus.RUNNING):
        status = TaskStatus(task.status)
    else:
        status = retry_status(True, task.released_at is not None, not task.bypass and task.n_scouts > 0)
    job_status = JobStatus.HELD if status == TaskStatus.SCOUTING and not job.is_scout else JobStatus.QUEUED
    session.execute(update(Job).where(Job.id == job.id).values(
        status=job_status.value, failures=0, reason=None, exit_code=None, queued_at=now, started_at=None,
        ended_at=None))
    changes: dict[str, object] = {"updated_at": now, "status": status.value}
    if job_status == JobStatus.QUEUED:
        changes["n_queued"] = Task.n_queued + 1
        if job.attempts == 0:  # killed before it ran: fresh again, the task's queue cursor goes down to it
            changes["queue_from"] = lowered_queue_from(job.index)
    if status != was:
        changes.update(reason=None, finished_at=None)
    session.execute(update(Task).where(Task.id == task.id).values(**changes))
    return job_status.value
