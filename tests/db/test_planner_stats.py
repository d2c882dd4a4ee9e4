"""The jobs table's planner statistics follow the scheduler's bulk changes at once
(orchestra/db/planner_stats.py), on both databases: an expansion and a scouts' release that
outdate them are followed by an ANALYZE on PostgreSQL (counted by the server itself), small
changes are not, SQLite is left without statistics, and a failed refresh is logged, not raised."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestra.backends.null import NullBackend
from orchestra.db import planner_stats
from orchestra.db.planner_stats import TableStatistics, due_at, outdated_by
from orchestra.scheduler.cycle import Scheduler
from tests.db.conftest import scheduler_on
from tests.db.test_perf_short_pass import submit
from tests.helpers import Cli

MIN_ROWS = 20  # ANALYZE_MIN_ROWS in these tests: 30 jobs outdate an empty table's statistics


@pytest.fixture
def sched(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Scheduler, NullBackend]]:
    monkeypatch.setattr(planner_stats, "ANALYZE_MIN_ROWS", MIN_ROWS)
    backend = NullBackend()
    with scheduler_on(backend) as scheduler:
        yield scheduler, backend


def analyzed(scheduler: Scheduler) -> tuple[int, float] | None:
    """(manual ANALYZEs of jobs, the rows its statistics know), asked on a new connection; None on
    SQLite when it has no statistics table (nothing was ever analyzed)."""
    with scheduler.ctx.engine.connect() as conn:
        if scheduler.ctx.engine.dialect.name == "sqlite":
            has = conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")).scalar()
            return None if not has else (-1, -1.0)
        count = conn.execute(text("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'jobs'")).scalar()
        rows = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'jobs'")).scalar()
        return int(count), float(rows)


def test_the_rule_is_autovacuums_applied_at_once() -> None:
    assert due_at(-1) == due_at(None) == due_at(0) == planner_stats.ANALYZE_MIN_ROWS  # never analyzed
    assert due_at(1_000_000) == 100_000  # 10 % of what the statistics know
    assert outdated_by(-1, planner_stats.ANALYZE_MIN_ROWS) and not outdated_by(-1, planner_stats.ANALYZE_MIN_ROWS - 1)
    assert outdated_by(50_000, 5_000) and not outdated_by(50_000, 4_999)


def test_an_expansion_and_a_release_that_outdate_the_statistics_refresh_them(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, backend = sched
    sqlite = scheduler.ctx.engine.dialect.name == "sqlite"
    before = analyzed(scheduler)
    (storage / "configs").mkdir()
    for i in range(30):
        (storage / "configs" / f"c{i:02d}").write_text(str(i))
    (storage / "data").write_text("d")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {storage / 'configs'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'} --cluster LPS")
    cli.ok("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.t "
           "--containerImage x/img --exec 'run %DATA %IN %OUT'")  # 3 scouts (tests/helpers.py), 27 held
    report = scheduler.cycle()
    assert report.counts["jobs expanded"] == 30 and report.counts["started"] == 3
    if sqlite:
        assert before is None and analyzed(scheduler) is None  # SQLite plans these reads by index
    else:
        assert before is not None and before[0] == 0 and before[1] < 30  # never analyzed
        assert analyzed(scheduler) == (1, 30.0)  # right after the expansion, not autovacuum's next round
    scheduler.cycle()
    assert analyzed(scheduler) == (None if sqlite else (1, 30.0))  # nothing changed since
    backend.finish(list(backend.running))  # the scouts succeed: 27 held jobs are released
    report = scheduler.cycle(full=False)
    assert report.counts["tasks released"] == 1
    assert analyzed(scheduler) == (None if sqlite else (2, 30.0))


def test_changes_below_the_rule_accumulate_until_they_reach_it(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, _ = sched
    submit(cli, storage, 8)  # 8 jobs: under MIN_ROWS
    scheduler.cycle()
    sqlite = scheduler.ctx.engine.dialect.name == "sqlite"
    assert analyzed(scheduler) == (None if sqlite else (0, analyzed(scheduler)[1]))  # type: ignore[index]
    assert scheduler.job_statistics.changed == 8
    scheduler.job_statistics.add(MIN_ROWS - 8)  # as another expansion would
    scheduler.cycle()
    if sqlite:
        assert analyzed(scheduler) is None
    else:
        assert analyzed(scheduler) == (1, 8.0) and scheduler.job_statistics.changed == 0


def test_a_refresh_that_fails_is_logged_and_tried_again_later(
        env: dict[str, str], db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    if db_url.startswith("sqlite"):
        keeper = TableStatistics(create_engine(db_url), "jobs")
        keeper.add(10 ** 6)
        assert keeper.keep() is False and keeper.changed == 10 ** 6  # nothing to do on SQLite
        return
    gone = make_url(db_url).set(database="orchestra_no_such_database")  # a real connection that fails
    keeper = TableStatistics(create_engine(gone), "jobs")
    keeper.add(planner_stats.ANALYZE_MIN_ROWS)
    with caplog.at_level(logging.WARNING, logger="orchestra.scheduler"):
        assert keeper.keep() is False
    assert keeper.changed == planner_stats.ANALYZE_MIN_ROWS  # kept for the next pass
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("statistics of jobs not refreshed (autovacuum will): database fault: ")
    assert "orchestra_no_such_database" in line
