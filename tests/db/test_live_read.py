"""Issue 18: every pass begins by reading the live attempts through the driver directly: the same
rows as the SQLAlchemy query, prepared once per connection on a PostgreSQL server, a dropped
connection replaced, and a fault raised as SQLAlchemy's DBAPIError (what the loop tells an outage
by). On SQLite and PostgreSQL."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from orchestra.backends.null import NullBackend
from orchestra.scheduler.cycle import LiveAttempt, Scheduler
from orchestra.db import job_lookup
from orchestra.scheduler import heads
from orchestra.services import queue
from tests.db.conftest import scheduler_on
from tests.db.test_perf_short_pass import submit
from tests.helpers import Cli


@pytest.fixture
def sched(env: dict[str, str]) -> Iterator[tuple[Scheduler, NullBackend]]:
    backend = NullBackend()
    with scheduler_on(backend) as scheduler:
        yield scheduler, backend


def normal(rows: list[LiveAttempt]) -> list[tuple]:
    """SQLite returns booleans as 0/1 to the driver, SQLAlchemy as bool."""
    return sorted(tuple(bool(v) if f == "is_scout" else v for f, v in zip(LiveAttempt._fields, r)) for r in rows)


def test_the_drivers_read_is_the_querys_read(cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, backend = sched
    submit(cli, storage, 12)
    scheduler.cycle()  # 4 running
    backend.finish(sorted(backend.running)[:1])
    with scheduler.tx() as session:  # a stopping one and a note, so every column has a value somewhere
        session.execute(scheduler_stop_one())
    live = scheduler._read_live()
    with Session(scheduler.ctx.engine) as session, session.begin():
        expected = scheduler.live_attempts(session)
    assert len(live) == 4 and normal(live) == normal(expected)
    assert {a.stopping for a in live} == {None, "killed by user"}


def scheduler_stop_one():  # type: ignore[no-untyped-def]
    from sqlalchemy import select, update

    from orchestra.db.models import Attempt

    first = select(Attempt.id).order_by(Attempt.id).limit(1).scalar_subquery()
    return update(Attempt).where(Attempt.id == first).values(stopping="killed by user", reason="waiting for a node")


def test_the_passes_reads_are_prepared_once_on_the_server(cli: Cli, storage: Path,
                                                         sched: tuple[Scheduler, NullBackend], db_url: str) -> None:
    """Planning the live attempts' join cost more than running it, at every pass: each of the
    pass's reads (and the policy's) is a prepared statement of the connection, prepared by its
    first pass only (the server plans it again when a table it reads is analyzed:
    tests/db/test_prepared_reads.py)."""
    if db_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL server's prepared statements")
    scheduler, backend = sched
    submit(cli, storage, 4)
    scheduler.cycle()
    for _ in range(3):
        backend.finish(sorted(backend.running)[:1])
        scheduler.cycle(full=False)
    raw = scheduler.ctx.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
        names = [row[0] for row in cursor.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    policy = queue._ACTIVE_READS[False]  # the fair-share policy's read of the active tasks
    dispatch = {job_lookup.CANDIDATES.name, heads.START.name}  # the dispatch's read and write
    assert names == sorted({scheduler._sql.live.name, scheduler._sql.to_advance.name, policy.name} | dispatch)


def test_a_dropped_connection_is_replaced_and_a_driver_error_raised_as_sqlalchemys(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend], db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, _ = sched
    submit(cli, storage, 4)
    scheduler.cycle()
    if not db_url.startswith("sqlite"):
        raw = scheduler.ctx.engine.raw_connection()
        pid = raw.dbapi_connection.get_backend_pid()
        raw.close()
        other = create_engine(db_url, poolclass=NullPool)  # not the scheduler's pool
        with other.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.dispose()
        assert len(scheduler._read_live()) == 4  # replaced (a ping if it rested, else the read's retry)
    monkeypatch.setattr(scheduler._sql.live, "sql", "SELECT * FROM no_such_table")  # what PREPARE sends
    monkeypatch.setattr(scheduler._sql.live, "plain", "SELECT * FROM no_such_table")  # unprepared (SQLite)
    monkeypatch.setattr(scheduler._sql.live, "name", "orchestra_no_such_table")  # not prepared yet
    with pytest.raises(DBAPIError, match="no_such_table"):
        scheduler._read_live()
