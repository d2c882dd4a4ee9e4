"""The queue as the scheduler sees it: what is pending, in which order it would start, and why it waits.

`policy_input` is THE function that turns the database into the fair-share policy's input; the
scheduler's fill step and `maestro queue` / `maestro usage` / `maestro job why` all call it, so
what the CLI explains is what the next cycle decides.

Granularity. A pending *task* is shown as one row per group of its pending jobs (its queued jobs;
its held jobs; or, before expansion, its whole job count), with the position of the group's head.
Showing every job would cost a row per job (100,000 for a big task) for no information: a task's
queued jobs start in job-id order (the scheduler takes the head of each task's queue), so the
head's position says where the task stands. `--jobs` expands the groups into per-job rows, up to
a limit, each with its own position.

Position. For each queue: the order in which `fairshare.allocate` would hand out that queue's
slots if they became free one by one (and no other queue had a free slot): position 1 is the job
that takes the next slot freed in that queue. It is computed exactly, with allocate's own ranking
and arithmetic (`order_in_queue`), never by simulating job by job. Caps count: a job beyond its
owner's remaining room has no position (it waits for the cap, not for a slot). When several
queues have free slots in one cycle, allocate is greedy across queues (a grant in one queue
raises the user's key in the others), so positions are per queue; "starts at the next cycle" is
taken from allocate itself, run on the real free slots.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict, namedtuple
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestra import fairshare
from orchestra.accounts import effective_shares
from orchestra.config import FairShareConfig, Settings
from orchestra.db.driver_reads import DriverRead
from orchestra.db.engine import is_sqlite
from orchestra.db.job_lookup import first_jobs, queued_ahead, settled_counts
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.services.validation import known_job_id
from orchestra.errors import NotFound
from orchestra.services import dependencies
from orchestra.services.context import Context
from orchestra.states import AttemptStatus, JobStatus, TaskStatus, scout_verdict, scouts_needed

TASKS, USERS, JOBS, ATTEMPTS = Task.__table__, User.__table__, Job.__table__, Attempt.__table__
DISPATCHABLE = (TaskStatus.SCOUTING.value, TaskStatus.RUNNING.value)
LIVE = (AttemptStatus.STARTING.value, AttemptStatus.RUNNING.value)


# ---------------------------------------------------------------------------------------- the policy input
@dataclass(frozen=True)
class PolicyView:
    """One cycle's policy input and what it was built from.

    `inp` task arrays are index-aligned with `tasks`, user arrays with `owner_ids`, queue arrays
    with `queues` (every configured (cluster, queue), in configuration order).
    """

    inp: fairshare.PolicyInput
    tasks: list[Any]  # rows: id, owner_id, cluster, queue, n_queued, priority, created_at, status
    queues: list[tuple[str, str]]
    free: np.ndarray  # int64 [Q] free slots per queue (slots - live attempts), never negative
    slots: np.ndarray  # int64 [Q]
    busy: np.ndarray  # int64 [Q] live attempts per queue
    owner_ids: list[int]
    user_running: Counter[int] = field(default_factory=Counter)  # live attempts of every user, by user id
    user_charge: dict[int, float] = field(default_factory=dict)  # their charge per second, by user id
    unconfigured: list[Any] = field(default_factory=list)  # tasks with queued jobs in a queue not configured
    holds: dict[tuple[str, str], Any] = field(default_factory=dict)  # scheduler.holds.HoldState by (cluster, queue)
    # What dispatch needs of each task besides, read by the same statement (issue 18: the
    # scheduler's dispatch read them again, a server round trip per pass), by task id.
    dispatch: dict[int, DispatchInfo] = field(default_factory=dict)


class DispatchInfo(NamedTuple):
    """What the scheduler's dispatch needs of a task (`PolicyView.dispatch`)."""

    id: int
    name: str
    cluster: str
    queue: str
    image: str
    max_time: float | None
    user: str  # its owner's name


class ActiveTask(NamedTuple):
    """A task the policy may give slots to (`PolicyView.tasks`)."""

    id: int
    owner_id: int
    cluster: str
    queue: str
    n_queued: int
    priority: int
    created_at: float
    status: str


class _Owner(NamedTuple):
    id: int
    name: str
    share: float
    max_running: int | None
    usage: float
    usage_at: float | None


def queue_charge(settings: Settings, cluster: str, queue: str) -> float:
    """Usage charged per second by one job of this queue: cpu * cpu_weight + gpu * gpu_weight."""
    q = settings.clusters[cluster].queues[queue]
    fs = settings.fairshare
    return q.cpu * fs.cpu_weight + q.gpu * fs.gpu_weight


# Built once (issue 18): static statements, so a call neither builds nor keys them again.
# The active tasks with their owners' fair-share columns (one read for both).
_ACTIVE_TASKS = (
    select(TASKS.c.id, TASKS.c.owner_id, TASKS.c.cluster, TASKS.c.queue, TASKS.c.n_queued, TASKS.c.priority,
           TASKS.c.created_at, TASKS.c.status, USERS.c.name, USERS.c.share, USERS.c.max_running, USERS.c.usage,
           USERS.c.usage_at, TASKS.c.name.label("task_name"), TASKS.c.image, TASKS.c.max_time)
    .join(USERS, USERS.c.id == TASKS.c.owner_id)
    .where(TASKS.c.status.in_(DISPATCHABLE), TASKS.c.n_queued > 0, TASKS.c.request.is_(None))
    .order_by(TASKS.c.id)
)


