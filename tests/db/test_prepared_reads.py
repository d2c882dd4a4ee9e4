"""Issue 18: on PostgreSQL the scheduler's per-pass reads (`DriverRead`) run as prepared
statements of each pooled connection, prepared once, with the same rows as the plain SQL. A pooler
that loses them (simulated by the real server forgetting them: `DEALLOCATE ALL` on that session)
turns them off for the read without an error when it runs alone, and after one failed read when
it runs inside a transaction. Both databases: on SQLite nothing is prepared and the rows are the
same."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from orchestra.db.driver_reads import DriverRead
from orchestra.db.engine import is_sqlite, make_engine
from orchestra.db.models import SchedulerLease
from orchestra.scheduler.cycle import _Statements


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    made = make_engine(db_url)
    yield made
    made.dispose()


LEASES = SchedulerLease.__table__


def _plain(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql)]


def _prepared_here(engine: Engine) -> list[str]:
    """The prepared statements of the pool's connection (the pool holds one: the reads' own)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
        names = [row[0] for row in cursor.fetchall()]
        raw.rollback()
        return names
    finally:
        raw.close()


def _forget_prepared(engine: Engine) -> None:
    """What a pooler does to a client that it moves to another server session: the statements the
    client prepared are not there. Here the same session forgets them."""
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("DEALLOCATE ALL")
        raw.commit()
    finally:
        raw.close()


def test_the_passes_reads_are_prepared_once_per_connection_and_read_the_same_rows(engine: Engine) -> None:
    lease = DriverRead(select(LEASES.c.name, LEASES.c.holder).order_by(LEASES.c.name), is_sqlite(engine))
    live = _Statements(is_sqlite(engine)).live
    for _ in range(3):
        assert lease.read(engine) == _plain(engine, lease.sql) != []
        assert live.read(engine) == _plain(engine, live.sql)
    if is_sqlite(engine):
        assert not lease.prepared and not live.prepared
        return
    assert lease.prepared and live.prepared
    assert _prepared_here(engine) == sorted([lease.name, live.name])  # once each, on the one connection


def test_a_read_alone_whose_prepared_statement_is_gone_runs_plain_without_an_error(engine: Engine) -> None:
    if is_sqlite(engine):
        pytest.skip("SQLite prepares nothing on a server")
    read = DriverRead(select(LEASES.c.name).order_by(LEASES.c.name), is_sqlite=False)
    rows = read.read(engine)
    assert read.prepared and rows
    _forget_prepared(engine)
    assert read.read(engine) == rows  # "does not exist", then retried as plain SQL
    assert not read.prepared
    assert read.read(engine) == rows and _prepared_here(engine) == []


def test_a_read_in_a_transaction_whose_prepared_statement_is_gone_fails_once(engine: Engine) -> None:
    if is_sqlite(engine):
        pytest.skip("SQLite prepares nothing on a server")
    read = DriverRead(select(LEASES.c.name).order_by(LEASES.c.name), is_sqlite=False)
    rows = read.read(engine)
    _forget_prepared(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the transaction is open: the pass's own, in the cycle
        raw = conn.connection
        with pytest.raises(DBAPIError) as failed:
            read.rows(raw, engine.dialect)
        assert not failed.value.connection_invalidated  # not an outage: the connection stays
        conn.rollback()
        assert read.rows(raw, engine.dialect) == rows  # the pass after it: plain SQL
    assert not read.prepared


def test_a_prepared_read_is_planned_again_once_its_table_was_analyzed(engine: Engine) -> None:
    """A prepared plan does not keep the table sizes of its first run: the server plans the
    statement again when a table it reads has new statistics (autovacuum's ANALYZE too)."""
    if is_sqlite(engine):
        pytest.skip("SQLite prepares nothing on a server")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE growing (id int, k int)"))
        conn.execute(text("CREATE INDEX growing_k ON growing (k)"))
    read = DriverRead(text("SELECT id FROM growing WHERE k = 5").columns(), is_sqlite=False)  # type: ignore[arg-type]

    def plan() -> str:
        with engine.connect() as conn:
            return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE {read.name}"))

    assert read.read(engine) == []
    assert "Index Scan" in plan()  # planned for an empty table: the index
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO growing SELECT g, 5 FROM generate_series(1, 20000) g"))
        conn.execute(text("ANALYZE growing"))
    assert plan().startswith("Seq Scan")  # every row matches now: planned again, reads the table
    assert len(read.read(engine)) == 20000


def test_a_statement_with_parameters_is_prepared_once_and_falls_back_to_plain_sql(engine: Engine) -> None:
    """`DriverStatement` (the dispatch's candidates and start, scheduler/heads.py): typed `$n`
    parameters, lists as arrays (empty ones too), the same rows prepared and plain; a pooler that
    lost it fails one transaction, then it runs as plain SQL with the parameters in their order."""
    from orchestra.db.driver_reads import DriverStatement

    if is_sqlite(engine):
        pytest.skip("SQLite prepares nothing on a server")
    statement = DriverStatement(
        "SELECT x, $2::text AS label FROM unnest(CAST($1 AS bigint[])) AS t(x) WHERE x > $3 ORDER BY x",
        ("bigint[]", "text", "integer"))
    with engine.connect() as conn:
        raw = conn.connection
        assert statement.rows(raw, engine.dialect, ([3, 1, 2], "a", 1)) == [(2, "a"), (3, "a")]
        assert statement.rows(raw, engine.dialect, ([], "b", 0)) == []
        assert statement.name in raw.info["orchestra_prepared"]
        raw.rollback()
    _forget_prepared(engine)
    with engine.connect() as conn:
        raw = conn.connection
        with pytest.raises(DBAPIError):
            statement.rows(raw, engine.dialect, ([5], "c", 0))
        raw.rollback()
        assert not statement.prepared
        assert statement.rows(raw, engine.dialect, ([5, 7], "c", 6)) == [(7, "c")]  # plain: %s in $n order
