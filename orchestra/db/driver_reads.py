"""The scheduler's hottest reads, run through the driver itself (issue 18).

A short pass (hundreds per second at turnover) begins with the same few parameter-less reads.
Through SQLAlchemy each cost about twice what the driver takes (execution context, result
processing): on PostgreSQL the live attempts' read took 0.9-1.1 ms a pass, 0.4 ms of it the
server's. So they run as SQL text compiled once, on the DBAPI connection underneath, in the
caller's transaction (the pass's first read, on PostgreSQL, in autocommit: one round trip).

On PostgreSQL each is a server-side prepared statement of each connection (`PREPARE` once, sent
with its first `EXECUTE`): the server planned the live attempts' three-table join afresh at every
pass, 1.1 ms of planning against 0.1 ms of execution in EXPLAIN; read through the driver it took
281 µs plain and 66 µs prepared, the tasks' read 104 and 39 µs (an idle server, 2026-12-02).
A prepared plan does not go stale as the tables grow: the server plans it again whenever a
table it reads was analyzed since (autovacuum's ANALYZE included), as after any DDL. A
connection pooler that moves a client between server sessions (PgBouncer in transaction mode)
loses them: the first "does not exist" or "already exists" error turns them off for that read,
which then runs as plain SQL (the failing read is retried at once when it runs alone, or fails
its pass once when it runs inside one).

Driver errors come out as SQLAlchemy's `DBAPIError` (what the service loop tells an outage by);
a connection the server dropped is invalidated.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Select


_PSYCOPG2_READY = 1  # psycopg2.extensions.STATUS_READY: no transaction open
_PREPARED = "orchestra_prepared"  # key, in a pooled connection's `info`, of the names prepared on it
# SQLSTATEs of a prepared statement the session does not have, or has already: another session
# answered (a pooler between us and the server), so the names cannot be kept track of.
_NOT_OURS = frozenset({"26000", "42P05"})


class DriverRead:
    """One parameter-less SELECT, compiled once for a dialect, run on a DBAPI connection
    (on PostgreSQL as a prepared statement of that connection, see the module's docstring)."""

    def __init__(self, statement: Select[Any], is_sqlite: bool) -> None:
        dialect = sqlite.dialect() if is_sqlite else postgresql.dialect()
        self._postgresql = not is_sqlite
        self._init(str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})), ())

    def _init(self, sql: str, types: tuple[str, ...]) -> None:
        self.sql = sql  # with $1, $2... for its parameters, if any
        self.types = types
        # The plain SQL (no PREPARE): psycopg2's %s in the order the $n occur, and that order.
        self._order = [int(n) - 1 for n in re.findall(r"\$(\d+)", sql)]
        self.plain = re.sub(r"\$\d+", "%s", sql)
        self.prepared = self._postgresql  # False once a pooler proved the server sessions are not ours
        # Named after its text: two reads of the same SQL share one prepared statement.
        self.name = "orchestra_" + hashlib.sha1(sql.encode()).hexdigest()[:20]

    def read(self, engine: Engine) -> list[tuple[Any, ...]]:
        """Its rows, in a short transaction of its own on a connection from the engine's pool.

        A connection the server dropped (a restart, `pg_terminate_backend`) is replaced once: the
        pool then starts afresh, since its other connections are as old as that one (the pool pings
        only connections that rested, see engine.PING_AFTER_IDLE). A read whose prepared statement
        the session did not know (a pooler between us and the server) is retried once as plain SQL.
        A second failure is raised."""
        try:
            return self._read_once(engine)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                engine.dispose()
            elif getattr(exc.orig, "pgcode", None) not in _NOT_OURS:  # else `rows` turned preparing off
                raise
            return self._read_once(engine)  # on a new pool, or as plain SQL now

    def _read_once(self, engine: Engine) -> list[tuple[Any, ...]]:
        dialect = engine.dialect
        try:
            raw = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # the pool's connect raises the driver's own error
            raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
        driver = raw.driver_connection
        # PostgreSQL: the one SELECT in autocommit, its own transaction (psycopg2 otherwise sends a
        # BEGIN before it and the COMMIT after it: two round trips of three, issue 18). Only on a
        # connection outside any transaction, as the pool hands them out.
        alone = self._postgresql and getattr(driver, "status", None) == _PSYCOPG2_READY
        try:
            if alone:
                driver.autocommit = True  # type: ignore[union-attr]
            rows = self.rows(raw, dialect)
            if not alone:
                raw.commit()
        finally:
            if alone:
                with contextlib.suppress(Exception):  # an invalidated connection is closed already
                    driver.autocommit = False  # type: ignore[union-attr]
            raw.close()  # back to the pool (rolled back there if the commit did not happen)
        return rows

    def rows(self, raw: PoolProxiedConnection, dialect: Dialect,
             params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Its rows, in the connection's current transaction (the caller commits or not)."""
        cursor = raw.cursor()
        try:
            cursor.execute(*self._statement(raw, params))
            return cursor.fetchall()
        except dialect.loaded_dbapi.Error as exc:
            if getattr(exc, "pgcode", None) in _NOT_OURS:
                self.prepared = False
                raw.info.pop(_PREPARED, None)
            gone = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if gone:
                raw.invalidate(exc)
            raise DBAPIError.instance(self.sql, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone,
                                      dialect=dialect) from exc
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):  # its connection may be gone
                cursor.close()

    def _statement(self, raw: PoolProxiedConnection, params: Sequence[Any]) -> tuple[Any, ...]:
        """What to send, as the cursor's arguments: the SQL itself, or the prepared statement's
        EXECUTE, preceded by its PREPARE the first time on this connection (one round trip:
        psycopg2 sends both in one string and returns the last one's rows). A PREPARE is not
        undone by a rollback. Without parameters no argument is passed (psycopg2 would read a `%`
        in the SQL as a placeholder)."""
        if not self.prepared:
            return (self.plain, [params[i] for i in self._order]) if params else (self.plain,)
        arguments = f" ({', '.join(['%s'] * len(params))})" if params else ""
        done: set[str] = raw.info.setdefault(_PREPARED, set())
        if self.name in done:
            sql = f"EXECUTE {self.name}{arguments}"
        else:
            done.add(self.name)
            types = f" ({', '.join(self.types)})" if self.types else ""
            sql = f"PREPARE {self.name}{types} AS {self.sql}; EXECUTE {self.name}{arguments}"
        return (sql, list(params)) if params else (sql,)


class DriverStatement(DriverRead):
    """One statement with parameters (`$1`, `$2`... of the given PostgreSQL types), prepared on
    each pooled connection like a `DriverRead`; `rows(raw, dialect, params)` runs it in the
    connection's transaction. PostgreSQL only (SQLite's statements are in-process calls: nothing
    to plan over and over). Why: the dispatch's two statements cost the server more to plan than
    to run at a short pass's one or two jobs, and SQLAlchemy's execution as much again (issue 18)."""

    def __init__(self, sql: str, types: Sequence[str]) -> None:
        self._postgresql = True
        self._init(sql, tuple(types))