# One row of `_ACTIVE_TASKS`, by its columns' names there: an ActiveTask's, then its owner's
# (`_Owner`, from `name`) and what dispatch needs of it.
_ActiveRow = namedtuple("_ActiveRow", ActiveTask._fields + (
    "name", "share", "max_running", "usage", "usage_at", "task_name", "image", "max_time"))


# Read through the driver (issue 18): every pass of the scheduler makes this read; on PostgreSQL a
# prepared statement of the connection, whose planning cost the server ~0.4 ms a pass (EXPLAIN:
# 0.39 ms planning, 0.04 ms execution) with the SQLAlchemy execution's own ~0.1 ms on top.
_ACTIVE_READS = {sqlite: DriverRead(_ACTIVE_TASKS, sqlite) for sqlite in (True, False)}
_RUNNING = (
    select(TASKS.c.cluster, TASKS.c.queue, TASKS.c.owner_id, func.count())
    .join(JOBS, JOBS.c.task_id == TASKS.c.id).join(ATTEMPTS, ATTEMPTS.c.job_id == JOBS.c.id)
    .where(ATTEMPTS.c.status.in_(LIVE))
    .group_by(TASKS.c.cluster, TASKS.c.queue, TASKS.c.owner_id)
)


def policy_input(session: Session, settings: Settings, now: float, *,
                 running: Sequence[tuple[str, str, int, int]] | None = None,
                 held: dict[tuple[str, str], Any] | None = None) -> PolicyView:
    """The fair-share policy's input for a cycle at `now`, read from the database.

    Tasks: SCOUTING or RUNNING, with queued jobs, no pending kill/delete request, in a configured
    queue. Users: the owners of those tasks, with their usage decayed to `now`, share, live jobs
    (all queues) and their charge, and cap (User.max_running, else scheduler.max_running_per_user).
    Queues: free = slots - live attempts; a held queue (scheduler/holds.py) has none until its
    backoff runs out, then at most one (the probe). Reads the live attempts, the active tasks and
    their owners, and the holds: nothing per queued job.

    The scheduler's short pass (issue 18) passes what it already knows instead of reading it
    again: `running`, the live attempts as (cluster, queue, owner id, count) rows (what it
    surveyed, minus what it just recorded as ended), and `held`, the holds it keeps (it is their
    only writer). Everything else, and every other caller, reads the database: the same
    function builds the same input either way.
    """
    from orchestra.scheduler import holds as queue_holds

    connection = session.connection()
    rows = [_ActiveRow(*r) for r in _ACTIVE_READS[is_sqlite(connection)].rows(connection.connection, connection.dialect)]
    tasks = [ActiveTask(*r[:8]) for r in rows]
    queues = [(c.name, q.name) for c in settings.clusters.values() for q in c.queues.values()]
    queue_index = {key: i for i, key in enumerate(queues)}
    if running is None:
        running = session.execute(_RUNNING).all()
    busy = np.zeros(len(queues), dtype=np.int64)
    user_running: Counter[int] = Counter()
    user_charge: dict[int, float] = defaultdict(float)
    for cluster, queue, owner, n in running:
        if (cluster, queue) in queue_index:
            busy[queue_index[(cluster, queue)]] += n
            user_charge[owner] += n * queue_charge(settings, cluster, queue)
        user_running[owner] += n
    slots = np.array([settings.clusters[c].queues[q].slots for c, q in queues], dtype=np.int64)
    free = np.maximum(0, slots - busy)
    if held is None:
        held = queue_holds.read(session)
    for key, hold in held.items():
        if key in queue_index:
            q = queue_index[key]
            free[q] = min(int(free[q]), 1) if hold.probing(now) else 0
    unconfigured = [t for t in tasks if (t.cluster, t.queue) not in queue_index]
    tasks = [t for t in tasks if (t.cluster, t.queue) in queue_index]
    owner_ids = sorted({t.owner_id for t in tasks})
    users = {r.owner_id: _Owner(r.owner_id, *r[8:13]) for r in rows}
    user_index = {uid: i for i, uid in enumerate(owner_ids)}
    fs = settings.fairshare
    default_cap = settings.scheduler.max_running_per_user
    inp = fairshare.PolicyInput(
        now=now,
        user_usage=fairshare.decayed([users[u].usage for u in owner_ids], [users[u].usage_at for u in owner_ids],
                                     now, fs),
        user_share=effective_shares([users[u].name for u in owner_ids],
                                    np.array([users[u].share for u in owner_ids], dtype=float), settings.accounts),
        user_running=np.array([user_running[u] for u in owner_ids], dtype=np.int64),
        user_cap=np.array([users[u].max_running if users[u].max_running is not None else default_cap
                           for u in owner_ids], dtype=np.int64),
        task_user=np.array([user_index[t.owner_id] for t in tasks], dtype=np.int64),
        task_queue=np.array([queue_index[(t.cluster, t.queue)] for t in tasks], dtype=np.int64),
        task_queued=np.array([t.n_queued for t in tasks], dtype=np.int64),
        task_priority=np.array([t.priority for t in tasks], dtype=np.int64),
        task_created=np.array([t.created_at for t in tasks], dtype=float),
        task_scouting=np.array([t.status == TaskStatus.SCOUTING for t in tasks], dtype=bool),
        queue_free=free,
        queue_charge=np.array([queue_charge(settings, c, q) for c, q in queues], dtype=float),
        user_running_charge=np.array([user_charge.get(u, 0.0) for u in owner_ids], dtype=float),
    )
    dispatch = {r.id: DispatchInfo(r.id, r.task_name, r.cluster, r.queue, r.image, r.max_time, r.name) for r in rows}
    return PolicyView(inp, tasks, queues, free, slots, busy, owner_ids, user_running, user_charge, unconfigured, held,
                      dispatch)


