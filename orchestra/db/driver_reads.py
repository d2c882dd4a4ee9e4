"""The scheduler's hottest reads, run through the driver itself (issue 18).

A short pass (hundreds per second at turnover) begins with the same few parameter-less reads.
Through SQLAlchemy each cost about twice what the driver takes (execution context, result
processing): on PostgreSQL the live attempts' read took 0.9-1.1 ms a pass, 0.4 ms of it the
server's. So they run as SQL text compiled once, on the DBAPI connection underneath, in the
caller's transaction (the pass's first read, on PostgreSQL, in autocommit: one round trip).
They are not server-side prepared statements: a parameter-less prepared
statement keeps the plan made the first time, for the table sizes of that moment (an empty jobs
table at start-up, a million rows later), and planning is only part of their cost.
Driver errors come out as SQLAlchemy's `DBAPIError` (what the service loop tells an outage by);
a connection the server dropped is invalidated.
"""
from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Select


_PSYCOPG2_READY = 1  # psycopg2.extensions.STATUS_READY: no transaction open


class DriverRead:
    """One parameter-less SELECT, compiled once for a dialect, run on a DBAPI connection."""

    def __init__(self, statement: Select[Any], is_sqlite: bool) -> None:
        dialect = sqlite.dialect() if is_sqlite else postgresql.dialect()
        self._postgresql = not is_sqlite
        self.sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    def read(self, engine: Engine) -> list[tuple[Any, ...]]:
        """Its rows, in a short transaction of its own on a connection from the engine's pool.

        A connection the server dropped (a restart, `pg_terminate_backend`) is replaced once: the
        pool then starts afresh, since its other connections are as old as that one (the pool pings
        only connections that rested, see engine.PING_AFTER_IDLE). A second failure is raised."""
        try:
            return self._read_once(engine)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            engine.dispose()
            return self._read_once(engine)

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

    def rows(self, raw: PoolProxiedConnection, dialect: Dialect) -> list[tuple[Any, ...]]:
        """Its rows, in the connection's current transaction (the caller commits or not)."""
        cursor = raw.cursor()
        try:
            cursor.execute(self.sql)
            return cursor.fetchall()
        except dialect.loaded_dbapi.Error as exc:
            gone = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if gone:
                raw.invalidate(exc)
            raise DBAPIError.instance(self.sql, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone,
                                      dialect=dialect) from exc
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):  # its connection may be gone
                cursor.close()
