"""The head of each chosen task's queue: the first n queued jobs of every task the policy picked.

This read is what keeps a cycle's cost independent of the number of queued jobs. A task's queue
is two short index range scans (orchestra/db/job_lookup.py): its fresh jobs (never ran) from the
task's cursor `queue_from` on, along `uq_jobs_task_index (task_id, index)`, and its retried jobs
along the partial `ix_jobs_retried`; each stops after n rows, and the first n of the two by index
are the head. Neither index has an entry that moves when a job starts or ends (the old status
index did, and that was the growth of the cycle's cost with the depth of the queue).

The read and the choice are `job_lookup.queue_heads` (the queue view reads the same), and where
the cursor goes next is one Python function (`job_lookup.choose`) for both databases:
- the fresh jobs taken are the first ones from the cursor, so the cursor moves to the next fresh
  job seen, or past the last one taken;
- no fresh job seen at all: none is queued from the cursor on, so it moves past the task's last
  index (a task whose queue holds only retries then costs no scan of its ended jobs);
- fewer jobs found than asked (the plan asks at most the task's `n_queued`): a fresh job sits
  below the cursor (a move back to QUEUED that did not lower it), so the cursor goes to 0 and the
  next dispatch reads the task from its first job. A safety net, never a loss: the job waits one
  pass longer.

Writes: on PostgreSQL the jobs' UPDATE and the tasks' counters and cursors in one statement; a cursor moved by another transaction since the read (a
user's retry) is left where that transaction put it.
"""
from __future__ import annotations

import contextlib
from collections import Counter, namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ContextManager

from sqlalchemy import Row, Update
from sqlalchemy.orm import Session

from orchestra.db.bulk import bulk_update
from orchestra.db.driver_reads import DriverStatement
from orchestra.db.engine import is_sqlite
from orchestra.db.job_lookup import queue_heads
from orchestra.db.models import Task

# PostgreSQL: the chosen jobs started, and their tasks' n_queued and cursors moved, in one statement
# (prepared like CANDIDATES). A cursor another transaction moved since the read is left as it is.
START = DriverStatement(
    "WITH started AS (UPDATE jobs SET status = 'starting', attempts = jobs.attempts + 1, started_at = NULL, "
    "ended_at = NULL WHERE jobs.id = ANY(CAST($1 AS bigint[])) AND jobs.status = 'queued' "
    "RETURNING jobs.id, jobs.task_id, jobs.\"index\", jobs.attempts, jobs.command, jobs.queued_at), "
    "moved AS (SELECT task_id, count(*) AS n FROM started GROUP BY task_id), "
    "taken AS (UPDATE tasks SET n_queued = tasks.n_queued - COALESCE(moved.n, 0), "
    "queue_from = CASE WHEN tasks.queue_from = c.seen THEN c.next ELSE tasks.queue_from END "
    "FROM unnest(CAST($2 AS bigint[]), CAST($3 AS integer[]), CAST($4 AS integer[])) AS c(tid, seen, next) "
    "LEFT JOIN moved ON moved.task_id = c.tid WHERE tasks.id = c.tid) "
    "SELECT id, task_id, \"index\", attempts, command, queued_at FROM started",
    ("bigint[]", "bigint[]", "integer[]", "integer[]"))
Started = namedtuple("Started", "id task_id index attempts command queued_at")  # START's rows


def start_queue_heads(session: Session, plan: Sequence[tuple[int, int]], start_jobs: Update,
                      writing: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> list[Row[Any]]:
    """Mark the heads of the plan's queues `starting`, take them off their tasks' `n_queued`, move
    the tasks' cursors, and return the started jobs' rows (id, task_id, index, attempts, command,
    queued_at). `start_jobs`: the UPDATE of the queued jobs among the bound list `ids`, with that
    RETURNING (SQLite; PostgreSQL runs START). `writing` wraps the writes (the cycle's timing
    of its row writes)."""
    choices = queue_heads(session, plan)
    moves = {t: c for t, c in choices.items() if c.ids or c.next_from != c.seen_from}
    if not moves:
        return []
    ids = [i for c in moves.values() for i in c.ids]
    with writing():
        connection = session.connection()
        if not is_sqlite(connection):
            return [Started(*r) for r in START.rows(connection.connection, connection.dialect, (
                ids, list(moves), [c.seen_from for c in moves.values()], [c.next_from for c in moves.values()]))]
        rows = list(connection.execute(start_jobs, {"ids": ids})) if ids else []
        started = Counter(r.task_id for r in rows)
        bulk_update(session, Task.__table__, [{"id": t, "n_queued": -started[t], "queue_from": c.next_from}
                                              for t, c in moves.items()], add=["n_queued"])
    return rows


def add_queued(session: Session, deltas: Mapping[int, int], lowest: Mapping[int, int] | None = None) -> None:
    """Add each delta to its task's `n_queued` (the counter the cycle reads instead of counting
    queued rows), one statement for all of them; `lowest`: per task, the lowest index of a job
    queued again that never ran, where the task's cursor `queue_from` goes down to (if higher)."""
    lowest = lowest or {}
    plain = {t: d for t, d in deltas.items() if t not in lowest}
    if plain:
        bulk_update(session, Task.__table__, [{"id": t, "n_queued": d} for t, d in plain.items()], add=["n_queued"])
    if lowest:
        bulk_update(session, Task.__table__, [{"id": t, "n_queued": deltas.get(t, 0), "queue_from": i}
                                              for t, i in lowest.items()], add=["n_queued"], lower=["queue_from"])
