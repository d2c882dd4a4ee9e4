"""Issue 18: on PostgreSQL the record of launches that all started commits without waiting for the
WAL flush (SET LOCAL synchronous_commit = off, in that transaction only); the records every
backend call depends on (ends, new attempts) and any other launch outcome keep a synchronous commit."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import event

from orchestra.backends.base import Launched, LaunchSpec
from orchestra.backends.null import NullBackend
from orchestra.scheduler.cycle import Scheduler
from tests.db.test_perf_short_pass import committed, submit
from tests.db.conftest import scheduler_on
from tests.helpers import Cli

ASYNC = "SET LOCAL synchronous_commit = off"


class Refusing(NullBackend):
    """Refuses the next launch (the job's own fault: its attempt fails)."""

    refuse = False

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        if self.refuse:
            self.refuse = False
            return [Launched(s.backend_name, error="exec format error") for s in specs]
        return super().launch(specs)


@pytest.fixture
def sched(env: dict[str, str]) -> Iterator[tuple[Scheduler, Refusing]]:
    backend = Refusing()
    with scheduler_on(backend) as scheduler:
        yield scheduler, backend


def test_only_the_record_of_started_launches_skips_the_flush(
        cli: Cli, storage: Path, sched: tuple[Scheduler, Refusing], db_url: str) -> None:
    scheduler, backend = sched
    submit(cli, storage, 12)
    statements: list[str] = []

    @event.listens_for(scheduler.ctx.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, *_):  # type: ignore[no-untyped-def]
        statements.append(statement)

    def async_commits() -> list[int]:
        """Positions of the async SET LOCAL, each followed by the launches' record in its transaction."""
        return [i for i, s in enumerate(statements) if s == ASYNC]

    report = scheduler.cycle()  # full: expands, fills the 4 cpu slots
    assert report.counts["started"] == 4
    sqlite = db_url.startswith("sqlite")
    assert len(async_commits()) == (0 if sqlite else 1)
    for i in async_commits():  # in the acknowledgement, before its updates
        assert "UPDATE attempts SET status" in " ".join(statements[i + 1:i + 4])

    statements.clear()
    backend.finish(sorted(backend.running)[:2])
    report = scheduler.cycle(full=False)
    assert (report.counts["succeeded"], report.counts["started"]) == (2, 2)
    assert len(async_commits()) == (0 if sqlite else 1)
    if not sqlite:  # the ends' record, in the transaction that also dispatches (on the driver's cursor)
        ends = next(i for i, s in enumerate(statements) if "UPDATE jobs SET status" in s and "failures" in s)
        assert all(i > ends for i in async_commits())  # the ends and new attempts: a synchronous commit

    statements.clear()
    backend.refuse = True
    backend.finish(sorted(backend.running)[:1])
    report = scheduler.cycle(full=False)
    assert report.counts["failed"] + report.counts["retried"] == 1  # the refused launch's attempt
    assert async_commits() == []  # a refused launch's record keeps the synchronous commit
    assert committed(scheduler)["attempt running"] == 3
