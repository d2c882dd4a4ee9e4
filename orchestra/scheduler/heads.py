"""The head of each chosen task's queue: the first n queued jobs of every task the policy picked.

This read is what keeps a cycle's cost independent of the number of queued jobs: it walks the
index `ix_jobs_task_status (task_id, status, id)` from each task's first queued job and stops
after n. One statement per cycle on PostgreSQL (a LATERAL join over the plan, since a server
round trip per task would cost more than the rest of the cycle); on SQLite, which has no
LATERAL, one indexed query per task on the driver's cursor: in-process calls cost microseconds,
SQLAlchemy's per-statement overhead would cost ~100 µs each.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ContextManager

from sqlalchemy import Row, Select, Update, text
from sqlalchemy.orm import Session

from orchestra.db.bulk import bulk_update
from orchestra.db.engine import is_sqlite
from orchestra.db.models import Job, Task
from orchestra.states import JobStatus

HEADS_SQL = text(
    "SELECT j.id FROM unnest(CAST(:tids AS bigint[]), CAST(:ns AS bigint[])) AS p(tid, n) "
    "CROSS JOIN LATERAL (SELECT id FROM jobs WHERE task_id = p.tid AND status = :queued ORDER BY id LIMIT p.n) AS j"
)
HEAD_SQLITE = "SELECT id FROM jobs WHERE task_id = ? AND status = ? ORDER BY id LIMIT ?"


def queue_heads(session: Session, plan: Sequence[tuple[int, int]]) -> list[int]:
    """Ids of the first `n` queued jobs (by id) of each `(task id, n)` in the plan."""
    if not plan:
        return []
    queued = JobStatus.QUEUED.value
    if not is_sqlite(session.get_bind()):
        return list(session.scalars(HEADS_SQL, {"tids": [t for t, _ in plan], "ns": [n for _, n in plan],
                                                "queued": queued}))
    cursor = session.connection().connection.cursor()  # the session's connection: same transaction
    try:
        chosen: list[int] = []
        for task_id, n in plan:
            chosen += [row[0] for row in cursor.execute(HEAD_SQLITE, (task_id, queued, n))]
        return chosen
    finally:
        cursor.close()


HEADS_SUBQUERY = HEADS_SQL.columns(Job.__table__.c.id)  # for `jobs.id IN (...)` (PostgreSQL)


def start_queue_heads(session: Session, plan: Sequence[tuple[int, int]], start_jobs: Update,
                      start_heads: Select[Any] | None,
                      writing: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> list[Row[Any]]:
    """Mark the heads of the plan's queues `starting`, take them off their tasks' `n_queued`, and
    return their rows (the RETURNING of `start_jobs`, an UPDATE of the queued jobs among the bound
    list `ids`). On PostgreSQL `start_heads` does it all in one statement (the same UPDATE of the
    queued jobs among `HEADS_SUBQUERY`, and the tasks' UPDATE, as CTEs): two server round trips
    less in every pass that dispatches (issue 18). On SQLite the heads are read first
    (`queue_heads`, in-process), then the two UPDATEs run. `writing` wraps the UPDATEs (the
    cycle's timing of its row writes)."""
    if not plan:
        return []
    if start_heads is not None and not is_sqlite(session.get_bind()):
        with writing():
            return list(session.connection().execute(start_heads, {
                "tids": [t for t, _ in plan], "ns": [n for _, n in plan], "queued": JobStatus.QUEUED.value}))
    chosen = queue_heads(session, plan)
    if not chosen:
        return []
    with writing():
        rows = list(session.connection().execute(start_jobs, {"ids": chosen}))
        add_queued(session, Counter({t: -n for t, n in Counter(r.task_id for r in rows).items()}))
    return rows


def add_queued(session: Session, deltas: Counter[int]) -> None:
    """Add each delta to its task's `n_queued` (the counter the cycle reads instead of counting
    queued rows), one statement for all of them."""
    bulk_update(session, Task.__table__, [{"id": t, "n_queued": d} for t, d in deltas.items()], add=["n_queued"])
