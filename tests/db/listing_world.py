"""A small world for the listing tests: real scheduler cycles (null backend, so the test decides
when each job ends), with jobs in every final state and pending ones: running, queued, failed
(after a retry), killed, succeeded, and a task with a long name, on the `env` fixture's database."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestra.backends.null import NullBackend
from orchestra.db.models import Attempt, Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context
from tests.helpers import Cli

LONG = "user.alice.a_task_with_a_rather_long_name_for_narrow_terminals"


class World:
    """alice's tasks: LONG (5 jobs, all succeeded), `busy` (12 jobs: 2 failed, 2 succeeded, 4
    running, 4 queued), `stopped` (5 jobs, killed while queued)."""

    def __init__(self, cli: Cli, env: dict[str, str], storage: Path) -> None:
        self.cli = cli
        for name, n in (("configs", 12), ("few", 5)):
            (storage / name).mkdir()
            for i in range(n):
                (storage / name / f"c{i:02d}").write_text(str(i))
        (storage / "data").write_text("d")
        for name in ("configs", "few", "data"):
            cli.ok(f"orchestra_registry -d user.alice.{name} -p {storage / name} --cluster LPS")
        self.backend = NullBackend()
        self.scheduler = Scheduler(Context.from_env(), backends={"LPS": self.backend})
        assert self.scheduler.lease.try_acquire()
        self.create(LONG, "few")
        for _ in range(2):  # 4 slots: four jobs, then the fifth
            self.cycle()
            self.finish(self.running(), 0)
        self.cycle()
        self.create("user.alice.busy", "configs", "--max-retries 0")
        self.create("user.alice.stopped", "few")
        self.cycle()  # busy: 4 running, 8 queued; stopped: 5 queued
        cli.ok("maestro task kill -t user.alice.stopped")  # its queued jobs: killed at once
        first = self.running()
        self.finish(first[:2], 3)  # failed for good (no retries)
        self.finish(first[2:], 0)
        self.cycle()  # busy: 2 failed, 2 succeeded, 4 running, 4 queued
        with self.scheduler.ctx.transaction() as session:
            busy = session.scalar(select(Task.id).where(Task.name == "user.alice.busy"))
            queued = session.scalar(select(Job.id).where(Job.task_id == busy, Job.status == "queued").order_by(Job.id))
            failed = session.scalar(select(Job.id).where(Job.task_id == busy, Job.status == "failed").order_by(Job.id))
        self.ids = {"failing": "user.alice.busy", "queued_job": queued, "failed_job": failed}

    def create(self, name: str, configs: str, extra: str = "") -> None:
        self.cli.ok(f"maestro task create -c user.alice.{configs} -d user.alice.data -t {name} "
                    f"--containerImage x/img --exec 'run %DATA %IN %OUT' --bypass {extra}")

    def cycle(self) -> None:
        self.scheduler.cycle()

    def running(self) -> list[str]:
        return sorted(self.backend.running)

    def finish(self, names: list[str], code: int) -> None:
        self.backend.finish(names, exit_code=code)

    def attempts(self, status: str) -> list[tuple[int, str]]:
        with self.scheduler.ctx.transaction() as session:
            return [(j, n) for j, n in session.execute(select(Attempt.job_id, Attempt.backend_name)
                                                       .where(Attempt.status == status))]

    def job_of(self, backend_name: str) -> int:
        with self.scheduler.ctx.transaction() as session:
            return session.scalar(select(Attempt.job_id).where(Attempt.backend_name == backend_name)) or 0

    def close(self) -> None:
        self.scheduler.ctx.engine.dispose()


@pytest.fixture
def listing_world(cli: Cli, env: dict[str, str], storage: Path) -> Iterator[World]:
    world = World(cli, env, storage)
    yield world
    world.close()
