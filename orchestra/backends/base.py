"""The small contract every backend (local processes, Kubernetes pods) fulfils.

The scheduler owns all state; a backend only starts, observes, stops and removes objects whose
names the scheduler chose (from job and attempt) and recorded *before* asking. So every call is
idempotent: launching a name that already exists adopts it, killing a gone object is a no-op.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from orchestra.config import ClusterConfig, QueueConfig
from orchestra.errors import OrchestraError


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one attempt of one job."""

    backend_name: str
    task_id: int
    task_name: str
    job_id: int
    job_index: int
    attempt: int
    user: str
    queue: QueueConfig
    image: str
    command: str
    output_dir: str
    log_path: str
    max_time: float | None
    cluster: ClusterConfig


class BackendUnavailable(OrchestraError):
    """The backend's service (e.g. the Kubernetes API) failed through every retry: the cycle stops
    where it is (all it did is committed) and the service loop tries again after a backoff."""


@dataclass(frozen=True)
class Launched:
    """What the backend reports about a started (or adopted) object."""

    backend_name: str
    host: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    started_at: float | None = None
    error: str | None = None  # set when the create was refused for good (e.g. bad spec, forbidden)
    final: bool = False  # the refusal is the task's, not this attempt's (an owner with no account): no retry
    # The refusal is the cluster's, not the job's (storage full or gone, fork refused): the job goes
    # back to the queue uncharged and its queue is held until a probe launch succeeds (scheduler/holds.py).
    infra: bool = False


@dataclass(frozen=True)
class Tracked:
    """An attempt the database believes is out there."""

    backend_name: str
    log_path: str | None
    pid: int | None = None
    pid_start: int | None = None
    started_at: float | None = None


class Phase(StrEnum):
    PENDING = "pending"  # accepted, not running yet (e.g. pod scheduling, image pull)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSING = "missing"  # the backend does not know it (never started, or vanished): lost


@dataclass(frozen=True)
class Observation:
    backend_name: str
    phase: Phase
    exit_code: int | None = None
    reason: str | None = None  # e.g. "OOMKilled", "Evicted", "ImagePullBackOff", "Unschedulable"
    host: str | None = None
    ended_at: float | None = None


@dataclass
class Survey:
    """One reconcile pass: what became of each tracked attempt, and unknown objects out there."""

    observations: dict[str, Observation] = field(default_factory=dict)
    strangers: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        """Start each attempt, adopting one that already exists under its name."""
        ...

    def survey(self, tracked: Sequence[Tracked]) -> Survey:
        """Observe every tracked attempt with as few backend calls as possible (one list)."""
        ...

    def kill(self, tracked: Sequence[Tracked]) -> None:
        """Stop the attempts; their objects may linger until `release`."""
        ...

    def release(self, names: Sequence[str]) -> None:
        """Remove finished or unknown objects (their logs are already saved)."""
        ...

    def close(self) -> None:
        ...
