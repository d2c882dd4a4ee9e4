"""The head of each chosen task's queue: the first n queued jobs of every task the policy picked.

This read is what keeps a cycle's cost independent of the number of queued jobs: it walks the
index `ix_jobs_task_status (task_id, status, id)` from each task's first queued job and stops
after n. One statement per cycle on PostgreSQL (a LATERAL join over the plan, since a server
round trip per task would cost more than the rest of the cycle); on SQLite, which has no
LATERAL, one indexed query per task on the driver's cursor: in-process calls cost microseconds,
SQLAlchemy's per-statement overhead would cost ~100 µs each.
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from orchestra.db.engine import is_sqlite
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
