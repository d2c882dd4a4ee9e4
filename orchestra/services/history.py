"""The usage history: what each user had running and queued, cycle after cycle, and how long the
jobs that started waited (tables `usage_history` and `usage_rollup`, migration 0011).

Why a table of its own: the fair-share usage is one decayed number per user and the metrics are
gauges of now; the dashboard's charts need the past. Written by the scheduler service only
(`Recorder`, fed by its loop), pruned by the daily retention run (`tidy`), read by the Usage page
and `/api/usage/history` (`series`).

Why rollups: a chart of a week is 120 points, but a week of records is 2,000 records times the
active users (a million rows at a record a minute for 100 users), too many to aggregate at each
request. So each record is also added, in the same transaction, to one row per user and bucket at
a few widths (`LEVELS`: 5 minutes to 6 hours; an upsert per row and level, a few hundred rows per
record at most), and a chart reads the finest width that gives it at most `buckets` points: at
most ~120 rows per active user, whatever the window or the record interval. The rollups hold sums,
maxima and sample counts, so the numbers are those the records give (means of the records'
running slots, exact starts and waits). The raw records are kept two days (to check a rollup
against, `rebuild`), each width as long as a chart reads it, the coarsest `keep_history_days`.

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

from sqlalchemy import BigInteger, Float, and_, case, cast, delete, func, insert, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestra.db import faults
from orchestra.db.bulk import one_of
from orchestra.db.engine import is_sqlite
from orchestra.db.models import Attempt, Job, Task, UsageHistory, UsageRollup, User
from orchestra.states import LIVE_ATTEMPT

if TYPE_CHECKING:
    from orchestra.scheduler.cycle import CycleReport

log = logging.getLogger("orchestra.history")

DAY = 86400.0
PRUNE_BATCH = 10_000  # rows deleted per transaction by the retention run
OTHERS = "others"  # the series of every user outside the top N
LIVE = tuple(s.value for s in LIVE_ATTEMPT)
# The rollup widths (seconds), finest first, and how long each is kept (None: keep_history_days).
# A chart of `buckets` points reads the finest width with at most that many buckets in its window:
# 6 hours -> 5 min (72 points), 24 hours -> 15 min (96), 7 days -> 2 h (84), 30 days -> 6 h (120);
# the per-user totals of a window sum the coarsest buckets that fit in it (`cover`), whole days
# inside. Each finer width is kept a little longer than the longest window it serves; each is a
# multiple of the one before.
LEVELS: tuple[tuple[int, float | None], ...] = (
    (300, DAY), (900, 2 * DAY), (7200, 10 * DAY), (6 * 3600, None), (86400, None))
RAW_KEEP = 2 * DAY  # the raw records: for `rebuild` and a look at single cycles, not for charts

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
    roll_up(session, rows)
    return len(rows)


def roll_up(session: Session, rows: list[dict[str, Any]]) -> None:
    """Add the rows of one record (or several) to their buckets at every level: two upserts (the
    users' rows, the totals rows: each has its own unique index) of one row per level and user."""
    summed = cells(rows)
    users = [c for c in summed if c["user_id"] is not None]
    totals = [c for c in summed if c["user_id"] is None]
    for part, is_totals in ((users, False), (totals, True)):
        if part:
            session.execute(_upsert(session, is_totals), part)


def cells(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rollup rows (one per level, bucket and user) that history rows add up to."""
    summed: dict[tuple[int, float, int | None], dict[str, Any]] = {}
    for row in rows:
        for level, _ in LEVELS:
            key = (level, math.floor(row["at"] / level) * float(level), row["user_id"])
            cell = summed.get(key)
            if cell is None:
                summed[key] = {"level_seconds": level, "bucket_at": key[1], "user_id": row["user_id"], "samples": 1,
                               "running_sum": row["running"], "running_max": row["running"],
                               "queued_max": row["queued"], "started": row["started"],
                               "wait_sum": row["wait_seconds_sum"], "wait_max": row["max_wait_seconds"]}
            else:  # several records in one call (tests, a bulk load): summed here as the upsert would
                cell["samples"] += 1
                cell["running_sum"] += row["running"]
                cell["running_max"] = max(cell["running_max"], row["running"])
                cell["queued_max"] = max(cell["queued_max"], row["queued"])
                cell["started"] += row["started"]
                cell["wait_sum"] += row["wait_seconds_sum"]
                cell["wait_max"] = max(cell["wait_max"], row["max_wait_seconds"])
    return list(summed.values())


def _upsert(session: Session, totals: bool) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE adding a cell to its stored bucket (SQLite >= 3.24 and
    PostgreSQL both have it; only the statement's class differs)."""
    ins = (sqlite_insert if is_sqlite(session.get_bind()) else pg_insert)(UsageRollup)
    old, new = UsageRollup.__table__.c, ins.excluded

    def greater(a: Any, b: Any) -> Any:  # max(a, b) is an aggregate on PostgreSQL, GREATEST absent on SQLite
        return case((b > a, b), else_=a)

    update = {"samples": old.samples + new.samples, "running_sum": old.running_sum + new.running_sum,
              "running_max": greater(old.running_max, new.running_max),
              "queued_max": greater(old.queued_max, new.queued_max), "started": old.started + new.started,
              "wait_sum": old.wait_sum + new.wait_sum, "wait_max": greater(old.wait_max, new.wait_max)}
    if totals:
        return ins.on_conflict_do_update(index_elements=["level_seconds", "bucket_at"],
                                         index_where=UsageRollup.user_id.is_(None), set_=update)
    return ins.on_conflict_do_update(index_elements=["level_seconds", "bucket_at", "user_id"], set_=update)


def rebuild(session: Session, since: float = 0.0) -> int:
    """Recompute the rollups of every bucket from `since` (rounded down to each level's bucket)
    from the raw records: what the recorder's upserts add up to, in one statement per level.
    For a bulk load (scripts/bench_web.py) and as the reference the tests compare the upserts with;
    right only while the raw records of those buckets are all still there (`RAW_KEEP`)."""
    h, r = UsageHistory, UsageRollup
    written = 0
    for level, _ in LEVELS:
        lo = math.floor(since / level) * float(level)
        session.execute(delete(r).where(r.level_seconds == level, r.bucket_at >= lo))
        start = (_bucket(session, level, h.at) * level).label("bucket_at")
        query = (select(literal(level).label("level_seconds"), start, h.user_id, func.count(), func.sum(h.running),
                        func.max(h.running), func.max(h.queued), func.sum(h.started), func.sum(h.wait_seconds_sum),
                        func.max(h.max_wait_seconds))
                 .where(h.at >= lo).group_by(start, h.user_id))
        written += session.execute(insert(r).from_select(
            ["level_seconds", "bucket_at", "user_id", "samples", "running_sum", "running_max", "queued_max",
             "started", "wait_sum", "wait_max"], query)).rowcount or 0
    return written


# ---------------------------------------------------------------------------------------- retention
def _delete_older(transaction: Transaction, table: Any, where: list[Any], at: Any, cutoff: float, batch: int) -> int:
    """Delete the rows of `table` matching `where` with `at` < cutoff, `batch` per transaction,
    oldest first (found through the index that starts with those columns)."""
    removed = 0
    while True:
        with transaction() as session:
            oldest = select(table.id).where(*where, at < cutoff).order_by(at).limit(batch)
            n = session.execute(delete(table).where(table.id.in_(oldest.scalar_subquery()))).rowcount
        removed += n or 0
        if not n or n < batch:
            return removed


def horizons(keep_days: float) -> tuple[float, dict[int, float]]:
    """How long (seconds) the raw records and each rollup level are kept with `keep_days`
    (0: the coarsest level forever, math.inf): what `prune` leaves."""
    horizon = keep_days * DAY if keep_days > 0 else math.inf
    return min(RAW_KEEP, horizon), {level: min(horizon, math.inf if keep is None else keep) for level, keep in LEVELS}


def prune(transaction: Transaction, now: float, keep_days: float, batch: int = PRUNE_BATCH) -> int:
    """Remove the raw records older than `RAW_KEEP`, the rollup buckets of each level that ended
    longer ago than that level is kept, and everything older than `keep_days` (0: the coarsest
    rollups are kept forever), `batch` rows per transaction; returns how many rows went."""
    raw, levels = horizons(keep_days)
    removed = _delete_older(transaction, UsageHistory, [], UsageHistory.at, now - raw, batch)
    for level, kept in levels.items():
        if kept < math.inf:  # a bucket goes once it ended before the cutoff
            removed += _delete_older(transaction, UsageRollup, [UsageRollup.level_seconds == level],
                                     UsageRollup.bucket_at, now - kept - level, batch)
    return removed


def tidy(transaction: Transaction, now: float, keep_days: float) -> int:
    """The daily retention run's part (orchestra/services/retention.py): `prune`."""
    return prune(transaction, now, keep_days)


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
    since_at: float  # the start of the first bucket (the window's start rounded down to a bucket)
    until_at: float
    bucket_seconds: int
    users: list[str]  # the top users by usage in the window, then "others" when there are more
    points: list[Point]
    totals: list[UserTotal]  # every user active in the window, most usage first
    records: int  # records (cycles) in the window: 0 = no data yet


def level_for(since: float, until: float, buckets: int) -> int:
    """The rollup width a window of [since, until) reads: the finest with at most `buckets`
    buckets in it (the coarsest for longer windows). It is also the chart's bucket width."""
    for level, _ in LEVELS:
        if (until - since) / level <= buckets:
            return level
    return LEVELS[-1][0]


def _bucket(session: Session, width: int, at: Any = UsageHistory.at) -> Any:
    """SQL: the bucket number of a time (buckets aligned on multiples of `width` since the epoch,
    so a page reloaded a minute later draws the same bars). PostgreSQL's CAST rounds; floor it."""
    ratio = at / literal(float(width), Float)
    if is_sqlite(session.get_bind()):
        return cast(ratio, BigInteger)  # SQLite's CAST truncates: floor for positive times
    return cast(func.floor(ratio), BigInteger)


def cover(lo: float, hi: float, width: int) -> list[tuple[int, float, float]]:
    """The fewest rollup buckets that tile [lo, hi) (lo a multiple of `width`; hi rounded up to
    one): (level, from, to) ranges, `width` buckets at the ends up to a whole coarser bucket, then
    coarser ones inwards. A month's per-user totals read ~40 rows per user instead of 120."""
    chain = [level for level, _ in LEVELS if level >= width]  # each a multiple of the one before
    a, b = lo, math.ceil(hi / width) * float(width)
    ranges = []
    for level, coarser in zip(chain, chain[1:]):
        a2, b2 = math.ceil(a / coarser) * float(coarser), math.floor(b / coarser) * float(coarser)
        if a2 >= b2:
            break
        ranges += [(level, x, y) for x, y in ((a, a2), (b2, b)) if x < y]
        a, b, width = a2, b2, coarser
    return ranges + [(width, a, b)]


def series(session: Session, since: float, until: float, buckets: int = 120, top: int = 8,
           hold: float = 0.0) -> Series:
    """Per bucket, the running slots of the `top` users by usage in the window and of the others,
    and the mean queue wait; per user, totals over the window. The window is [since, until) with
    since rounded down to a whole bucket of the level read (`level_for`).

    Two statements on the (level, bucket, user) index, neither reading every (bucket, user) cell:
    the per-user totals (and the top users) sum the fewest buckets that tile the window (`cover`);
    the chart reads the totals rows and the top users' rows of its level, and "others" is the
    totals minus the top users (so the stack adds up to the total). The cost grows with the users
    active in the window (~40 rows each), not with the record interval, the window or the jobs.

    `hold` (the scheduler's interval): a bucket without a record within `hold` seconds of one that
    has records draws that bucket's slots (records can be further apart than a bucket is wide; a
    snapshot holds until the next one) instead of a dip to zero; its waits stay empty.
    """
    width = level_for(since, until, buckets)
    lo = math.floor(since / width) * float(width)
    r = UsageRollup
    spans = or_(*[and_(r.level_seconds == level, r.bucket_at >= a, r.bucket_at < b)
                  for level, a, b in cover(lo, until, width)])
    per_user = session.execute(
        select(r.user_id, func.sum(r.running_sum), func.max(r.running_max), func.max(r.queued_max),
               func.sum(r.started), func.sum(r.wait_sum), func.max(r.wait_max), func.sum(r.samples))
        .where(spans).group_by(r.user_id)).all()
    # PostgreSQL sums integers as NUMERIC (Decimal): plain numbers from here on.
    users = [(int(u), float(run or 0), float(peak or 0), int(q or 0), int(st or 0), float(w or 0), float(mx or 0))
             for u, run, peak, q, st, w, mx, _ in per_user if u is not None]
    records = sum(int(n or 0) for u, *_, n in per_user if u is None)
    users.sort(key=lambda t: (-t[1], -t[4], t[0]))
    shown = [t[0] for t in users[:top]]
    wanted = r.user_id.is_(None) | r.user_id.in_(shown) if shown else r.user_id.is_(None)
    cells = session.execute(
        select(r.bucket_at, r.user_id, r.running_sum, r.started, r.wait_sum, r.samples)
        .where(r.level_seconds == width, r.bucket_at >= lo, r.bucket_at < until, wanted)).all()
    ids = {t[0] for t in users}
    names = dict(session.execute(select(User.id, User.name).where(one_of(session, User.id, ids))).all()) if ids else {}
    totals = [UserTotal(names.get(u, f"user {u}"), round(run / records, 3) if records else 0.0, peak, q, st,
                        round(w / st, 1) if st else None, mx if st else None)
              for u, run, peak, q, st, w, mx in users]
    label = {u: names.get(u, f"user {u}") for u in shown}
    has_others = len(users) > top
    points = _points(cells, label, shown + ([OTHERS_ID] if has_others else []), lo, until, width, hold)
    return Series(lo, until, width, [label[u] for u in shown] + ([OTHERS] if has_others else []), points,
                  totals, records)


OTHERS_ID = -1  # the "others" group among user ids


def _points(cells: Iterable[Any], label: dict[int, str], groups: list[int], since: float, until: float,
            width: int, hold: float) -> list[Point]:
    """The chart's points from the cells (bucket, user or None for the totals, running sum,
    started, wait sum, samples): means over each bucket's records; the others are the totals
    minus the shown users."""
    label = {**label, OTHERS_ID: OTHERS}
    samples: dict[int, int] = {}  # records per bucket (the totals rows)
    overall: dict[int, tuple[int, float]] = {}  # bucket -> (started, wait sum)
    found: dict[tuple[int, int], tuple[float, int, float]] = {}  # (bucket, user or -1) -> (run, started, wait)
    for start, u, run, st, w, n in cells:
        bucket = round(float(start) / width)
        if u is None:
            samples[bucket] = int(n)
            overall[bucket] = (int(st), float(w))
            found[(bucket, OTHERS_ID)] = (float(run), int(st), float(w))
        else:
            found[(bucket, int(u))] = (float(run), int(st), float(w))
    for (bucket, u), (run, st, w) in list(found.items()):  # the others: what the shown users leave of the totals
        if u != OTHERS_ID:
            orun, ost, ow = found[(bucket, OTHERS_ID)] if (bucket, OTHERS_ID) in found else (0.0, 0, 0.0)
            found[(bucket, OTHERS_ID)] = (orun - run, ost - st, ow - w)
    points = []
    held: tuple[int, dict[str, float]] | None = None  # the last bucket with records, and its slots
    for bucket in range(round(since / width), math.ceil(until / width)):
        n = samples.get(bucket, 0)
        if n:
            running = {label[g]: max(0.0, round(found[(bucket, g)][0] / n, 3)) if (bucket, g) in found else 0.0
                       for g in groups}
            held = (bucket, running)
        elif held is not None and (bucket - held[0]) * width <= hold:
            running = dict(held[1])
        else:
            running = {label[g]: 0.0 for g in groups}
        st, w = overall.get(bucket, (0, 0.0))
        user_wait = {}
        for g in groups:
            _, ust, uw = found.get((bucket, g), (0.0, 0, 0.0))
            user_wait[label[g]] = round(max(0.0, uw) / ust, 1) if ust > 0 else None
        points.append(Point(float(bucket * width), running, round(w / st, 1) if st else None, user_wait))
    return points
