"""The usage history: what each user had running and queued, cycle after cycle, and how long the
jobs that started waited (table `usage_history`, migration 0011).

Why a table of its own: the fair-share usage is one decayed number per user and the metrics are
gauges of now; the dashboard's charts need the past. Written by the scheduler service only
(`Recorder`, fed by its loop), pruned by the daily retention run (`prune`), read by the Usage page
and `/api/usage/history` (`series`).

Compact by construction: a record is one row per user with something running, queued or started
since the record before, plus one row of totals (`user_id` NULL) written at every record, idle or
not; never a row per job. Its cost is independent of the queue's depth: running comes from the
live attempts (bounded by the slots), queued from the per-task counters, starts from the cycle
reports the loop already has.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Float, case, cast, delete, func, insert, literal, select, text, union_all
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestra.db import faults
from orchestra.db.bulk import one_of
from orchestra.db.engine import is_sqlite
from orchestra.db.models import Attempt, Job, Task, UsageHistory, User
from orchestra.states import LIVE_ATTEMPT

if TYPE_CHECKING:
    from orchestra.scheduler.cycle import CycleReport

log = logging.getLogger("orchestra.history")

DAY = 86400.0
PRUNE_BATCH = 10_000  # rows deleted per transaction by the retention run
OTHERS = "others"  # the series of every user outside the top N
LIVE = tuple(s.value for s in LIVE_ATTEMPT)
WORK_MEM = "64MB"  # PostgreSQL memory for the series query's aggregation (SET LOCAL)

Transaction = Callable[[], AbstractContextManager[Session]]


# ---------------------------------------------------------------------------------------- recording
def task_of(backend_name: str) -> int | None:
    """The task id in an attempt's backend name (`orc-[<installation>-]<task>-<index>-<attempt>`,
    orchestra/scheduler/cycle.py `backend_name`; a unit test holds the two together)."""
    parts = backend_name.rsplit("-", 3)
    try:
        return int(parts[1]) if len(parts) == 4 else None
    except ValueError:
        return None


@dataclass
class _Pending:
    """Starts since the last record: per task (owners are looked up once, at the record) and in total."""

    started: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    wait_sum: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    max_wait: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    total_started: int = 0
    total_wait: float = 0.0
    total_max: float = 0.0


class Recorder:
    """Accumulates the cycles' starts (`add`, every pass, no database) and writes one record per
    full cycle (`flush` in the caller's transaction, or `write` in one of its own).

    A report says which jobs were dispatched (`queued_at`: backend name -> the job's queued_at) and
    the waits of those the backend accepted (`waits`), but not which waits are whose. When every
    dispatch of a pass was accepted (the usual case) the split is exact: the acknowledgement time
    is recovered from the waits' sum, and each start's wait is that time minus its queued_at. When
    some launches were refused, each dispatch counts for accepted/dispatched of a start, with the
    same mean wait: the totals row stays exact, a user's share of that pass is an estimate.
    """

    def __init__(self) -> None:
        self._pending = _Pending()

    def add(self, report: CycleReport) -> None:
        waits = [max(0.0, w) for _, _, w in report.waits]
        if not waits or not report.queued_at:
            return
        p = self._pending
        p.total_started += len(waits)
        p.total_wait += sum(waits)
        p.total_max = max(p.total_max, max(waits))
        queued = list(report.queued_at.items())
        share = min(1.0, len(waits) / len(queued))
        if share == 1.0:  # all accepted: one acknowledgement time for the pass, recovered exactly
            acked = (sum(waits) + sum(q for _, q in queued)) / len(queued)
        else:  # refusals: the accepted ones' mean wait, spread over every dispatch
            acked = sum(waits) / len(waits) + sum(q for _, q in queued) / len(queued)
        for name, queued_at in queued:
            task_id = task_of(name)
            if task_id is None:
                continue
            wait = max(0.0, acked - queued_at)
            p.started[task_id] += share
            p.wait_sum[task_id] += share * wait
            p.max_wait[task_id] = max(p.max_wait[task_id], wait)

    @property
    def pending(self) -> bool:
        """Starts not recorded yet?"""
        return self._pending.total_started > 0

    def flush(self, session: Session, now: float) -> int:
        """Insert the record at `now` (one bulk insert) and start the next; returns the rows written."""
        pending, self._pending = self._pending, _Pending()
        try:
            return _write(session, now, pending)
        except BaseException:
            self._merge(pending)  # nothing was recorded: the next record carries these starts
            raise

    def write(self, transaction: Transaction, now: float) -> int | None:
        """`flush` in a transaction of its own; a database failure (an outage, a missing grant) is
        logged and skipped, never raised: the starts wait for the next record. None when skipped."""
        pending = self._pending
        try:
            with transaction() as session:
                return self.flush(session, now)
        except DBAPIError as exc:
            if self._pending is not pending:  # flushed, then the commit failed: keep what it held
                self._merge(pending)
            log.warning("usage history not recorded: %s", faults.describe(exc))
            return None

    def _merge(self, old: _Pending) -> None:
        new = self._pending
        for task_id, n in old.started.items():
            new.started[task_id] += n
            new.wait_sum[task_id] += old.wait_sum[task_id]
            new.max_wait[task_id] = max(new.max_wait[task_id], old.max_wait[task_id])
        new.total_started += old.total_started
        new.total_wait += old.total_wait
        new.total_max = max(new.total_max, old.total_max)


def _write(session: Session, now: float, p: _Pending) -> int:
    running = dict(session.execute(
        select(Task.owner_id, func.sum(Attempt.weight)).join(Job, Job.id == Attempt.job_id)
        .join(Task, Task.id == Job.task_id).where(Attempt.status.in_(LIVE)).group_by(Task.owner_id)).all())
    queued = dict(session.execute(
        select(Task.owner_id, func.sum(Task.n_queued)).where(Task.n_queued > 0).group_by(Task.owner_id)).all())
    owners = dict(session.execute(select(Task.id, Task.owner_id).where(one_of(session, Task.id, p.started))).all()) \
        if p.started else {}
    started: dict[int, float] = defaultdict(float)
    wait_sum: dict[int, float] = defaultdict(float)
    max_wait: dict[int, float] = defaultdict(float)
    for task_id, n in p.started.items():
        owner = owners.get(task_id)
        if owner is not None:  # a task deleted since it started: its starts stay in the totals only
            started[owner] += n
            wait_sum[owner] += p.wait_sum[task_id]
            max_wait[owner] = max(max_wait[owner], p.max_wait[task_id])
    rows: list[dict[str, Any]] = [
        {"at": now, "user_id": None, "running": float(sum(running.values())), "queued": int(sum(queued.values())),
         "started": p.total_started, "wait_seconds_sum": p.total_wait, "max_wait_seconds": p.total_max}]
    for user_id in sorted(set(running) | set(queued) | {u for u, n in started.items() if round(n)}):
        rows.append({"at": now, "user_id": user_id, "running": float(running.get(user_id) or 0.0),
                     "queued": int(queued.get(user_id) or 0), "started": int(round(started.get(user_id, 0.0))),
                     "wait_seconds_sum": wait_sum.get(user_id, 0.0), "max_wait_seconds": max_wait.get(user_id, 0.0)})
    session.execute(insert(UsageHistory), rows)
    return len(rows)


# ---------------------------------------------------------------------------------------- retention
def prune(transaction: Transaction, now: float, keep_days: float, batch: int = PRUNE_BATCH) -> int:
    """Remove the records older than `keep_days` (0: keep forever), `batch` rows per transaction,
    oldest first (the `at` index finds them); returns how many went."""
    if keep_days <= 0:
        return 0
    cutoff = now - keep_days * DAY
    removed = 0
    while True:
        with transaction() as session:
            oldest = select(UsageHistory.id).where(UsageHistory.at < cutoff).order_by(UsageHistory.at).limit(batch)
            n = session.execute(delete(UsageHistory).where(UsageHistory.id.in_(oldest.scalar_subquery()))).rowcount
        removed += n or 0
        if not n or n < batch:
            return removed


# Older records are thinned, so a 7- or 30-day chart reads a bounded number of them: records older
# than a day keep one per hour, older than a week one per 6 hours (AGE, WIDTH). Each kept record
# keeps its snapshot (running, queued) and takes over the starts and waits of those it replaces, so
# started and wait totals stay exact and a mean over records stays a fair estimate.
THIN = ((DAY, 3600), (7 * DAY, 6 * 3600))  # (older than, one record per this many seconds)
THIN_LOOKBACK = 3 * DAY  # each daily run thins this far back from its edge (a re-run changes nothing)


def _bucket_sql(session: Session, width: int, column: str = "at") -> str:
    """SQL text of `_bucket` (floor of column / width), for the thinning statement."""
    return (f"CAST({column} / {float(width)} AS INTEGER)" if is_sqlite(session.get_bind())
            else f"floor({column} / {float(width)})::bigint")


def thin(transaction: Transaction, now: float, older_than: float, width: int, lookback: float = THIN_LOOKBACK) -> int:
    """Keep one record per `width` seconds among those between `lookback` before the edge and the
    edge (`now - older_than`, rounded down to a whole `width`): the first record of each span, its
    rows carrying the span's starts, wait sums and longest wait. Returns the rows removed.
    Idempotent (a span thinned already has one record); records written meanwhile are newer."""
    hi = math.floor((now - older_than) / width) * width
    lo = hi - lookback
    with transaction() as session:
        last = session.scalar(select(func.max(UsageHistory.id)).where(UsageHistory.at >= lo, UsageHistory.at < hi))
        if last is None:
            return 0
        b = _bucket_sql(session, width)
        session.execute(text(f"""
            INSERT INTO usage_history (at, user_id, running, queued, started, wait_seconds_sum, max_wait_seconds)
            SELECT k.keep_at, h.user_id,
                   SUM(CASE WHEN h.at = k.keep_at THEN h.running ELSE 0 END),
                   SUM(CASE WHEN h.at = k.keep_at THEN h.queued ELSE 0 END),
                   SUM(h.started), SUM(h.wait_seconds_sum), MAX(h.max_wait_seconds)
            FROM usage_history h
            JOIN (SELECT {b} AS b, MIN(at) AS keep_at FROM usage_history
                  WHERE at >= :lo AND at < :hi AND user_id IS NULL AND id <= :last GROUP BY {b}) k
              ON {_bucket_sql(session, width, "h.at")} = k.b
            WHERE h.at >= :lo AND h.at < :hi AND h.id <= :last
            GROUP BY k.keep_at, h.user_id
            HAVING h.user_id IS NULL OR SUM(h.started) > 0
                OR SUM(CASE WHEN h.at = k.keep_at THEN h.running + h.queued ELSE 0 END) > 0"""),
            {"lo": lo, "hi": hi, "last": last})
        removed = session.execute(delete(UsageHistory).where(
            UsageHistory.at >= lo, UsageHistory.at < hi, UsageHistory.id <= last)).rowcount or 0
        added = session.scalar(select(func.count()).select_from(UsageHistory).where(UsageHistory.id > last,
                                                                                   UsageHistory.at < hi)) or 0
    return max(0, removed - added)


def tidy(transaction: Transaction, now: float, keep_days: float) -> int:
    """The daily retention run's part: prune what is older than `keep_days`, thin the rest."""
    removed = prune(transaction, now, keep_days)
    for older_than, width in THIN:
        thin(transaction, now, older_than, width)
    return removed


# ---------------------------------------------------------------------------------------- reading
@dataclass
class Point:
    """One bucket: each shown user's mean running slots over the bucket's records, and the mean
    queue wait of the jobs started in it (None: none started), overall and per shown user."""

    at: float  # the bucket's start
    running: dict[str, float]
    wait_seconds: float | None
    user_wait_seconds: dict[str, float | None]


@dataclass
class UserTotal:
    """One user over the whole window."""

    user: str
    mean_running: float  # slots in use, averaged over the window's records
    peak_running: float
    peak_queued: int
    started: int
    mean_wait_seconds: float | None
    max_wait_seconds: float | None


@dataclass
class Series:
    since_at: float
    until_at: float
    bucket_seconds: int
    users: list[str]  # the top users by usage in the window, then "others" when there are more
    points: list[Point]
    totals: list[UserTotal]  # every user active in the window, most usage first
    records: int  # records (cycles) in the window: 0 = no data yet


def bucket_width(since: float, until: float, buckets: int) -> int:
    """Whole seconds per bucket: about `buckets` of them between since and until."""
    return max(1, math.ceil((until - since) / max(1, buckets)))


def _bucket(session: Session, width: int) -> Any:
    """SQL: the bucket number of a record (buckets aligned on multiples of `width` since the epoch,
    so a page reloaded a minute later draws the same bars). PostgreSQL's CAST rounds; floor it."""
    ratio = UsageHistory.at / literal(float(width), Float)
    if is_sqlite(session.get_bind()):
        return cast(ratio, BigInteger)  # SQLite's CAST truncates: floor for positive times
    return cast(func.floor(ratio), BigInteger)


def series(session: Session, since: float, until: float, buckets: int = 120, top: int = 8) -> Series:
    """Per bucket, the running slots of the `top` users by usage in [since, until) and of the
    others, and the mean queue wait; per user, totals over the window.

    One statement: the window's rows (found through the `at` index) are grouped once by (bucket,
    user); the top users, the series (bucket, top user or others) and the per-user totals are
    aggregations of that small intermediate result. Its cost grows with the records in the window
    times the users active in them, not with jobs.
    """
    width = bucket_width(since, until, buckets)
    b = _bucket(session, width).label("b")
    h = UsageHistory
    per = (select(b, h.user_id.label("u"), func.sum(h.running).label("run"), func.max(h.running).label("peak"),
                  func.max(h.queued).label("peak_queued"), func.sum(h.started).label("st"),
                  func.sum(h.wait_seconds_sum).label("w"), func.max(h.max_wait_seconds).label("mx"),
                  func.count().label("n"))
           .where(h.at >= since, h.at < until).group_by(b, h.user_id).cte("per"))
    top_users = (select(per.c.u).where(per.c.u.is_not(None)).group_by(per.c.u)
                 .order_by(func.sum(per.c.run).desc(), func.sum(per.c.st).desc(), per.c.u).limit(top))
    group = case((per.c.u.is_(None), None), (per.c.u.in_(top_users.scalar_subquery()), per.c.u), else_=-1)
    by_bucket = (select(literal("b").label("kind"), per.c.b, group.label("g"), func.sum(per.c.run), func.max(per.c.peak),
                        func.max(per.c.peak_queued), func.sum(per.c.st), func.sum(per.c.w), func.max(per.c.mx),
                        func.sum(per.c.n))
                 .group_by(per.c.b, group))
    by_user = (select(literal("u").label("kind"), literal(None).label("b"), per.c.u, func.sum(per.c.run),
                      func.max(per.c.peak), func.max(per.c.peak_queued), func.sum(per.c.st), func.sum(per.c.w),
                      func.max(per.c.mx), func.sum(per.c.n))
               .where(per.c.u.is_not(None)).group_by(per.c.u))
    if not is_sqlite(session.get_bind()):
        # Room to hash the (bucket, user) groups in memory: PostgreSQL's default 4 MB sorts them on
        # disk (3x slower at 1,000 users over 30 days). For this transaction only.
        session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    rows = session.execute(union_all(by_bucket, by_user)).all()
    ids = {r[2] for r in rows if r[2] is not None and r[2] != -1}
    names = dict(session.execute(select(User.id, User.name).where(one_of(session, User.id, ids))).all()) if ids else {}
    return _assemble(rows, names, since, until, width, top)


def _assemble(rows: Iterable[Any], names: dict[int, str], since: float, until: float, width: int,
              top: int) -> Series:
    samples: dict[int, int] = {}  # records per bucket (the totals rows)
    overall: dict[int, tuple[int, float]] = {}  # bucket -> (started, wait sum)
    cells: dict[tuple[int, int], tuple[float, int, float]] = {}  # (bucket, user or -1) -> (run, started, wait)
    user_rows = []
    for kind, bucket, g, run, peak, peak_queued, st, w, mx, n in rows:
        # PostgreSQL sums integers as NUMERIC (Decimal): plain numbers from here on.
        run, peak, w, mx = (float(v or 0) for v in (run, peak, w, mx))
        peak_queued, st, n = (int(v or 0) for v in (peak_queued, st, n))
        if kind == "u":
            user_rows.append((g, run, peak, peak_queued, st, w, mx))
        elif g is None:
            samples[int(bucket)] = n
            overall[int(bucket)] = (st, w)
        else:
            cells[(int(bucket), int(g))] = (run, st, w)
    records = sum(samples.values())
    user_rows.sort(key=lambda r: (-r[1], -r[4], r[0]))
    shown = [g for g, *_ in user_rows[:top]]
    label = {g: names.get(g, f"user {g}") for g in shown}
    has_others = len(user_rows) > top
    users = [label[g] for g in shown] + ([OTHERS] if has_others else [])
    groups = shown + ([-1] if has_others else [])
    label[-1] = OTHERS
    points = []
    first, last = int(since // width), int(math.ceil(until / width)) - 1
    for bucket in range(first, last + 1):
        n = samples.get(bucket, 0)
        running = {label[g]: round(cells[(bucket, g)][0] / n, 3) if n and (bucket, g) in cells else 0.0
                   for g in groups}
        st, w = overall.get(bucket, (0, 0.0))
        user_wait = {}
        for g in groups:
            _, ust, uw = cells.get((bucket, g), (0.0, 0, 0.0))
            user_wait[label[g]] = round(uw / ust, 1) if ust else None
        points.append(Point(float(bucket * width), running, round(w / st, 1) if st else None, user_wait))
    totals = [UserTotal(names.get(g, f"user {g}"), round(run / records, 3) if records else 0.0, peak, peak_queued,
                        st, round(w / st, 1) if st else None, mx if st else None)
              for g, run, peak, peak_queued, st, w, mx in user_rows]
    return Series(since, until, width, users, points, totals, records)
