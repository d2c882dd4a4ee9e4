"""The scheduler's hottest reads, run through the driver itself (issue 18).

A short pass (hundreds per second at turnover) begins with the same few parameter-less reads.
Through SQLAlchemy each cost about twice what the driver takes (execution context, result
processing), and on PostgreSQL planning their joins was half of the server's share; so they run
as SQL text compiled once, on the DBAPI connection underneath, and on PostgreSQL as a server-side
prepared statement made once per connection (the pool keeps `info` with the connection: a new
one prepares again; PREPARE outlives a rolled-back transaction, so it is never made twice).
SQLite's driver caches its statements itself. Driver errors come out as SQLAlchemy's `DBAPIError`
(what the service loop tells an outage by); a connection the server dropped is invalidated.
"""
from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Select


class PreparedRead:
    """One parameter-less SELECT, compiled once for a dialect, run on a DBAPI connection."""

    def __init__(self, name: str, statement: Select[Any], is_sqlite: bool) -> None:
        self.name = name
        dialect = sqlite.dialect() if is_sqlite else postgresql.dialect()
        self.sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        self.is_sqlite = is_sqlite

    def rows(self, raw: PoolProxiedConnection, dialect: Dialect) -> list[tuple[Any, ...]]:
        """Its rows, in the connection's current transaction (the caller commits or not)."""
        statement = self.sql
        cursor = raw.cursor()
        try:
            if not self.is_sqlite:
                if not raw.info.get(self.name):
                    cursor.execute(f"PREPARE {self.name} AS {self.sql}")
                    raw.info[self.name] = True
                statement = f"EXECUTE {self.name}"
            cursor.execute(statement)
            return cursor.fetchall()
        except dialect.loaded_dbapi.Error as exc:
            gone = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if gone:
                raw.invalidate(exc)
            raise DBAPIError.instance(statement, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone,
                                      dialect=dialect) from exc
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):  # its connection may be gone
                cursor.close()
