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
from orchestra.db.bulk import bulk_insert
from orchestra.db.models import Dataset, Job, Task
from orchestra.scheduler.crashpoints import crashpoint
from orchestra.services.datasets import config_paths
from orchestra.states import JobStatus, TaskStatus

BATCH = 50_000  # rows per bulk statement; a crash between two rolls both back


def scout_indices(n_jobs: int, n_scouts: int) -> set[int]:
    """Scouts spread evenly over the task, so they sample its config files, not just the first."""
    if n_scouts <= 0:
        return set()
    return {int(i) for i in np.unique(np.linspace(0, n_jobs - 1, n_scouts).round().astype(int))}


def expand_task(session: Session, task_id: int, now: float | None = None) -> int:
    """Insert the task's jobs (scouts queued, the rest held unless bypassed); returns the count."""
    now = time.time() if now is None else now
    task = session.execute(
        select(Task.command, Task.data_dataset_id, Task.config_dataset_id, Task.output_root, Task.n_scouts,
               Task.status).where(Task.id == task_id)
    ).one()
    if task.status != TaskStatus.REGISTERED:
        return 0
    data_path = session.scalar(select(Dataset.path).where(Dataset.id == task.data_dataset_id))
    configs = config_paths(session, task.config_dataset_id) if task.config_dataset_id else []
    if data_path is None or not configs:
        session.execute(
            update(Task).where(Task.id == task_id).values(
                status=TaskStatus.BROKEN.value, reason="its datasets were deleted before it started",
                updated_at=now, finished_at=now)
        )
        return 0
    scouts = scout_indices(len(configs), task.n_scouts)
    held = JobStatus.HELD.value if scouts else JobStatus.QUEUED.value
    queued = JobStatus.QUEUED.value
    rows = [
        (task_id, job.index, job.config_path, job.output_dir, job.command, job.index in scouts,
         queued if job.index in scouts else held, 0, 0, now)
        for job in expansion.expand(task.command, data_path, configs, task.output_root)
    ]
    columns = ("task_id", "index", "config_path", "output_dir", "command", "is_scout", "status", "attempts",
               "failures", "queued_at")
    for start in range(0, len(rows), BATCH):
        bulk_insert(session, Job.__table__, columns, rows[start : start + BATCH])
        crashpoint("mid-expansion")
    n_queued = len(scouts) if scouts else len(rows)
    session.execute(
        update(Task).where(Task.id == task_id).values(
            status=(TaskStatus.SCOUTING if scouts else TaskStatus.RUNNING).value,
            n_jobs=len(rows), n_queued=n_queued, updated_at=now, released_at=None if scouts else now,
        )
    )
    return len(rows)
