"""Helpers for end-to-end scheduler tests: real processes, real databases."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from orchestra.db.models import Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context
from tests.helpers import Cli

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


def installation(ctx: Context) -> str:
    """The database's installation id (part of every backend object's name)."""
    from orchestra.db.models import Installation

    with ctx.transaction() as session:
        found = session.scalar(select(Installation.id))
    ctx.engine.dispose()
    return found or ""


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


STARTED: list["Service"] = []  # every Service of the current test; tests/conftest.py kills leftovers


class Service:
    """`orchestra scheduler run` as the admin runs it, its log collected by a thread."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([ORCHESTRA, "scheduler", "run"], env=dict(os.environ), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)  # type: ignore[arg-type]
        self.reader.start()
        STARTED.append(self)

    def kill(self) -> None:
        """SIGKILL if still running (a failed test must not leave a scheduler behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait_exit(10)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until its first (empty) cycle is done: from then on it idles until woken."""
        deadline = time.monotonic() + timeout
        while not any("cycle:" in line for line in self.lines):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        self.proc.stdout.close()  # type: ignore[union-attr]
        return code

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.wait_exit(30) == 0, self.log
        return self.log


def wait_task_done(cli: Cli, service: Service, task: str, timeout: float = 90) -> str:
    """Poll `maestro task show` until the task is final; fail if the scheduler dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(cli.ok(f"maestro task show -t {task} --json").out)["summary"]["status"]
        if status not in ("registered", "scouting", "running"):
            return status
        assert service.proc.poll() is None, f"the scheduler died: {service.log}"
        time.sleep(0.2)
    raise AssertionError(f"task {task} did not finish in time")


def check_turnover_ledger(ledger: Path, expected: set[str], slots: int) -> None:
    """Each job wrote `start <input> <ns>` and `end <input> <ns>`: every expected input ran exactly
    once, and at no instant more ran than `slots` (a slot is held from dispatch to recorded end,
    which contains the job's own start-to-end interval, so an overbooked slot shows as overlap)."""
    events = []
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for line in ledger.read_text().splitlines():
        kind, config, stamp = line.split()
        (starts if kind == "start" else ends)[config] += 1
        events.append((int(stamp), 0 if kind == "end" else 1))  # at a tie, count the end first
    assert set(starts) == expected and set(ends) == expected
    assert set(starts.values()) == {1} and set(ends.values()) == {1}, "a job ran more than once"
    running = peak = 0
    for _, delta in sorted(events):
        running += 1 if delta else -1
        peak = max(peak, running)
    assert 1 <= peak <= slots, f"{peak} jobs ran at once on {slots} slots"
