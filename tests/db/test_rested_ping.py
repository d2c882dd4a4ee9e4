"""Issue 18: a pooled PostgreSQL connection is pinged at checkout only after it rested
(engine.PING_AFTER_IDLE): the scheduler reuses its connections milliseconds apart, hundreds of
times a second at turnover, and paid a round trip for each. What the ping is for still holds: a
rested connection the server dropped is replaced without the caller seeing an error, and one
dropped right after its use fails as a DBAPIError that says so (the loop's outage path), while
the pass's first read replaces it by itself. Every test runs on both databases; SQLite has no
server to drop a connection, so there only the plain reuse is checked."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from orchestra.db import engine as engines
from orchestra.db.driver_reads import DriverRead
from orchestra.db.engine import make_engine


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    made = make_engine(db_url)
    yield made
    made.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(db_url: str, pid: int) -> None:
    other = create_engine(db_url, poolclass=NullPool)  # not the pool under test
    with other.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    other.dispose()


def _one(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT 1")).scalar_one())


def test_a_connection_used_a_moment_ago_is_reused_without_a_ping(
        engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropped right after its use, the pooled connection is handed out unpinged: its first
    statement fails as a DBAPIError marked as a lost connection, and the pool replaces it."""
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 3600.0)  # "a moment ago", however slow the machine
    assert _one(engine) == 1 and _one(engine) == 1  # the same pooled connection, twice
    if db_url.startswith("sqlite"):
        return
    _terminate(db_url, _backend_pid(engine))
    with pytest.raises(DBAPIError) as failed:
        _one(engine)
    assert failed.value.connection_invalidated
    assert _one(engine) == 1  # a new connection


def test_a_rested_connection_is_pinged_and_a_dropped_one_replaced_unseen(
        engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no server that drops connections")
    first = _backend_pid(engine)
    _terminate(db_url, first)
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 0.0)  # every checkout counts as rested
    assert _backend_pid(engine) != first  # no error: the ping found it gone, the pool made another


def test_the_passes_first_read_replaces_a_connection_dropped_right_after_its_use(
        engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no server that drops connections")
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 3600.0)  # no ping: the read's own retry replaces it
    read = DriverRead(text("SELECT 1").columns(), is_sqlite=False)  # type: ignore[arg-type]
    assert read.read(engine) == [(1,)]
    raw = engine.raw_connection()  # the read ran in autocommit (one round trip), and put it back
    assert raw.driver_connection.autocommit is False  # type: ignore[union-attr]
    raw.close()
    _terminate(db_url, _backend_pid(engine))
    assert read.read(engine) == [(1,)]  # replaced, once: the caller sees no error
    assert _one(engine) == 1  # and the pool it started afresh serves the next caller
