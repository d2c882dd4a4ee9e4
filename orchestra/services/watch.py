"""What `maestro task watch` shows of a task at one moment, and when the watch is over.

A snapshot reads a bounded amount whatever the task's size: counts per state (one grouped query),
the first running jobs and the latest failed attempts (each with a LIMIT). The loop that polls it
and draws it lives in orchestra/cli/live.py; here is only what is true of the database.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from orchestra.db.models import Attempt, Job
from orchestra.reasons import ended
from orchestra.services.context import Context
from orchestra.services.tasks import find, job_counts
from orchestra.states import FINAL_JOB, FINAL_TASK, LIVE_ATTEMPT, LIVE_JOB, JobStatus, TaskStatus

SHOWN_RUNNING = 10  # running jobs listed in the live view (the counts have them all)
SHOWN_FAILURES = 5  # latest failed attempts listed


@dataclass(frozen=True)
class RunningJob:
    job_id: int
    index: int
    attempt: int
    host: str | None
    started_at: float | None
    stopping: str | None


@dataclass(frozen=True)
class RecentFailure:
    job_id: int
    index: int
    attempt: int
    status: str  # failed, lost or killed
    exit_code: int | None
    reason: str | None
    ended_at: float | None


@dataclass(frozen=True)
class TaskSnapshot:
    task_id: int
    name: str
    owner: str
    status: str
    reason: str | None
    request: str | None
    n_jobs: int
    counts: dict[str, int] = field(default_factory=dict)
    running: list[RunningJob] = field(default_factory=list)
    failures: list[RecentFailure] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        """The task has ended for good: a final state, and no kill or delete still being applied."""
        return self.status in FINAL_TASK and self.request is None

    @property
    def n_ended(self) -> int:
        """Jobs in a final state (succeeded, failed or killed): what the progress measures."""
        return sum(self.counts.get(s, 0) for s in FINAL_JOB)

    def key(self) -> tuple[object, ...]:
        """What a change is, for the one-line-per-change output: the state and every count."""
        return (self.status, self.request, tuple(self.counts.get(s, 0) for s in JobStatus))


def snapshot(ctx: Context, ref: str) -> TaskSnapshot:
    """The task named or numbered `ref` now (NotFound with its one line when it does not exist)."""
    live = [s.value for s in LIVE_ATTEMPT]
    with ctx.transaction() as session:
        task, owner = find(session, ref)
        counts = job_counts(session, [task.id])[task.id]
        running = [
            RunningJob(*row) for row in session.execute(
                select(Job.id, Job.index, Attempt.number, Attempt.host, Attempt.started_at, Attempt.stopping)
                .join(Attempt, (Attempt.job_id == Job.id) & (Attempt.number == Job.attempts))
                .where(Job.task_id == task.id, Job.status.in_([s.value for s in LIVE_JOB]), Attempt.status.in_(live))
                .order_by(Job.index).limit(SHOWN_RUNNING))
        ]
        failures = [
            RecentFailure(job_id, index, number, status, code, ended(status, code, reason, task.max_time) or None, at)
            for job_id, index, number, status, code, reason, at in session.execute(
                select(Job.id, Job.index, Attempt.number, Attempt.status, Attempt.exit_code, Attempt.reason,
                       Attempt.ended_at)
                .join(Attempt, Attempt.job_id == Job.id)
                .where(Job.task_id == task.id, Attempt.status.in_(["failed", "lost", "killed"]))
                .order_by(Attempt.id.desc()).limit(SHOWN_FAILURES))
        ]
        return TaskSnapshot(task.id, task.name, owner, task.status, task.reason, task.request, task.n_jobs,
                            counts, running, failures)


def succeeded(snap: TaskSnapshot) -> bool:
    """What `--exit-status` reports: 0 only for a completed task."""
    return snap.status == TaskStatus.COMPLETED
