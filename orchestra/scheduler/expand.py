"""Expand a registered task into job rows: one bulk insert, one transaction.

A crash mid-expansion rolls the whole transaction back, so the task is still REGISTERED and the
next cycle expands it again from scratch: no half-expanded task, no duplicate jobs.
"""
from __future__ import annotations

import time

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestra import expansion
from orchestra.config import Settings, load_settings
from orchestra.db.bulk import bulk_insert
from orchestra.db.models import Dataset, Job, Task, User
from orchestra.errors import OrchestraError
from orchestra.paths import trusted_output_root
from orchestra.scheduler.crashpoints import crashpoint
from orchestra.services.datasets import config_paths
from orchestra.services.task_outputs import record_outputs
from orchestra.states import JobStatus, TaskStatus

BATCH = 50_000  # rows per bulk statement; a crash between two rolls both back


def scout_indices(n_jobs: int, n_scouts: int) -> set[int]:
    """Scouts spread evenly over the task, so they sample its config files, not just the first."""
    if n_scouts <= 0:
        return set()
    return {int(i) for i in np.unique(np.linspace(0, n_jobs - 1, n_scouts).round().astype(int))}


def expand_task(session: Session, task_id: int, now: float | None = None, *, settings: Settings | None = None) -> int:
    """Insert the task's jobs (scouts queued, the rest held unless bypassed); returns the count.

    Nothing the row holds about paths or counts is trusted (a user may have written it): the
    output root is recomputed from the cluster's storage in `settings` (the scheduler's; by
    default the environment's), the owner's name and the task's name, checked, and written back
    with `n_jobs` (the config dataset's files) and `n_scouts` (at most one per job). A root that
    cannot be trusted breaks the task with the reason.
    """
    now = time.time() if now is None else now
    task = session.execute(
        select(Task.name, Task.cluster, Task.command, Task.data_dataset_id, Task.config_dataset_id, Task.n_scouts,
               Task.bypass, Task.status, User.name.label("owner"))
        .outerjoin(User, User.id == Task.owner_id).where(Task.id == task_id)
    ).one()
    if task.status != TaskStatus.REGISTERED:
        return 0

    def broken(reason: str) -> int:
        session.execute(
            update(Task).where(Task.id == task_id).values(
                status=TaskStatus.BROKEN.value, reason=reason, updated_at=now, finished_at=now)
        )
        return 0

    try:
        storage = (settings or load_settings()).cluster(task.cluster).storage
        root = str(trusted_output_root(storage, task.owner, task.name))
    except OrchestraError as exc:
        return broken(f"its output directory cannot be trusted: {exc}")
    if task.config_dataset_id is not None:  # a --from-task dataset gets its files now (task_outputs.py)
        why = record_outputs(session, task.config_dataset_id, settings or load_settings())
        if why is not None:
            return broken(why)
    data_path = session.scalar(select(Dataset.path).where(Dataset.id == task.data_dataset_id))
    configs = config_paths(session, task.config_dataset_id) if task.config_dataset_id else []
    if data_path is None or not configs:
        return broken("its datasets were deleted before it started")
    n_jobs = len(configs)
    n_scouts = 0 if task.bypass else max(0, min(task.n_scouts or 0, n_jobs))
    scouts = scout_indices(n_jobs, n_scouts)
    held = JobStatus.HELD.value if scouts else JobStatus.QUEUED.value
    queued = JobStatus.QUEUED.value
    rows = [
        (task_id, job.index, job.config_path, job.output_dir, job.command, job.index in scouts,
         queued if job.index in scouts else held, 0, 0, now)
        for job in expansion.expand(task.command, data_path, configs, root)
    ]
    columns = ("task_id", "index", "config_path", "output_dir", "command", "is_scout", "status", "attempts",
               "failures", "queued_at")
    for start in range(0, len(rows), BATCH):
        bulk_insert(session, Job.__table__, columns, rows[start : start + BATCH])
        crashpoint("mid-expansion")
    n_queued = len(scouts) if scouts else len(rows)
    session.execute(
        update(Task).where(Task.id == task_id).values(
            status=(TaskStatus.SCOUTING if scouts else TaskStatus.RUNNING).value, output_root=root,
            n_jobs=len(rows), n_scouts=n_scouts, n_queued=n_queued, queue_from=0, updated_at=now,
            released_at=None if scouts else now,
        )
    )
    return len(rows)