# ---------------------------------------------------------------------------------------- order (pure)
class QueueOrder:
    """The order in which `fairshare.allocate` hands out one queue's slots, one free slot at a time.

    allocate pops users by (scouting first, key = eff/share, user index), grants the user's best
    task in the queue one slot and raises the key by step = tau * charge / share. So each user's
    grants form a sequence with known keys (`np.add.accumulate`: the very additions allocate
    makes), and allocate's order is the merge of those sequences by (flag, key, user). The
    position of a user's m-th grant is m + 1 plus, for every other user, the count of its grants
    that sort before it: one binary search per user. Exact, including ties.
    """

    def __init__(self, inp: fairshare.PolicyInput, cfg: FairShareConfig, queue: int) -> None:
        n_users = len(inp.user_usage)
        rank = fairshare.ranking(inp, cfg)  # allocate's own ranking and arithmetic
        task_user, room, key, step, scout = rank.task_user, rank.room, rank.key, rank.step, rank.scout
        task_queue = np.asarray(inp.task_queue, dtype=np.int64)
        queued = np.maximum(np.asarray(inp.task_queued, dtype=np.int64), 0)

        live = np.flatnonzero((task_queue == queue) & (queued > 0) & (room[task_user] > 0))
        order = rank.tasks_in_order(live)
        # task -> index of its first grant in its user's sequence (-1: none)
        self.offset = np.full(len(task_user), -1, dtype=np.int64)
        self.keys: dict[int, np.ndarray] = {}  # user -> key before each of its grants
        self.user_tasks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # user -> (its tasks in order, offsets)
        self.n_scout: dict[int, int] = {}  # user -> how many of its grants are scouting (they come first)
        # `order` is grouped by user (ascending): each user's segment at once, sums over all
        # segments in one pass (a scan of every task per user would be users x tasks steps).
        seg_user = task_user[order]
        bounds = np.flatnonzero(np.r_[True, seg_user[1:] != seg_user[:-1]]) if order.size else order
        ends = np.r_[bounds[1:], order.size].astype(np.int64)
        lefts = queued[order]
        before = np.cumsum(lefts) - lefts  # queued jobs of the earlier tasks in `order`
        starts = before - np.repeat(before[bounds], ends - bounds)  # ... of the same user
        self.offset[order] = starts
        totals = np.add.reduceat(lefts, bounds) if order.size else lefts
        scouting = np.add.reduceat(np.where(scout[order], lefts, 0), bounds) if order.size else lefts
        for u, b, e, total, n_scouting in zip(seg_user[bounds].tolist(), bounds.tolist(), ends.tolist(),
                                              totals.tolist(), scouting.tolist()):
            self.user_tasks[u] = (order[b:e], starts[b:e])
            n = min(total, int(room[u]))
            keys = np.full(n, float(step[order[b]]), dtype=np.float64)
            if n:
                keys[0] = float(key[u])
                keys = np.add.accumulate(keys)
            self.keys[u] = keys
            self.n_scout[u] = min(n, n_scouting)
        self.n_users = n_users

    def first(self, n: int) -> list[tuple[int, int]]:
        """The first n grants of this queue, in order, as (task index, k-th queued job of that task).

        A grant among the first n is among its user's first n: merge those (at most U * n entries)."""
        users, ms, flags, keys = [], [], [], []
        for u, k in self.keys.items():
            m = min(n, k.size)
            users.append(np.full(m, u, dtype=np.int64))
            ms.append(np.arange(m, dtype=np.int64))
            flags.append(np.arange(m) >= self.n_scout[u])
            keys.append(k[:m])
        if not users:
            return []
        u_all, m_all = np.concatenate(users), np.concatenate(ms)
        order = np.lexsort((m_all, u_all, np.concatenate(keys), np.concatenate(flags)))[:n]
        out = []
        for u, m in zip(u_all[order].tolist(), m_all[order].tolist()):
            tasks, starts = self.user_tasks[u]
            j = int(np.searchsorted(starts, m, "right")) - 1
            out.append((int(tasks[j]), m - int(starts[j])))
        return out

    def positions(self, users: Sequence[int], ms: Sequence[int]) -> np.ndarray:
        """1-based positions of the grants (user, m-th of that user in this queue); 0 = none (cap)."""
        qu = np.asarray(users, dtype=np.int64)
        qm = np.asarray(ms, dtype=np.int64)
        out = np.zeros(qu.size, dtype=np.int64)
        if qu.size == 0:
            return out
        valid = np.array([u in self.keys and 0 <= m < self.keys[u].size for u, m in zip(qu.tolist(), qm.tolist())],
                         dtype=bool)
        if not valid.any():
            return out
        qu, qm = qu[valid], qm[valid]
        qk = np.array([self.keys[u][m] for u, m in zip(qu.tolist(), qm.tolist())], dtype=np.float64)
        qflag = np.array([m >= self.n_scout[u] for u, m in zip(qu.tolist(), qm.tolist())], dtype=bool)
        before = qm.copy()  # the user's own earlier grants
        by_user = np.argsort(qu, kind="stable")
        cuts = np.flatnonzero(np.r_[True, qu[by_user][1:] != qu[by_user][:-1]])
        # user -> the queries that are its own grants (counted above as qm, not below)
        own = {int(qu[by_user[b]]): by_user[b:e] for b, e in zip(cuts.tolist(), [*cuts[1:].tolist(), qu.size])}
        scouting_queries = bool((~qflag).any())  # none: the scouting grants of every user come first
        for v, keys in self.keys.items():
            s = self.n_scout[v]
            lower = v < qu  # a tie on (flag, key) goes to the lower user index
            if s < keys.size:  # v's unscouted grants come after every scouting query
                second = keys[s:]
                count = np.searchsorted(second, qk, "left")
                count = np.where(lower, np.searchsorted(second, qk, "right"), count) + s
            else:
                count = np.full(qk.size, s, dtype=np.int64)
            if scouting_queries:
                if s:
                    first = keys[:s]
                    count0 = np.where(lower, np.searchsorted(first, qk, "right"), np.searchsorted(first, qk, "left"))
                else:
                    count0 = 0
                count = np.where(qflag, count, count0)
            mine = own.get(v)
            if mine is not None:
                count[mine] = 0
            before += count
        out[valid] = before + 1
        return out


