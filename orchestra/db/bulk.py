"""Bulk inserts at the speed of the driver: COPY on PostgreSQL, executemany on SQLite.

Registering a 100,000-file directory or expanding a 100,000-job task is one statement's worth of
work; SQLAlchemy's per-row parameter processing would cost more than the database itself.
Runs on the session's own connection, so it is part of the caller's transaction.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

COPY_CHUNK = 50_000


def bulk_insert(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert tuples (in `columns` order) into `table`; returns the number of rows."""
    connection = session.connection()
    cursor = connection.connection.cursor()
    names = ", ".join(f'"{c}"' for c in columns)
    count = 0
    try:
        if connection.dialect.name == "postgresql":
            sql = f'COPY "{table.name}" ({names}) FROM STDIN WITH (FORMAT csv)'
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            for row in rows:
                writer.writerow(row)
                count += 1
                if count % COPY_CHUNK == 0:
                    _copy(cursor, sql, buffer)
                    buffer = io.StringIO()
                    writer = csv.writer(buffer, lineterminator="\n")
            _copy(cursor, sql, buffer)
        else:
            marks = ", ".join("?" for _ in columns)
            materialised = rows if isinstance(rows, list) else list(rows)
            cursor.executemany(f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', materialised)
            count = len(materialised)
    finally:
        cursor.close()
    return count


def _copy(cursor: Any, sql: str, buffer: io.StringIO) -> None:
    if buffer.tell():
        buffer.seek(0)
        cursor.copy_expert(sql, buffer)
