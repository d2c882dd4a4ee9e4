"""Writes a user may ask for but not make directly: kill, retry and delete of a task, and the
first row of a user.

On PostgreSQL a user's role cannot change job states or task counters (see migration 0003): each
of these calls a SECURITY DEFINER function owned by the schema's owner, which checks
`session_user` owns the task (or is an admin) before writing. On SQLite (one OS user, nothing to
guard against) the same writes run here in Python. Both implementations sit side by side in
this module, and every test of kill/retry/delete runs on both databases, so they cannot drift.
The caller has already validated the request and produced the user's one-line errors; the
functions re-check only what security depends on.
"""
from __future__ import annotations

import time

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestra.db.engine import is_sqlite
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.db.job_lookup import live_jobs_exist, lowered_queue_from, lowest_fresh, settled
from orchestra.errors import OrchestraError, PermissionDenied
from orchestra.states import LIVE_JOB, JobStatus, TaskStatus, retry_status

PENDING = (JobStatus.HELD.value, JobStatus.QUEUED.value)
REDO = (JobStatus.FAILED.value, JobStatus.KILLED.value)
LIVE = tuple(s.value for s in LIVE_JOB)


def _call(session: Session, fn: object) -> object:
    """Run an owner's function; its refusals ('orchestra: ...') become one-line errors."""
    try:
        return session.execute(select(fn)).scalar()  # type: ignore[call-overload]
    except DBAPIError as exc:
        message = str(exc.orig).strip().splitlines()[0].removeprefix("ERROR:").strip()
        if not message.startswith("orchestra: "):
            raise
        refusal = PermissionDenied if getattr(exc.orig, "pgcode", None) == "42501" else OrchestraError
        raise refusal(message.removeprefix("orchestra: ")) from None


def ensure_user(session: Session, name: str, share: float = 1.0) -> int:
    """The id of user `name`, created on first use (PostgreSQL: only for oneself, or by an admin)."""
    found = session.scalar(select(User.id).where(User.name == name))
    if found is not None:
        return found
    if not is_sqlite(session.connection()):
        return int(_call(session, func.orchestra_ensure_user(name)))  # type: ignore[arg-type]
    now = time.time()
    user = User(name=name, share=share, usage=0.0, usage_at=now, created_at=now)
    session.add(user)
    session.flush()
    return user.id


def _has_live_jobs(session: Session, task_id: int) -> bool:
    return bool(session.scalar(select(live_jobs_exist(task_id))))


def _stop_pending(session: Session, task_id: int, now: float) -> None:
    session.execute(update(Job).where(Job.task_id == task_id, Job.status.in_(PENDING))
                    .values(status=JobStatus.KILLED.value, reason="killed by user", ended_at=now))


def kill(session: Session, task_id: int, by: str) -> str | None:
    """Pending jobs end KILLED now; live ones get a 'kill' request. Returns the task's request."""
    if not is_sqlite(session.connection()):
        return _call(session, func.orchestra_task_kill(task_id, by))  # type: ignore[return-value]
    now = time.time()
    _stop_pending(session, task_id, now)
    request = session.scalar(select(Task.request).where(Task.id == task_id))
    if _has_live_jobs(session, task_id):
        request = "kill"
    session.execute(update(Task).where(Task.id == task_id).values(
        n_queued=0, request=request, status=TaskStatus.KILLED.value, reason=f"killed by {by}",
        updated_at=now, finished_at=now))
    return request


def retry(session: Session, task_id: int, by: str) -> int:
    """Re-queue failed and killed jobs (scouts only, the rest held, while unreleased); their count.

    A task without job rows (killed or broken before its expansion) goes back to REGISTERED: the
    scheduler expands it again (0 jobs re-queued). See `states.retry_status`.
    """
    if not is_sqlite(session.connection()):
        return int(_call(session, func.orchestra_task_retry(task_id, by)))  # type: ignore[arg-type]
    now = time.time()
    task = session.execute(select(Task.released_at, Task.bypass, Task.n_scouts).where(Task.id == task_id)).one()
    has_jobs = bool(session.scalar(select(exists().where(Job.task_id == task_id))))
    status = retry_status(has_jobs, task.released_at is not None, not task.bypass and task.n_scouts > 0)
    if status == TaskStatus.REGISTERED:
        session.execute(update(Task).where(Task.id == task_id).values(
            n_queued=0, status=status.value, reason=None, released_at=None, finished_at=None, updated_at=now))
        return 0
    fresh = {"failures": 0, "reason": None, "exit_code": None, "queued_at": now}
    mine = (Job.task_id == task_id, settled(*REDO))  # failed and killed: ranges of ix_jobs_settled
    if status == TaskStatus.SCOUTING:
        queued = session.execute(update(Job).where(*mine, Job.is_scout.is_(True))
                                 .values(status=JobStatus.QUEUED.value, **fresh).returning(Job.index, Job.attempts)).all()
        session.execute(update(Job).where(*mine, Job.is_scout.is_(False)).values(status=JobStatus.HELD.value, **fresh))
    else:
        queued = session.execute(update(Job).where(*mine).values(status=JobStatus.QUEUED.value, **fresh)
                                 .returning(Job.index, Job.attempts)).all()
    # A job killed before it ran is fresh again: the task's queue cursor goes down to it.
    lowest = lowest_fresh((task_id, index, attempts) for index, attempts in queued).get(task_id)
    session.execute(update(Task).where(Task.id == task_id).values(
        n_queued=Task.n_queued + len(queued), status=status.value, reason=None, finished_at=None, updated_at=now,
        **({} if lowest is None else {"queue_from": lowered_queue_from(lowest)})))
    return len(queued)


def delete_task(session: Session, task_id: int, purge: bool, by: str) -> bool:
    """Remove the task and its rows (True), or, with live jobs, leave that to the scheduler (False)."""
    if not is_sqlite(session.connection()):
        return bool(_call(session, func.orchestra_task_delete(task_id, purge, by)))
    now = time.time()
    if _has_live_jobs(session, task_id):
        _stop_pending(session, task_id, now)
        session.execute(update(Task).where(Task.id == task_id).values(
            n_queued=0, request="purge" if purge else "delete", status=TaskStatus.KILLED.value,
            reason=f"being deleted by {by}", updated_at=now))
        return False
    remove_task_rows(session, task_id)
    return True


def remove_task_rows(session: Session, task_id: int) -> None:
    """Delete a task with its jobs and attempts, children first (the scheduler's own path too)."""
    job_ids = select(Job.id).where(Job.task_id == task_id).scalar_subquery()
    session.execute(delete(Attempt).where(Attempt.job_id.in_(job_ids)))
    session.execute(delete(Job).where(Job.task_id == task_id))
    session.execute(delete(Task).where(Task.id == task_id))
