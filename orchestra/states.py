"""Task, job and attempt states, and which moves between them are allowed. Pure."""
from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """A task's life: registered by the CLI, expanded and scouted by the scheduler, then released."""

    REGISTERED = "registered"  # recorded by `task create`; the scheduler has not expanded it yet
    SCOUTING = "scouting"  # a few scout jobs test the task before the rest is released
    RUNNING = "running"  # released: every job may be dispatched
    COMPLETED = "completed"  # every job succeeded
    PARTIAL = "partial"  # finished, but some jobs failed after all their retries
    BROKEN = "broken"  # too many scouts failed; `task show` says why
    KILLED = "killed"  # stopped by its owner or an admin


class JobStatus(StrEnum):
    HELD = "held"  # waiting for the task's scouts
    QUEUED = "queued"  # eligible for a slot
    STARTING = "starting"  # an attempt is recorded; the backend object is being created
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed after all retries (or a scout of a broken task)
    KILLED = "killed"


class AttemptStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"  # the backend no longer knows it: the job gets a new attempt


ACTIVE_TASK = (TaskStatus.REGISTERED, TaskStatus.SCOUTING, TaskStatus.RUNNING)
FINAL_TASK = (TaskStatus.COMPLETED, TaskStatus.PARTIAL, TaskStatus.BROKEN, TaskStatus.KILLED)
LIVE_JOB = (JobStatus.STARTING, JobStatus.RUNNING)
FINAL_JOB = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.KILLED)
LIVE_ATTEMPT = (AttemptStatus.STARTING, AttemptStatus.RUNNING)

TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.REGISTERED: frozenset({TaskStatus.SCOUTING, TaskStatus.RUNNING, TaskStatus.KILLED}),
    TaskStatus.SCOUTING: frozenset({TaskStatus.RUNNING, TaskStatus.BROKEN, TaskStatus.KILLED}),
    TaskStatus.RUNNING: frozenset({TaskStatus.COMPLETED, TaskStatus.PARTIAL, TaskStatus.KILLED}),
    TaskStatus.COMPLETED: frozenset({TaskStatus.RUNNING}),  # retry with nothing to redo is a no-op
    TaskStatus.PARTIAL: frozenset({TaskStatus.RUNNING}),  # retry re-queues failed and killed jobs
    TaskStatus.BROKEN: frozenset({TaskStatus.SCOUTING, TaskStatus.RUNNING}),  # retry runs the scouts again
    TaskStatus.KILLED: frozenset({TaskStatus.SCOUTING, TaskStatus.RUNNING}),
}


def can_move(old: TaskStatus, new: TaskStatus) -> bool:
    """Whether a task may go from `old` to `new` (staying put is always allowed)."""
    return old == new or new in TASK_TRANSITIONS[old]


def scouts_needed(planned: int, threshold: float) -> int:
    """Successful scouts that release a task: ceil(threshold * planned), at least 1."""
    return max(1, -(-int(round(threshold * planned * 1000)) // 1000))  # ceil without float fuzz


def scout_verdict(succeeded: int, failed: int, planned: int, threshold: float) -> TaskStatus | None:
    """Release, break, or keep scouting, decided as early as the numbers allow.

    Released as soon as enough scouts succeeded to meet the threshold; broken as soon as the
    threshold can no longer be met even if every remaining scout succeeds.
    """
    needed = scouts_needed(planned, threshold)
    if succeeded >= needed:
        return TaskStatus.RUNNING
    if planned - failed < needed:
        return TaskStatus.BROKEN
    return None


def final_task_status(succeeded: int, failed: int, killed: int) -> TaskStatus:
    """The status of a task whose jobs are all final."""
    return TaskStatus.COMPLETED if failed == 0 and killed == 0 else TaskStatus.PARTIAL
