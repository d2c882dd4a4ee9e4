"""How a task's jobs are found by state, with no index entry that moves when a job starts or ends.

Why (issue 18): the scheduler's cycle at a million queued jobs cost ~1.4x its cost at ten thousand
on SQLite, and the growth was one index. `ix_jobs_task_status (task_id, status, id)` moved every
job's entry at each of its status changes; with a deep queue each task's queued run spans pages of
its own, so a cycle that starts and ends one job of each of 1,000 tasks rewrote two index pages per
task (7,400 WAL frames a cycle at 1M queued, 4,600 at 10k; its checkpoints rewrite them again).
Now no entry moves when a job is dispatched, acknowledged or ended, except the one its settled
state adds: 4,000 frames a cycle at 1M, 3,800 at 10k (SQLite's WAL read back page by page).

The jobs table's indexes, and the task's cursor:
- `uq_jobs_task_index (task_id, index)`: a task's jobs in order (the expansion inserts them so).
- `tasks.queue_from`: no queued job that never ran (`attempts = 0`, "fresh") has an index below it.
  The dispatch takes the fresh ones from there on and moves it past them; a move of a fresh job
  back to QUEUED (a put-back launch, the release of held jobs, a retry of a job killed before it
  ran) moves it down (`lowered_queue_from`).
- `ix_jobs_retried (task_id, index) WHERE status = 'queued' AND attempts > 0`: queued jobs that
  ran before (the scheduler's retries, a user's retry of a failed job): few, anywhere in the task.
- `ix_jobs_settled (task_id, status) WHERE status IN (held, succeeded, failed, killed)`: per-state
  counts and lists of the jobs that wait outside the queue or have ended.
- Starting and running jobs are found through their live attempts (`ix_attempts_status`): at most
  the clusters' slots, whatever the number of jobs.

SQLite uses a partial index only for a query that repeats the index's WHERE term literally (a
bound parameter is not matched, an implied IN list is not); the conditions here are written so.
PostgreSQL proves the implication from the literal values psycopg2 sends.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, distinct, exists, func, literal_column, select, text, union_all
from sqlalchemy.orm import Session

from orchestra.db.driver_reads import DriverStatement
from orchestra.db.engine import is_sqlite
from orchestra.db.models import RETRIED_WHERE, SETTLED_STATES, SETTLED_WHERE, Attempt, Job, Task
from orchestra.states import LIVE_ATTEMPT, LIVE_JOB

_JOBS = Job.__table__
_TASKS = Task.__table__
_SETTLED_TERM = _JOBS.c.status.in_([literal_column(f"'{s}'") for s in SETTLED_STATES])
# ix_jobs_retried's predicate, and its complement among the queued jobs.
RETRIED = and_(_JOBS.c.status == literal_column("'queued'"), _JOBS.c.attempts > literal_column("0"))
FRESH = and_(_JOBS.c.status == literal_column("'queued'"), _JOBS.c.attempts == literal_column("0"))
LIVE_JOB_STATES = tuple(s.value for s in LIVE_JOB)
_LIVE_ATTEMPT_STATES = tuple(s.value for s in LIVE_ATTEMPT)


def settled(*states: str) -> ColumnElement[bool]:
    """`jobs.status` is one of `states` (all of them by default), each a settled state: held,
    succeeded, failed or killed; written so that SQLite reads them through ix_jobs_settled."""
    wanted = tuple(str(s) for s in states) or SETTLED_STATES
    unknown = set(wanted) - set(SETTLED_STATES)
    if unknown:
        raise ValueError(f"not settled job states: {sorted(unknown)}")
    if set(wanted) == set(SETTLED_STATES):
        return _SETTLED_TERM
    return and_(_SETTLED_TERM, _JOBS.c.status.in_(wanted))


def lowered_queue_from(lowest: Any) -> ColumnElement[int]:
    """The value that moves a task's `queue_from` down to `lowest` (a fresh job of that index is
    queued again), and leaves it where it is when it is lower already."""
    return case((_TASKS.c.queue_from > lowest, lowest), else_=_TASKS.c.queue_from)


def _live_query(task_ids: Sequence[int]) -> Select[Any]:
    """(task id, state, jobs) of the starting and running jobs, counted through their live attempts."""
    return (select(Job.task_id, Job.status, func.count(distinct(Job.id))).select_from(Attempt)
            .join(Job, Job.id == Attempt.job_id)
            .where(Attempt.status.in_(_LIVE_ATTEMPT_STATES), Job.task_id.in_(list(task_ids)),
                   Job.status.in_(LIVE_JOB_STATES))
            .group_by(Job.task_id, Job.status))


def _settled_query(task_ids: Sequence[int], *states: str, scouts_only: bool = False) -> Select[Any]:
    """(task id, state, jobs) of the settled states asked (all by default), along ix_jobs_settled."""
    query = select(Job.task_id, Job.status, func.count()).where(Job.task_id.in_(list(task_ids)), settled(*states))
    if scouts_only:
        query = query.where(Job.is_scout.is_(True))
    return query.group_by(Job.task_id, Job.status)


def _per_task(session: Session, task_ids: Sequence[int], query: Any) -> dict[int, dict[str, int]]:
    """{task id: {state: jobs}} from a query's (task id, state, jobs) rows; no query for no tasks."""
    out: dict[int, dict[str, int]] = {t: {} for t in task_ids}
    if not task_ids:
        return out
    for task_id, status, n in session.execute(query):
        out[task_id][status] = n
    return out


