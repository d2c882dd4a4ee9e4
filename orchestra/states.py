"""Task, job and attempt states, and which moves between them are allowed. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestra.errors import OrchestraError


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
    HELD = "held"  # waiting for the task's scouts (its task broken: for a retry)
    QUEUED = "queued"  # eligible for a slot
    STARTING = "starting"  # an attempt is recorded; the backend object is being created
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed after all retries (or a scout of a broken task)
    KILLED = "killed"  # by a user, or queued when its task broke (a retry re-queues it)


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


class TaskAction(StrEnum):
    """What a user may ask of a task (`maestro task kill|retry|delete`)."""

    KILL = "kill"
    RETRY = "retry"
    DELETE = "delete"


@dataclass(frozen=True)
class Move:
    """What a user's action does at one task state.

    `to`: the states the task may be in right after it (several for a retry: see `retry_status`);
    empty with `gone` False: the action is refused with `refusal` (one line, exit 1, nothing written).
    `gone`: a delete removes the task at once, or, while some of its jobs are live, leaves it KILLED
    with a delete request until the scheduler has stopped them (then it is gone too).
    `needs_redo`: refused ("nothing to retry") unless some job failed or was killed.
    """

    to: frozenset[TaskStatus] = frozenset()
    gone: bool = False
    needs_redo: bool = False
    refusal: str = ""  # {name} and {status} are filled in

    @property
    def allowed(self) -> bool:
        return bool(self.to) or self.gone


_S = TaskStatus
_NOTHING_TO_KILL = "task {name!r} is already {status}; nothing to kill"
_DELETE_LIVE = Move(frozenset({_S.KILLED}), gone=True)  # its live jobs stop first
_RESUME = frozenset({_S.REGISTERED, _S.SCOUTING, _S.RUNNING})

# The truth about users' actions: every (state, action) pair. The services refuse what is refused
# here with its line, the writes (Python on SQLite, the owner's functions on PostgreSQL) make the
# moves, and tests/db/test_transitions.py checks every pair on both databases.
USER_ACTIONS: dict[tuple[TaskStatus, TaskAction], Move] = {
    (_S.REGISTERED, TaskAction.KILL): Move(frozenset({_S.KILLED})),
    (_S.REGISTERED, TaskAction.RETRY): Move(
        refusal="task {name!r} has not been expanded into jobs yet; nothing to retry"),
    (_S.REGISTERED, TaskAction.DELETE): Move(gone=True),
    (_S.SCOUTING, TaskAction.KILL): Move(frozenset({_S.KILLED})),
    (_S.SCOUTING, TaskAction.RETRY): Move(frozenset({_S.SCOUTING}), needs_redo=True),
    (_S.SCOUTING, TaskAction.DELETE): _DELETE_LIVE,
    (_S.RUNNING, TaskAction.KILL): Move(frozenset({_S.KILLED})),
    (_S.RUNNING, TaskAction.RETRY): Move(frozenset({_S.RUNNING}), needs_redo=True),
    (_S.RUNNING, TaskAction.DELETE): _DELETE_LIVE,
    (_S.COMPLETED, TaskAction.KILL): Move(refusal=_NOTHING_TO_KILL),
    (_S.COMPLETED, TaskAction.RETRY): Move(refusal="every job of task {name!r} succeeded; nothing to retry"),
    (_S.COMPLETED, TaskAction.DELETE): Move(gone=True),
    (_S.PARTIAL, TaskAction.KILL): Move(refusal=_NOTHING_TO_KILL),
    (_S.PARTIAL, TaskAction.RETRY): Move(frozenset({_S.RUNNING}), needs_redo=True),
    (_S.PARTIAL, TaskAction.DELETE): Move(gone=True),
    # Broken: its queued scouts were killed, its other jobs stay held; scouts still running end on
    # their own. A retry scouts again (or, never expanded, is expanded again).
    (_S.BROKEN, TaskAction.KILL): Move(refusal=_NOTHING_TO_KILL),
    (_S.BROKEN, TaskAction.RETRY): Move(_RESUME),
    (_S.BROKEN, TaskAction.DELETE): _DELETE_LIVE,
    (_S.KILLED, TaskAction.KILL): Move(refusal=_NOTHING_TO_KILL),
    (_S.KILLED, TaskAction.RETRY): Move(_RESUME),
    (_S.KILLED, TaskAction.DELETE): _DELETE_LIVE,  # a kill whose live jobs are still being stopped
}

# The scheduler's own moves: expansion (broken: datasets deleted, output root untrusted), the
# scouts' verdict, a dispatch refused for an untrusted output root, the end of the last job.
SCHEDULER_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    _S.REGISTERED: frozenset({_S.SCOUTING, _S.RUNNING, _S.BROKEN}),
    _S.SCOUTING: frozenset({_S.RUNNING, _S.BROKEN}),
    _S.RUNNING: frozenset({_S.COMPLETED, _S.PARTIAL, _S.BROKEN}),
    _S.COMPLETED: frozenset(),
    _S.PARTIAL: frozenset(),
    _S.BROKEN: frozenset(),
    _S.KILLED: frozenset(),
}

# Every move a task can make, by the scheduler or by a user's action (staying put is not listed).
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    old: SCHEDULER_MOVES[old].union(*(m.to for (s, _), m in USER_ACTIONS.items() if s == old)) - {old}
    for old in TaskStatus
}


def can_move(old: TaskStatus, new: TaskStatus) -> bool:
    """Whether a task may go from `old` to `new` (staying put is always allowed)."""
    return old == new or new in TASK_TRANSITIONS[old]


def user_move(status: str, action: TaskAction, name: str) -> Move:
    """The move `action` makes at `status`; OrchestraError with its one line when it is refused."""
    move = USER_ACTIONS[(TaskStatus(status), action)]
    if not move.allowed:
        raise OrchestraError(move.refusal.format(name=name, status=status))
    return move


def retry_status(has_jobs: bool, released: bool, scouted: bool) -> TaskStatus:
    """Where a retry puts a task: REGISTERED when it never got its jobs (killed before expansion,
    or broken by it: the scheduler expands it again), SCOUTING when it has scouts and was never
    released (they run again, the rest held), else RUNNING."""
    if not has_jobs:
        return TaskStatus.REGISTERED
    return TaskStatus.SCOUTING if scouted and not released else TaskStatus.RUNNING


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