# ---------------------------------------------------------------------------------------- pending work
@dataclass(frozen=True)
class PendingTask:
    id: int
    name: str
    owner_id: int
    owner: str
    cluster: str
    queue: str
    status: str
    request: str | None
    n_jobs: int
    n_queued: int
    n_scouts: int


def pending_tasks(session: Session, owner: int | None = None, task_id: int | None = None) -> list[PendingTask]:
    """Tasks that may have pending (held or queued) jobs: active ones, and those being killed/deleted."""
    query = (
        select(Task.id, Task.name, Task.owner_id, User.name, Task.cluster, Task.queue, Task.status, Task.request,
               Task.n_jobs, Task.n_queued, Task.n_scouts)
        .join(User, User.id == Task.owner_id)
        .where(Task.status.in_([TaskStatus.REGISTERED.value, *DISPATCHABLE]) | Task.request.is_not(None))
        .order_by(Task.id)
    )
    if owner is not None:
        query = query.where(Task.owner_id == owner)
    if task_id is not None:
        query = query.where(Task.id == task_id)
    return [PendingTask(*row) for row in session.execute(query)]


def held_counts(session: Session, task_ids: Sequence[int]) -> dict[int, int]:
    """Held jobs per task (index range scans of ix_jobs_settled)."""
    counts = settled_counts(session, task_ids, JobStatus.HELD.value)
    return {t: c[JobStatus.HELD.value] for t, c in counts.items() if c}


