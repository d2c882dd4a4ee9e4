"""Bulk inserts and updates at the speed of the driver: COPY and unnest() on PostgreSQL, the
driver's own executemany of a statement compiled once on SQLite.

Registering a 100,000-file directory or expanding a 100,000-job task is one statement's worth of
work; SQLAlchemy's per-row parameter processing would cost more than the database itself.
Runs on the session's own connection, so it is part of the caller's transaction.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (ClauseElement, Column, ColumnElement, Integer, String, Table, Text, TypeDecorator, any_, bindparam,
                        case, func, insert, literal_column, select, update)
from sqlalchemy.sql.elements import BinaryExpression
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


class _Update:
    """One cached UPDATE shape: the statement, the objects its key names by identity (kept alive so
    their ids are not reused while it exists) and, once run on SQLite, its compiled form."""

    __slots__ = ("statement", "keep", "sqlite")

    def __init__(self, statement: Any, keep: tuple[Any, ...]) -> None:
        self.statement = statement
        self.keep = keep
        self.sqlite: _Compiled | bool | None = None  # False: not for the driver (SQLAlchemy runs it)


class _Compiled:
    """An UPDATE compiled once for SQLite's driver: its SQL, and for each positional parameter
    where its value comes from (a row's column, a fixed value, or the statement's own constant),
    with the type's bind processor if it has one."""

    __slots__ = ("sql", "sources")

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        names = list(compiled.positiontup or ())
        defaults = compiled.construct_params(
            {n: None for n in names if n.startswith(("arr_", "fix_"))}, _check=False)
        processors = getattr(compiled, "_bind_processors", {}) or {}
        self.sql: str = compiled.string
        self.sources: list[tuple[str, Any, Any]] = []  # (kind, name or value, processor)
        for name in names:
            if name.startswith("arr_"):
                self.sources.append(("row", name[4:], processors.get(name)))
            elif name.startswith("fix_"):
                self.sources.append(("fixed", name, processors.get(name)))
            else:
                value = defaults.get(name)
                processor = processors.get(name)
                self.sources.append(("const", processor(value) if processor and value is not None else value, None))

    def parameters(self, rows: Sequence[Mapping[str, Any]], constants: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        fixed = {name: (p(constants[name]) if p and constants[name] is not None else constants[name])
                 for kind, name, p in self.sources if kind == "fixed"}
        if not any(p for kind, _, p in self.sources if kind == "row"):
            getters = [(kind == "row", name if kind == "row" else (fixed[name] if kind == "fixed" else name))
                       for kind, name, _ in self.sources]
            return [tuple(r[v] if from_row else v for from_row, v in getters) for r in rows]
        out = []
        for r in rows:
            values = []
            for kind, name, p in self.sources:
                if kind == "row":
                    value = r[name]
                    values.append(p(value) if p and value is not None else value)
                else:
                    values.append(fixed[name] if kind == "fixed" else name)
            out.append(tuple(values))
        return out


_UPDATES: dict[tuple[Any, ...], _Update] = {}
UPDATE_CACHE_SIZE = 256  # statements kept: one per call site and shape; the oldest goes first


def _update_statement(table: Table, columns: tuple[str, ...], key: str, where: Sequence[ColumnElement[bool]],
                      fixed: Mapping[str, Any], add: Sequence[str], unnest: bool, lower: Sequence[str] = ()) -> _Update:
    """The UPDATE for one call shape, built once (issue 18: building and keying a statement costs
    more than running it on a short pass's few rows). Values are bound parameters: `arr_<column>`
    per row column (arrays for unnest), `fix_<column>` for each plain fixed value; a fixed SQL
    expression is part of the statement. Keyed by identity of the `where` and expression objects,
    which the entry keeps alive (so their ids cannot be reused while it exists): a caller that
    passes objects built once (module constants) always hits; one that builds them per call
    misses and costs what it did before."""
    plain = tuple(c for c, v in fixed.items() if not isinstance(v, ClauseElement))
    expressions = tuple((c, id(v)) for c, v in fixed.items() if isinstance(v, ClauseElement))
    cache_key = (id(table), columns, key, tuple(id(w) for w in where), plain, expressions, tuple(add), unnest,
                 tuple(lower))
    hit = _UPDATES.get(cache_key)
    if hit is not None:
        return hit
    if unnest:
        arrays = [bindparam(f"arr_{c}", type_=ARRAY(table.c[c].type)) for c in columns]
        source = func.unnest(*arrays).table_valued(*columns).render_derived(name="src")
        value: dict[str, Any] = {c: source.c[c] for c in columns}
    else:
        value = {c: bindparam(f"arr_{c}", type_=table.c[c].type) for c in columns}
    changes = {c: (table.c[c] + value[c] if c in add else
                   case((table.c[c] > value[c], value[c]), else_=table.c[c]) if c in lower else value[c])
               for c in columns if c != key}
    sets = {c: (v if isinstance(v, ClauseElement) else bindparam(f"fix_{c}", type_=table.c[c].type))
            for c, v in fixed.items()}
    guards = [_filter_only(w, table) for w in where] if unnest else list(where)
    statement = update(table).where(table.c[key] == value[key], *guards).values({**changes, **sets})
    if len(_UPDATES) >= UPDATE_CACHE_SIZE:
        del _UPDATES[next(iter(_UPDATES))]
    entry = _UPDATES[cache_key] = _Update(statement, (table, tuple(where), tuple(fixed.values())))
    return entry


def _filter_only(condition: ColumnElement[bool], table: Table) -> ColumnElement[bool]:
    """A `where` guard of the unnest UPDATE as a filter on the rows the key finds, never a way to
    find them: `jobs.status = 'starting'` becomes `(jobs.status || '') = 'starting'`, an integer
    column `c + 0`, which no index matches.

    Why (issue 18): a guard on a transient state is planned from statistics taken when that state
    had no rows. After an ANALYZE of a 1M-row jobs table with none `starting`, PostgreSQL
    estimated 1 row for `status = 'starting'`, drove the acknowledgement's UPDATE from that index
    and ran `unnest()` once per row it found: 1,000 acknowledgements cost 1,000 x 1,000
    comparisons, 160-190 ms instead of 15-22 ms by the primary key. A guard of another shape is
    left as it is."""
    if not (isinstance(condition, BinaryExpression) and isinstance(condition.left, Column)
            and condition.left.table is table):
        return condition
    column = condition.left
    if isinstance(column.type, String):  # Text and the enums' strings too
        hidden: ColumnElement[Any] = column.op("||")(literal_column("''"))
    elif isinstance(column.type, Integer):
        hidden = column + literal_column("0")
    else:
        return condition
    return condition.operator(hidden, condition.right)  # type: ignore[no-any-return]


def bulk_update(session: Session, table: Table, rows: Sequence[Mapping[str, Any]], *, key: str = "id",
                where: Sequence[ColumnElement[bool]] = (), fixed: Mapping[str, Any] | None = None,
                add: Sequence[str] = (), lower: Sequence[str] = ()) -> None:
    """`UPDATE table SET <row's columns> WHERE table.<key> = row[key] [AND where]`, for every row.

    Rows are dicts keyed by column name, all with the same keys, one per key value (on
    PostgreSQL a table row matched twice is updated once); columns named in `add` are
    incremented by the row's value instead of set, those in `lower` set to it only where it is
    lower than what they hold; `fixed` sets the same value (or SQL expression)
    on every row. On PostgreSQL it is one statement joining the table to `unnest()` of one array
    per column: the engine batches an executemany into one round trip, but the server still
    parses and plans every row's statement, 20-30 ms per 1,000 rows. Below UNNEST_MIN_ROWS rows
    (a short pass's one or two endings) that executemany is the cheaper of the two (0.4 against
    0.6 ms a transaction for one row, measured). SQLite gets the statement compiled once and run by
    the driver's executemany (in-process calls, no round trips; SQLAlchemy's per-row parameter
    handling cost 2-4x SQLite's own work, issue 18): as fast as one set-based UPDATE of the same
    rows there (an UPDATE ... FROM (VALUES ...) or json_each() measured no faster). The statement
    of each call shape is built once (`_update_statement`); pass `where` conditions built once to
    reuse it.
    """
    if not rows:
        return
    columns = tuple(rows[0])
    fixed = dict(fixed or {})
    connection = session.connection()
    sqlite = is_sqlite(connection)
    unnest = len(rows) >= UNNEST_MIN_ROWS and not sqlite
    if unnest:  # a column with one value in every row is sent once, not as an array of copies
        same = {c: rows[0][c] for c in columns
                if c != key and c not in add and c not in lower and c not in fixed and _one_value(rows, c)}
        if same:
            columns = tuple(c for c in columns if c not in same)
            fixed.update(same)
    entry = _update_statement(table, columns, key, where, fixed, add, unnest, lower)
    constants = {f"fix_{c}": v for c, v in fixed.items() if not isinstance(v, ClauseElement)}
    if sqlite and entry.sqlite is None:
        compiled = _Compiled(entry.statement, connection.dialect)
        entry.sqlite = compiled if "POSTCOMPILE" not in compiled.sql else False  # an expanding IN: SQLAlchemy's
    if sqlite and isinstance(entry.sqlite, _Compiled):
        # The driver's own executemany of the statement compiled once (issue 18): SQLAlchemy's
        # per-row parameter handling cost more than SQLite's in-process execution of the rows.
        cursor = connection.connection.cursor()
        try:
            cursor.executemany(entry.sqlite.sql, entry.sqlite.parameters(rows, constants))
        finally:
            cursor.close()
    elif unnest:
        connection.execute(entry.statement, {**{f"arr_{c}": [r[c] for r in rows] for c in columns}, **constants})
    else:
        connection.execute(entry.statement, [{**{f"arr_{c}": r[c] for c in columns}, **constants} for r in rows])


def _one_value(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    """Whether every row has the same value (of the same type) in `column`.

    Issue 18: the end of 1,000 jobs sets status, exit code, reason and end time alike on every
    row; sent as six 1,000-element arrays, PostgreSQL parsed 6,000 literals and the driver quoted
    them (1M jobs: 36-38 ms a statement, 6.5 ms of it client CPU); with the shared values sent once,
    27-29 ms and 2.6-3.9 ms."""
    first = rows[0][column]
    kind = type(first)
    return all(type(value) is kind and value == first for value in (r[column] for r in rows))


def one_of(session: Session, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN values` for hundreds of values: `= ANY(array)` on PostgreSQL, one parameter
    whatever the count (an IN list renders and sends a placeholder per value, ~10 µs each in
    SQLAlchemy alone); an IN list on SQLite, whose in-process parameters cost next to nothing."""
    values = list(values)
    if not is_sqlite(session.get_bind()):
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (json cannot write numpy's own)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not an id")


class _JsonList(TypeDecorator[Any]):
    """A list bound as one JSON text (SQLite's `json_each` reads it back as rows)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.dumps(list(value), default=_plain)


def one_of_param(column: ColumnElement[Any], name: str, sqlite: bool) -> ColumnElement[bool]:
    """`one_of` with its values bound at execution (`{name: [values]}`), for statements built once:
    `IN (SELECT value FROM json_each(:name))` on SQLite, `= ANY(:name)` on PostgreSQL: one
    parameter whatever the count, and the same SQL text every time (issue 18: an expanding IN of
    1,000 ids is rendered, and prepared by SQLite, anew at each execution)."""
    if sqlite:
        return column.in_(select(func.json_each(bindparam(name, type_=_JsonList())).table_valued("value").c.value))
    return column == any_(bindparam(name, type_=ARRAY(column.type)))