def live_counts(session: Session, task_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Starting and running jobs per task, counted through their live attempts."""
    return _per_task(session, task_ids, _live_query(task_ids))


def live_jobs_exist(task_id: Any) -> ColumnElement[bool]:
    """EXISTS: the task has a starting or running job (through the live attempts)."""
    return exists().where(Attempt.status.in_(_LIVE_ATTEMPT_STATES), Attempt.job_id == Job.id,
                          Job.task_id == task_id, Job.status.in_(LIVE_JOB_STATES))


def settled_counts(session: Session, task_ids: Sequence[int], *states: str,
                   scouts_only: bool = False) -> dict[int, dict[str, int]]:
    """Jobs per settled state of each task (ix_jobs_settled)."""
    return _per_task(session, task_ids, _settled_query(task_ids, *states, scouts_only=scouts_only))


def state_counts(session: Session, task_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Jobs per state of each task, states without jobs left out: the queued ones from the task's
    `n_queued` (kept by every move in and out of QUEUED, what the scheduler dispatches from), the
    live ones through their live attempts, the held and ended ones in ranges of ix_jobs_settled. A
    task with a million queued jobs costs a few rows, not a million.

    One statement, so one snapshot: on PostgreSQL (READ COMMITTED) each statement sees the commits
    made before it began, and three reads could count a job twice or not at all while the scheduler
    moves it (a `task watch` whose counts did not add up to the task's jobs)."""
    queued = (select(Task.id, literal_column("'queued'"), Task.n_queued)
              .where(Task.id.in_(list(task_ids)), Task.n_queued > 0))
    return _per_task(session, task_ids, union_all(_settled_query(task_ids), queued, _live_query(task_ids)))


# A task's queue, read for the dispatch and for the queue view alike: its fresh jobs from its cursor
# on, and its retried jobs, each at most n; `choose` takes the first n of the two by index and says
# where the cursor goes. Reads: one statement on PostgreSQL (a LATERAL join over the tasks, since a
# server round trip per task would cost more than the rest of the cycle); on SQLite, which has no
# LATERAL, one indexed query per task on the driver's cursor (in-process calls cost microseconds,
# SQLAlchemy's per-statement overhead ~100 µs each).
# PostgreSQL, prepared on each pooled connection (db/driver_reads.py): (task id, its cursor, its
# job count, then per candidate: job id, index, fresh); a task without candidates once, with NULLs.
CANDIDATES = DriverStatement(
    "SELECT p.tid, t.queue_from, t.n_jobs, h.id, h.\"index\", h.fresh "
    "FROM unnest(CAST($1 AS bigint[]), CAST($2 AS bigint[])) AS p(tid, n) JOIN tasks t ON t.id = p.tid "
    "LEFT JOIN LATERAL ("
    "(SELECT id, \"index\", true AS fresh FROM jobs WHERE task_id = p.tid AND \"index\" >= t.queue_from "
    "AND status = 'queued' AND attempts = 0 ORDER BY \"index\" LIMIT p.n) UNION ALL "
    f"(SELECT id, \"index\", false AS fresh FROM jobs WHERE task_id = p.tid AND {RETRIED_WHERE} "
    "ORDER BY \"index\" LIMIT p.n)) AS h ON true", ("bigint[]", "bigint[]"))
CURSORS_SQLITE = "SELECT id, queue_from, n_jobs FROM tasks WHERE id IN (SELECT value FROM json_each(?))"
CANDIDATES_SQLITE = (
    "SELECT id, \"index\", 1 FROM (SELECT id, \"index\" FROM jobs WHERE task_id = ?1 AND \"index\" >= ?2 "
    "AND status = 'queued' AND attempts = 0 ORDER BY \"index\" LIMIT ?3) UNION ALL "
    "SELECT id, \"index\", 0 FROM (SELECT id, \"index\" FROM jobs WHERE task_id = ?1 "
    f"AND {RETRIED_WHERE} ORDER BY \"index\" LIMIT ?3)"
)

@dataclass(frozen=True)
class Choice:
    """What one task's dispatch takes: its jobs (id, index) in dispatch order, and its cursor
    before and after."""

    jobs: list[tuple[int, int]]
    seen_from: int
    next_from: int

    @property
    def ids(self) -> list[int]:
        return [job_id for job_id, _ in self.jobs]


def choose(candidates: Sequence[tuple[int, int, bool]], n: int, seen_from: int, n_jobs: int) -> Choice:
    """The first n of a task's candidates (job id, index, fresh) by index, and where its cursor
    goes (see the module's docstring). `candidates`: at most n fresh ones from the cursor on, and
    at most n retried ones, each part in index order."""
    ordered = sorted(candidates, key=lambda c: c[1])
    taken = ordered[:n]
    fresh = [c for c in candidates if c[2]]
    n_fresh_taken = sum(1 for c in taken if c[2])
    if len(taken) < n and seen_from > 0:
        next_from = 0  # a queued fresh job below the cursor: read the task from its start next time
    elif n_fresh_taken < len(fresh):
        next_from = fresh[n_fresh_taken][1]  # the next fresh job seen, not taken
    elif fresh:
        next_from = fresh[-1][1] + 1  # past the last one taken
    else:
        next_from = max(seen_from, n_jobs)  # no fresh job from the cursor on
    return Choice([(c[0], c[1]) for c in taken], seen_from, next_from)


def queue_heads(session: Session, plan: Sequence[tuple[int, int]]) -> dict[int, Choice]:
    """The choice for each `(task id, n)` of the plan, read in the session's transaction."""
    if not plan:
        return {}
    found: dict[int, list[tuple[int, int, bool]]] = {t: [] for t, _ in plan}
    cursors: dict[int, tuple[int, int]] = {}
    connection = session.connection()
    if not is_sqlite(connection):
        rows = CANDIDATES.rows(connection.connection, connection.dialect,
                               ([t for t, _ in plan], [n for _, n in plan]))
        for task_id, queue_from, n_jobs, job_id, index, fresh in rows:
            cursors[task_id] = (queue_from, n_jobs)
            if job_id is not None:
                found[task_id].append((job_id, index, fresh))
    else:
        cursor = connection.connection.cursor()  # the session's connection: same transaction
        try:
            ids = "[" + ",".join(str(int(t)) for t, _ in plan) + "]"
            cursors = {t: (q, j) for t, q, j in cursor.execute(CURSORS_SQLITE, (ids,))}
            for task_id, n in plan:
                if task_id in cursors:
                    found[task_id] = [(i, x, bool(f)) for i, x, f in
                                      cursor.execute(CANDIDATES_SQLITE, (task_id, cursors[task_id][0], n))]
        finally:
            cursor.close()
    return {task_id: choose(found[task_id], n, *cursors[task_id]) for task_id, n in plan if task_id in cursors}


# The first n held jobs of a task, in id order (the queue view), for many tasks in one UNION ALL.
_HELD_HEAD = ('SELECT * FROM (SELECT task_id, id, "index" FROM jobs WHERE task_id = :t{i} '
              f"AND {SETTLED_WHERE} AND status = 'held' ORDER BY id LIMIT :n{{i}}) AS h{{i}}")
HEADS_BATCH = 200  # tasks per statement (SQLite allows 500 terms in a compound SELECT)


def first_jobs(session: Session, need: Mapping[int, int], status: str) -> dict[int, list[tuple[int, int]]]:
    """The first n (job id, index) of each task in `need` that are queued (in dispatch order) or
    held (in id order), as many as there are."""
    if status not in ("queued", "held"):
        raise ValueError(f"first_jobs reads queued or held jobs, not {status!r}")
    out: dict[int, list[tuple[int, int]]] = {task_id: [] for task_id in need}
    items = [(task_id, n) for task_id, n in need.items() if n > 0]
    if status == "queued":  # as the dispatch would take them
        out.update({task_id: c.jobs for task_id, c in queue_heads(session, items).items()})
        return out
    for start in range(0, len(items), HEADS_BATCH):
        chunk = items[start:start + HEADS_BATCH]
        params: dict[str, Any] = {}
        for i, (task_id, n) in enumerate(chunk):
            params[f"t{i}"], params[f"n{i}"] = task_id, n
        sql = " UNION ALL ".join(_HELD_HEAD.format(i=i) for i in range(len(chunk)))
        for task_id, job_id, index in session.execute(text(sql), params):
            out[task_id].append((job_id, index))
    return out


def queued_ahead(session: Session, task_id: int, index: int) -> int:
    """How many queued jobs of the task come before its job of this index in dispatch order."""
    fresh = select(func.count()).select_from(_JOBS).where(
        _JOBS.c.task_id == task_id, _JOBS.c.index >= select(_TASKS.c.queue_from).where(
            _TASKS.c.id == task_id).scalar_subquery(), _JOBS.c.index < index, FRESH)
    retried = select(func.count()).select_from(_JOBS).where(_JOBS.c.task_id == task_id, RETRIED,
                                                            _JOBS.c.index < index)
    return int(session.scalar(fresh) or 0) + int(session.scalar(retried) or 0)


def lowest_fresh(rows: Iterable[Any]) -> dict[int, int]:
    """Per task, the lowest index among rows (task_id, index, attempts) of jobs queued again that
    never ran: where that task's `queue_from` must go down to."""
    out: dict[int, int] = {}
    for task_id, index, attempts in rows:
        if attempts == 0 and index < out.get(task_id, index + 1):
            out[task_id] = index
    return out