def scout_progress(session: Session, task_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(succeeded, failed or killed) scouts per task."""
    if not task_ids:
        return {}
    ended = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.KILLED.value)
    counts = settled_counts(session, task_ids, *ended, scouts_only=True)
    return {t: (c.get(JobStatus.SUCCEEDED.value, 0), c.get(JobStatus.FAILED.value, 0) + c.get(JobStatus.KILLED.value, 0))
            for t, c in counts.items()}


def pending_by_user(session: Session) -> dict[int, tuple[int, int]]:
    """(queued, held) jobs per user id: queued = waiting for a slot; held = behind scouts or not expanded yet."""
    out: dict[int, list[int]] = {}
    tasks = pending_tasks(session)
    held = held_counts(session, [t.id for t in tasks if t.status == TaskStatus.SCOUTING and t.request is None])
    for t in tasks:
        entry = out.setdefault(t.owner_id, [0, 0])
        if t.request is not None:
            continue
        if t.status == TaskStatus.REGISTERED:
            entry[1] += t.n_jobs
        else:
            entry[0] += t.n_queued
            entry[1] += held.get(t.id, 0)
    return {u: (q, h) for u, (q, h) in out.items()}


# ---------------------------------------------------------------------------------------- the queue report
@dataclass
class QueueRow:
    """One group of a task's pending jobs (or, with --jobs, one pending job)."""

    task_id: int
    task: str
    user: str
    cluster: str
    queue: str
    task_status: str
    state: str  # "queued", "held" (behind scouts), "registered" (not expanded yet), "stopping", "starting"
    pending: int  # jobs in this group
    scouts: bool  # the group is the task's scout jobs
    position: int | None  # of the head (or of this job) in its queue's dispatch order; None: none now
    starts_next_cycle: int  # jobs of this group the next cycle starts (allocate on the real free slots)
    reason: str
    job_id: int | None = None
    job_index: int | None = None
    factors: dict[str, float] | None = None  # fairshare, age, priority in [0, 1]
    weighted: dict[str, float] | None = None  # weight * factor, plus the scout bonus; they sum to total
    total: float | None = None


@dataclass
class QueueState:
    cluster: str
    queue: str
    slots: int
    busy: int
    free: int  # what the next cycle may start: none in a held queue (one once its backoff has run out)
    held: str | None = None  # why nothing starts there (a hold, see scheduler/holds.py)


@dataclass
class QueueReport:
    now: float
    rows: list[QueueRow]
    queues: list[QueueState]
    weights: dict[str, float]
    jobs_truncated: bool = False
    # Said when the config runs local jobs as the scheduler's own account (the personal mode).
    run_as_note: str | None = None
    pending_jobs: int = 0  # queued and held jobs of the rows' tasks (with --jobs: what "N of M shown" counts)
    jobs_shown: int = 0  # with --jobs: the job rows shown


def _user_id(session: Session, name: str) -> int:
    uid = session.scalar(select(User.id).where(User.name == name))
    if uid is None:
        known = session.scalars(select(User.name).order_by(User.name).limit(20)).all()
        raise NotFound(f"user {name!r} is unknown; known users: {', '.join(known) or 'none'} "
                       "(`maestro usage` lists them)")
    return uid


class _Explainer:
    """Everything needed to place and explain pending jobs, built once from one PolicyView."""

    def __init__(self, session: Session, settings: Settings, now: float) -> None:
        self.settings = settings
        self.cfg = settings.fairshare
        self.view = view = policy_input(session, settings, now)
        inp = view.inp
        self.take = (fairshare.allocate(inp, self.cfg, slot_seconds=settings.scheduler.interval)
                     if len(view.tasks) and view.free.any() else np.zeros(len(view.tasks), dtype=np.int64))
        self.factors = fairshare.task_factors(inp, self.cfg)
        self.task_index = {t.id: i for i, t in enumerate(view.tasks)}
        self.queue_index = {key: i for i, key in enumerate(view.queues)}
        self.orders: dict[int, QueueOrder] = {}
        self._heads: np.ndarray | None = None
        n_users = len(view.owner_ids)
        self.granted_user = np.bincount(inp.task_user, weights=self.take, minlength=n_users).astype(np.int64)
        self.granted_queue = np.bincount(inp.task_queue, weights=self.take, minlength=len(view.queues)).astype(np.int64)
        w = self.cfg
        self.bonus = 1.0 + abs(w.weight_fairshare) + abs(w.weight_age) + abs(w.weight_task_priority)

    def order(self, q: int) -> QueueOrder:
        if q not in self.orders:
            self.orders[q] = QueueOrder(self.view.inp, self.cfg, q)
        return self.orders[q]

    def positions(self, i: int, ks: Sequence[int]) -> np.ndarray:
        """Positions of the k-th queued jobs (job-id order) of policy task i."""
        inp = self.view.inp
        q, u = int(inp.task_queue[i]), int(inp.task_user[i])
        order = self.order(q)
        base = int(order.offset[i])
        if base < 0:
            return np.zeros(len(ks), dtype=np.int64)
        return order.positions([u] * len(ks), [base + k for k in ks])

    def head_positions(self) -> np.ndarray:
        """int64 [T]: position of each policy task's first queued job in its queue (0: none), batched per queue."""
        if self._heads is None:
            inp = self.view.inp
            heads = np.zeros(len(self.view.tasks), dtype=np.int64)
            for q in np.unique(inp.task_queue).tolist():
                order = self.order(q)
                idx = np.flatnonzero((inp.task_queue == q) & (order.offset >= 0))
                heads[idx] = order.positions(inp.task_user[idx].tolist(), order.offset[idx].tolist())
            self._heads = heads
        return self._heads

    def factor_fields(self, i: int) -> tuple[dict[str, float], dict[str, float], float]:
        f = self.factors
        w = self.cfg
        raw = {"fairshare": float(f["fairshare"][i]), "age": float(f["age"][i]), "priority": float(f["priority"][i])}
        weighted = {"fairshare": w.weight_fairshare * raw["fairshare"], "age": w.weight_age * raw["age"],
                    "priority": w.weight_task_priority * raw["priority"],
                    "scout": self.bonus if bool(self.view.inp.task_scouting[i]) else 0.0}
        return raw, weighted, float(f["total"][i])

    def queued_reason(self, i: int, k: int | None = None) -> str:
        """Why the queued jobs of policy task i (or its k-th queued job) wait, in plain words."""
        view, inp = self.view, self.view.inp
        take = int(self.take[i])
        n = int(inp.task_queued[i])
        if k is None and take > 0:
            more = f" ({take} of its {n})" if take < n else ""
            return f"next in line: starts at the next cycle{more}"
        if k is not None and k < take:
            return "next in line: starts at the next cycle"
        u, q = int(inp.task_user[i]), int(inp.task_queue[i])
        hold = view.holds.get(view.queues[q])
        if hold is not None:
            return describe_hold(hold, inp.now)
        cap = int(inp.user_cap[u])
        if cap > 0 and int(inp.user_running[u]) + int(self.granted_user[u]) >= cap:
            now = int(inp.user_running[u]) + int(self.granted_user[u])
            return f"user's running cap reached ({now} of {cap})"
        cluster, queue = view.queues[q]
        slots, busy, granted = int(view.slots[q]), int(view.busy[q]), int(self.granted_queue[q])
        if slots == 0:
            return f"queue {cluster}/{queue} has no slots (configuration)"
        if granted:
            return (f"no free slot in queue {cluster}/{queue} ({busy} of {slots} in use; the {granted} free "
                    f"slot(s) go to jobs ahead in line at the next cycle)")
        return f"no free slot in queue {cluster}/{queue} ({busy} of {slots} in use)"


def describe_hold(hold: Any, now: float) -> str:
    from orchestra.scheduler.holds import describe

    return describe(hold, now)


def queue_states(view: PolicyView) -> list[QueueState]:
    """Slots per queue as `maestro queue` and `orchestra status` show them, with any hold."""
    return [QueueState(c, q, int(view.slots[i]), int(view.busy[i]), int(view.free[i]),
                       describe_hold(view.holds[(c, q)], view.inp.now) if (c, q) in view.holds else None)
            for i, (c, q) in enumerate(view.queues)]


def _scout_wait(settings: Settings, n_scouts: int, done: tuple[int, int]) -> str:
    ok, bad = done
    threshold = settings.scheduler.scout_success_threshold
    needed = scouts_needed(n_scouts, threshold)
    verdict = scout_verdict(ok, bad, n_scouts, threshold)
    tail = " (decided at the next cycle)" if verdict is not None else ""
    return (f"waiting for scouts of this task to finish: {ok} of {n_scouts} succeeded, {bad} failed; "
            f"{needed} successes release it{tail}")


def queue_report(ctx: Context, user: str | None = None, task: str | None = None, *, jobs: bool = False,
                 limit: int = 50, now: float | None = None) -> QueueReport:
    """Pending work, its order and its reasons (see the module docstring)."""
    from orchestra.services.tasks import find

    now = time.time() if now is None else now
    settings = ctx.settings
    with ctx.transaction() as session:
        owner = _user_id(session, user) if user else None
        task_id = find(session, task)[0].id if task else None
        ex = _Explainer(session, settings, now)
        view, inp = ex.view, ex.view.inp
        tasks = pending_tasks(session, owner, task_id)
        scouting = [t.id for t in tasks if t.status == TaskStatus.SCOUTING and t.request is None]
        held = held_counts(session, scouting)
        progress = scout_progress(session, scouting)
        live = _live_counts(session, [t.id for t in tasks if t.request is not None])
        unconfigured = {t.id for t in view.unconfigured}
        waits = dependencies.blocking(session, [t.id for t in tasks if t.status == TaskStatus.REGISTERED])
        rows: list[QueueRow] = []
        for t in tasks:
            if t.request is not None:
                verb = "killed" if t.request == "kill" else "deleted"
                rows.append(_group_row(t, "stopping", 0, f"task being {verb}: its {live.get(t.id, 0)} running "
                                                         "job(s) are being stopped (SIGTERM, then SIGKILL after the grace)"))
                continue
            if t.status == TaskStatus.REGISTERED:
                reason = (f"task held: {dependencies.describe(waits[t.id])}" if t.id in waits
                          else "task held: waiting for the scheduler to expand it (next cycle)")
                rows.append(_group_row(t, "registered", t.n_jobs, reason))
                continue
            if t.n_queued > 0:
                i = ex.task_index.get(t.id)
                if i is None:
                    reason = (f"queue {t.cluster}/{t.queue} is not in the configuration: nothing can start "
                              "(ask an admin)") if t.id in unconfigured else "waiting for the next cycle"
                    rows.append(_group_row(t, "queued", t.n_queued, reason, scouts=t.status == "scouting"))
                else:
                    raw, weighted, total = ex.factor_fields(i)
                    rows.append(_group_row(
                        t, "queued", t.n_queued, ex.queued_reason(i), scouts=bool(inp.task_scouting[i]),
                        position=int(ex.head_positions()[i]) or None, starts_next_cycle=int(ex.take[i]),
                        factors=raw, weighted=weighted, total=total))
            if held.get(t.id, 0):
                rows.append(_group_row(t, "held", held[t.id],
                                       _scout_wait(settings, t.n_scouts, progress.get(t.id, (0, 0)))))
        truncated = False
        pending_jobs = sum(r.pending for r in rows if r.state in ("queued", "held"))
        if jobs:  # --limit 0: every pending job
            rows, truncated = _expand_jobs(session, ex, rows, limit if limit > 0 else pending_jobs)
        shown = sum(1 for r in rows if r.job_id is not None)
        rows += _waiting_in_cluster(session, owner, task_id)
        rows.sort(key=_row_order)
        states = queue_states(view)
        w = settings.fairshare
        weights = {"fairshare": w.weight_fairshare, "age": w.weight_age, "priority": w.weight_task_priority,
                   "scout": ex.bonus}
        local = any(c.backend == "local" for c in settings.clusters.values())
        note = ("local jobs run as the scheduler's own account, not as their owners (run_jobs_as = \"scheduler\")"
                if local and settings.scheduler.run_jobs_as == "scheduler" else None)
        return QueueReport(now, rows, states, weights, truncated, note, pending_jobs=pending_jobs, jobs_shown=shown)


def _group_row(t: PendingTask, state: str, pending: int, reason: str, *, scouts: bool = False,
               position: int | None = None, starts_next_cycle: int = 0, factors: dict[str, float] | None = None,
               weighted: dict[str, float] | None = None, total: float | None = None) -> QueueRow:
    return QueueRow(task_id=t.id, task=t.name, user=t.owner, cluster=t.cluster, queue=t.queue, task_status=t.status,
                    state=state, pending=pending, scouts=scouts, position=position,
                    starts_next_cycle=starts_next_cycle, reason=reason, factors=factors, weighted=weighted,
                    total=total)


def _row_order(r: QueueRow) -> tuple:
    return (r.position is None, r.cluster, r.queue, r.position or 0, r.task_id,
            ["queued", "held", "registered", "stopping", "starting"].index(r.state), r.job_id or 0)


def _waiting_in_cluster(session: Session, owner: int | None, task_id: int | None) -> list[QueueRow]:
    """Jobs dispatched but not running yet, with the cluster's reason (a pod Pending: Unschedulable,
    ImagePullBackOff...), one row per task and reason. Bounded by the live attempts."""
    query = (
        select(Task.id, Task.name, User.name, Task.cluster, Task.queue, Task.status, Attempt.reason, func.count())
        .join(Job, Job.task_id == Task.id).join(Attempt, Attempt.job_id == Job.id).join(User, User.id == Task.owner_id)
        .where(Attempt.status == AttemptStatus.STARTING.value, Attempt.reason.is_not(None))
        .group_by(Task.id, Task.name, User.name, Task.cluster, Task.queue, Task.status, Attempt.reason)
    )
    if owner is not None:
        query = query.where(Task.owner_id == owner)
    if task_id is not None:
        query = query.where(Task.id == task_id)
    return [QueueRow(task_id=tid, task=name, user=user, cluster=cluster, queue=queue, task_status=status,
                     state="starting", pending=n, scouts=False, position=None, starts_next_cycle=0,
                     reason=f"dispatched, waiting in the cluster: {why}")
            for tid, name, user, cluster, queue, status, why, n in session.execute(query)]


def _live_counts(session: Session, task_ids: Sequence[int]) -> dict[int, int]:
    if not task_ids:
        return {}
    rows = session.execute(
        select(Job.task_id, func.count()).join(Attempt, Attempt.job_id == Job.id)
        .where(Job.task_id.in_(list(task_ids)), Attempt.status.in_(LIVE)).group_by(Job.task_id)
    )
    return {t: n for t, n in rows}


def _expand_jobs(session: Session, ex: _Explainer, rows: list[QueueRow], limit: int) -> tuple[list[QueueRow], bool]:
    """Per-job rows: each queue's first `limit` jobs in dispatch order (the lowest positions across
    queues), then, room left, jobs without a position (beyond their owner's cap, or in a queue not
    configured) and held jobs. Registered and stopping tasks keep their one row."""
    limit = max(0, limit)
    inp = ex.view.inp
    group = {r.task_id: r for r in rows if r.state == "queued"}
    placed: list[tuple[int, int, QueueRow, int]] = []  # (position, k, group, policy index)
    if all(t.id in group for t in ex.view.tasks):  # everyone's jobs: each queue's first `limit` grants
        for q in sorted({int(inp.task_queue[ex.task_index[t]]) for t in group if t in ex.task_index}):
            for pos, (i, k) in enumerate(ex.order(q).first(limit), start=1):
                placed.append((pos, k, group[ex.view.tasks[i].id], i))
    else:  # filtered (-u, -t): the first `limit` jobs of each shown task, with their positions among all
        for r in group.values():
            i = ex.task_index.get(r.task_id, -1)
            if i >= 0:
                ks = list(range(min(r.pending, limit)))
                placed += [(p, k, r, i) for k, p in zip(ks, ex.positions(i, ks).tolist()) if p]
    placed.sort(key=lambda c: (c[0], c[2].cluster, c[2].queue))
    placed = placed[:limit]
    room = limit - len(placed)
    waiting: list[tuple[int, QueueRow, int]] = []  # (k, group, policy index or -1): queued, no position
    for r in group.values():
        if room <= 0:
            break
        i = ex.task_index.get(r.task_id, -1)
        has_position = 0
        if i >= 0:
            order = ex.order(int(inp.task_queue[i]))
            base, u = int(order.offset[i]), int(inp.task_user[i])
            if base >= 0:
                has_position = max(0, min(r.pending, order.keys[u].size - base))
        n = min(r.pending - has_position, room)
        waiting += [(has_position + k, r, i) for k in range(n)]
        room -= n
    held: list[tuple[int, QueueRow]] = []
    for r in rows:
        if r.state == "held" and room > 0:
            n = min(r.pending, room)
            held += [(k, r) for k in range(n)]
            room -= n
    queued_need: Counter[int] = Counter()
    for k, r in [(c[1], c[2]) for c in placed] + [(w[0], w[1]) for w in waiting]:
        queued_need[r.task_id] = max(queued_need[r.task_id], k + 1)
    held_need: Counter[int] = Counter()
    for k, r in held:
        held_need[r.task_id] = max(held_need[r.task_id], k + 1)
    queued_ids = first_jobs(session, queued_need, JobStatus.QUEUED.value)
    held_ids = first_jobs(session, held_need, JobStatus.HELD.value)

    def job_row(r: QueueRow, ids: list[tuple[int, int]], k: int, pos: int | None, i: int) -> QueueRow | None:
        if k >= len(ids):
            return None
        raw = weighted = total = None
        starts, reason = 0, r.reason
        if i >= 0:
            raw, weighted, total = ex.factor_fields(i)
            starts = 1 if k < int(ex.take[i]) else 0
            reason = ex.queued_reason(i, k)
        return QueueRow(task_id=r.task_id, task=r.task, user=r.user, cluster=r.cluster, queue=r.queue,
                        task_status=r.task_status, state=r.state, pending=1, scouts=r.scouts, position=pos,
                        starts_next_cycle=starts, reason=reason, job_id=ids[k][0], job_index=ids[k][1],
                        factors=raw, weighted=weighted, total=total)

    out = [job_row(r, queued_ids.get(r.task_id, []), k, p, i) for p, k, r, i in placed]
    out += [job_row(r, queued_ids.get(r.task_id, []), k, None, i) for k, r, i in waiting]
    out += [job_row(r, held_ids.get(r.task_id, []), k, None, -1) for k, r in held]
    job_rows = [r for r in out if r is not None]
    total_pending = sum(r.pending for r in rows if r.state in ("queued", "held"))
    others = [r for r in rows if r.state in ("registered", "stopping")]
    return job_rows + others, total_pending > len(job_rows)


# ---------------------------------------------------------------------------------------- one job
@dataclass
class JobExplanation:
    job_id: int
    job_index: int
    task: str
    user: str
    status: str
    is_scout: bool
    reason: str
    position: int | None = None
    cluster: str = ""
    queue: str = ""
    factors: dict[str, float] | None = None
    weighted: dict[str, float] | None = None
    total: float | None = None


def explain_job(ctx: Context, job_id: int, now: float | None = None) -> JobExplanation:
    """Where one job stands and why: its position and reason if pending, its state otherwise."""
    now = time.time() if now is None else now
    settings = ctx.settings
    with ctx.transaction() as session:
        if not known_job_id(job_id):
            raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
        row = session.execute(
            select(Job.id, Job.index.label("job_index"), Job.status, Job.is_scout, Job.reason, Job.started_at,
                   Job.ended_at, Job.exit_code, Task.id.label("task_id"), Task.name, Task.status.label("task_status"),
                   Task.request, Task.n_scouts, Task.cluster, Task.queue, Task.max_time, User.name.label("owner"))
            .join(Task, Task.id == Job.task_id).join(User, User.id == Task.owner_id).where(Job.id == job_id)
        ).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
        out = JobExplanation(row.id, row.job_index, row.name, row.owner, row.status, row.is_scout, "", None,
                             row.cluster, row.queue)
        if row.request is not None:
            out.reason = f"task being {'killed' if row.request == 'kill' else 'deleted'}"
            if row.status in (JobStatus.RUNNING, JobStatus.STARTING):
                out.reason += ": this job stops at the next cycle"
            return out
        if row.status == JobStatus.STARTING and row.reason:
            out.reason = f"starting: dispatched, waiting in the cluster: {row.reason}"
            return out
        if row.status in (JobStatus.RUNNING, JobStatus.STARTING):
            since = f" for {int(now - row.started_at)} s" if row.started_at else ""
            out.reason = f"{row.status}{since}: not pending"
            return out
        if row.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.KILLED):
            from orchestra.reasons import ended

            how = ended(row.status, row.exit_code, row.reason, row.max_time)
            out.reason = f"finished: {row.status}{f' ({how})' if how else ''}"
            return out
        if row.status == JobStatus.HELD:
            if row.task_status == TaskStatus.SCOUTING:
                done = scout_progress(session, [row.task_id]).get(row.task_id, (0, 0))
                out.reason = _scout_wait(settings, row.n_scouts, done)
            else:
                out.reason = f"held: task is {row.task_status}"
            return out
        ex = _Explainer(session, settings, now)
        i = ex.task_index.get(row.task_id)
        if i is None:
            known = (row.cluster, row.queue) in ex.queue_index
            out.reason = ("waiting for the next cycle" if known else f"queue {row.cluster}/{row.queue} is not in the "
                          "configuration: nothing can start (ask an admin)")
            return out
        k = queued_ahead(session, row.task_id, row.job_index)
        pos = int(ex.positions(i, [k])[0])
        out.position = pos or None
        out.reason = ex.queued_reason(i, k)
        out.factors, out.weighted, out.total = ex.factor_fields(i)
        return out
