"""Helpers for end-to-end scheduler tests: real processes, real databases."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from orchestra.db.models import Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context

ORCHESTRA = str(Path(sys.executable).parent / "orchestra")


def run_scheduler(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`orchestra scheduler run ...` as a separate process, the way the admin runs it."""
    return subprocess.run([ORCHESTRA, "scheduler", "run", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def cycles_until(ctx: Context, done, timeout: float = 60, scheduler: Scheduler | None = None) -> Scheduler:  # type: ignore[no-untyped-def]
    """Run cycles in this process until `done()` is true."""
    scheduler = scheduler or Scheduler(ctx)
    assert scheduler.lease.try_acquire()
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the scheduler"
        scheduler.cycle()
        time.sleep(0.05)
    return scheduler


def task_status(ctx: Context, name: str) -> str:
    with ctx.transaction() as session:
        return session.scalar(select(Task.status).where(Task.name == name)) or "gone"


def job_states(ctx: Context, name: str) -> dict[int, str]:
    with ctx.transaction() as session:
        rows = session.execute(select(Job.index, Job.status).join(Task).where(Task.name == name)).all()
        return dict(rows)


def make_inputs(root: Path, n: int) -> tuple[Path, Path]:
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (configs / f"c{i:04d}.cfg").write_text(f"config {i}\n")
    data = root / "data.txt"
    data.write_text("the data\n")
    return configs, data
