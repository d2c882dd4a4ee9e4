"""Bulk inserts and updates at the speed of the driver: COPY and unnest() on PostgreSQL,
executemany on SQLite.

Registering a 100,000-file directory or expanding a 100,000-job task is one statement's worth of
work; SQLAlchemy's per-row parameter processing would cost more than the database itself.
Runs on the session's own connection, so it is part of the caller's transaction.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, Table, any_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from orchestra.db.engine import is_sqlite

COPY_CHUNK = 50_000
UNNEST_MIN_ROWS = 16  # PostgreSQL: from here on one UPDATE ... FROM unnest() beats a batched executemany


def bulk_insert(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert tuples (in `columns` order) into `table`; returns the number of rows."""
    connection = session.connection()
    cursor = connection.connection.cursor()
    names = ", ".join(f'"{c}"' for c in columns)
    count = 0
    try:
        if not is_sqlite(connection) and _row_security_active(cursor, table.name, connection.info):
            # COPY FROM refuses tables whose row-level security applies to the caller (a user's
            # role registering its files, see migration 0003): one INSERT ... SELECT unnest() instead.
            materialised = rows if isinstance(rows, list) else list(rows)
            columns_of = list(zip(*materialised)) if materialised else [() for _ in columns]
            arrays = [bindparam(c, list(values), type_=ARRAY(table.c[c].type)) for c, values in zip(columns, columns_of)]
            statement = insert(table).from_select(list(columns), select(*(func.unnest(a) for a in arrays)))
            if materialised:
                session.execute(statement)
            return len(materialised)
        if not is_sqlite(connection):
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


def _row_security_active(cursor: Any, table: str, info: dict[Any, Any] | None = None) -> bool:
    """Whether row-level security applies to this connection's role on `table`; remembered in the
    connection's `info` (its role does not change: issue 18, one round trip less per insert)."""
    key = ("row_security_active", table)
    if info is not None and key in info:
        return bool(info[key])
    cursor.execute("SELECT row_security_active(%s)", (table,))
    active = bool(cursor.fetchone()[0])
    if info is not None:
        info[key] = active
    return active


def _copy(cursor: Any, sql: str, buffer: io.StringIO) -> None:
    if buffer.tell():
        buffer.seek(0)
        cursor.copy_expert(sql, buffer)


_UPDATES: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
UPDATE_CACHE_SIZE = 256  # statements kept: one per call site and shape; the oldest goes first


def _update_statement(table: Table, columns: tuple[str, ...], key: str, where: Sequence[ColumnElement[bool]],
                      fixed: Mapping[str, Any], add: Sequence[str], unnest: bool) -> Any:
    """The UPDATE for one call shape, built once (issue 18: building and keying a statement costs
    more than running it on a short pass's few rows). Values are bound parameters: `arr_<column>`
    per row column (arrays for unnest), `fix_<column>` for each plain fixed value; a fixed SQL
    expression is part of the statement. Keyed by identity of the `where` and expression objects,
    which the entry keeps alive (so their ids cannot be reused while it exists): a caller that
    passes objects built once (module constants) always hits; one that builds them per call
    misses and costs what it did before."""
    plain = tuple(c for c, v in fixed.items() if not isinstance(v, ClauseElement))
    expressions = tuple((c, id(v)) for c, v in fixed.items() if isinstance(v, ClauseElement))
    cache_key = (id(table), columns, key, tuple(id(w) for w in where), plain, expressions, tuple(add), unnest)
    hit = _UPDATES.get(cache_key)
    if hit is not None:
        return hit[0]
    if unnest:
        arrays = [bindparam(f"arr_{c}", type_=ARRAY(table.c[c].type)) for c in columns]
        source = func.unnest(*arrays).table_valued(*columns).render_derived(name="src")
        value: dict[str, Any] = {c: source.c[c] for c in columns}
    else:
        value = {c: bindparam(f"arr_{c}", type_=table.c[c].type) for c in columns}
    changes = {c: (table.c[c] + value[c] if c in add else value[c]) for c in columns if c != key}
    sets = {c: (v if isinstance(v, ClauseElement) else bindparam(f"fix_{c}", type_=table.c[c].type))
            for c, v in fixed.items()}
    statement = update(table).where(table.c[key] == value[key], *where).values({**changes, **sets})
    if len(_UPDATES) >= UPDATE_CACHE_SIZE:
        del _UPDATES[next(iter(_UPDATES))]
    _UPDATES[cache_key] = (statement, (table, tuple(where), tuple(fixed.values())))  # keeps the keyed objects alive
    return statement


def bulk_update(session: Session, table: Table, rows: Sequence[Mapping[str, Any]], *, key: str = "id",
                where: Sequence[ColumnElement[bool]] = (), fixed: Mapping[str, Any] | None = None,
                add: Sequence[str] = ()) -> None:
    """`UPDATE table SET <row's columns> WHERE table.<key> = row[key] [AND where]`, for every row.

    Rows are dicts keyed by column name, all with the same keys, one per key value (on
    PostgreSQL a table row matched twice is updated once); columns named in `add` are
    incremented by the row's value instead of set; `fixed` sets the same value (or SQL expression)
    on every row. On PostgreSQL it is one statement joining the table to `unnest()` of one array
    per column: the engine batches an executemany into one round trip, but the server still
    parses and plans every row's statement, 20-30 ms per 1,000 rows. Below UNNEST_MIN_ROWS rows
    (a short pass's one or two endings) that executemany is the cheaper of the two (0.4 against
    0.6 ms a transaction for one row, measured), and it is what SQLite always gets: in-process
    calls, no round trips. The statement of each call shape is built once (`_update_statement`);
    pass `where` conditions built once to reuse it.
    """
    if not rows:
        return
    columns = tuple(rows[0])
    fixed = dict(fixed or {})
    connection = session.connection()
    unnest = len(rows) >= UNNEST_MIN_ROWS and not is_sqlite(connection)
    statement = _update_statement(table, columns, key, where, fixed, add, unnest)
    constants = {f"fix_{c}": v for c, v in fixed.items() if not isinstance(v, ClauseElement)}
    if unnest:
        connection.execute(statement, {**{f"arr_{c}": [r[c] for r in rows] for c in columns}, **constants})
    else:
        connection.execute(statement, [{**{f"arr_{c}": r[c] for c in columns}, **constants} for r in rows])


def one_of(session: Session, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values` for hundreds of values: `= ANY(array)` on PostgreSQL, one parameter
    whatever the count (an IN list renders and sends a placeholder per value, ~10 µs each in
    SQLAlchemy alone); an IN list on SQLite, whose in-process parameters cost next to nothing."""
    values = list(values)
    if not is_sqlite(session.get_bind()):
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def one_of_param(column: ColumnElement[Any], name: str, sqlite: bool) -> ColumnElement[bool]:
    """`one_of` with its values bound at execution (`{name: [values]}`), for statements built once:
    an expanding IN on SQLite, `= ANY(:name)` (one array parameter) on PostgreSQL."""
    if sqlite:
        return column.in_(bindparam(name, expanding=True))
    return column == any_(bindparam(name, type_=ARRAY(column.type)))
