"""One scheduler cycle, step by step. Every state change is committed before the next backend call
that depends on it, so the cycle can be killed at any instant:

- a dispatch is recorded (attempt STARTING, its backend name fixed) *before* the backend is asked;
  a restart finds the object and adopts it, or finds nothing and declares the attempt lost;
- an ended attempt is recorded before its backend object is released;
- kills go to the backend first and are recorded after; repeating a kill is harmless.

The cost of a cycle depends on the live attempts (bounded by the slots), the active tasks and
the users, never on the number of queued jobs: the per-task `n_queued` counter replaces counting
rows, and only the head of each chosen task's queue is read.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.orm import Session

from orchestra import expansion, fairshare
from orchestra.backends.base import Backend, LaunchSpec, Phase, Tracked
from orchestra.backends.registry import make_backend
from orchestra.config import ClusterConfig
from orchestra.db.bulk import bulk_insert, bulk_update, one_of, one_of_param
from orchestra.db.engine import is_sqlite
from orchestra.db.driver_reads import DriverRead
from orchestra.db.planner_stats import TableStatistics
from orchestra.db.models import Attempt, Installation, Job, Outbox, Task, User
from orchestra.errors import OrchestraError
from orchestra.notify import outbox
from orchestra.paths import UntrustedPath, state_root_text, trusted_output_root
from orchestra.scheduler import crashpoints, holds
from orchestra.scheduler.crashpoints import crashpoint
from orchestra.scheduler.expand import expand_task
from orchestra.db.job_lookup import live_jobs_exist, lowest_fresh, settled, settled_counts
from orchestra.scheduler.heads import add_queued, start_queue_heads
from orchestra.scheduler.lease import Lease
from orchestra.services import dependencies
from orchestra.services.context import Context
from orchestra.services.queue import DispatchInfo, policy_input, queue_charge, scout_progress
from orchestra.security.privileged import remove_task_rows
from orchestra.services.tasks import purge_outputs
from orchestra.states import AttemptStatus, JobStatus, TaskStatus, final_task_status, scout_verdict

log = logging.getLogger("orchestra.scheduler")

JOBS = Job.__table__
ATTEMPTS = Attempt.__table__
TASKS = Task.__table__
USERS = User.__table__
LOST_LIMIT = 5  # a job lost this many times (not its fault, but suspicious) fails for good
DISPATCHABLE = (TaskStatus.SCOUTING.value, TaskStatus.RUNNING.value)
ATTEMPT_COLUMNS = ("job_id", "number", "backend_name", "cluster", "status", "log_path", "weight", "created_at")
DEADLINE_SLACK = 0.05  # seconds past a max-time end before the short pass that enforces it

# Statements and conditions built once (issue 18: a short pass runs ~15 statements, and building,
# keying and going through the ORM cost more than SQLite takes to run them). Dialect-dependent
# ones (a list of ids bound at execution) are built per scheduler, see `_Statements`.
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
# A short pass's usage charge on PostgreSQL (`_charge_usage`): each owner's usage decayed to :now
# (fairshare.decay) plus its charge, below 1e-6 kept as 0, in one statement.
_CHARGE_DECAYED = text(
    "UPDATE users SET usage = CASE WHEN n.u < 1e-6 THEN 0.0 ELSE n.u END, usage_at = :now "
    "FROM (SELECT c.id, c.charge + u.usage * power(2.0::float8, GREATEST(-1000.0::float8, "
    "-GREATEST(CAST(:now AS float8) - u.usage_at, 0.0) / CAST(:half_life AS float8))) AS u "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:charges AS float8[])) AS c(id, charge) "
    "JOIN users u ON u.id = c.id) AS n WHERE users.id = n.id")
_ATTEMPT_STARTING = ATTEMPTS.c.status == AttemptStatus.STARTING.value
_JOB_STARTING = JOBS.c.status == JobStatus.STARTING.value
_LIVE_ATTEMPTS = (
    select(
        ATTEMPTS.c.id, ATTEMPTS.c.job_id, JOBS.c.task_id, TASKS.c.owner_id, ATTEMPTS.c.backend_name, ATTEMPTS.c.status,
        ATTEMPTS.c.pid, ATTEMPTS.c.pid_start, ATTEMPTS.c.log_path, ATTEMPTS.c.started_at, ATTEMPTS.c.cluster,
        TASKS.c.queue, JOBS.c.is_scout, JOBS.c.attempts, JOBS.c.failures, TASKS.c.max_time, TASKS.c.max_retries,
        TASKS.c.status, TASKS.c.request, ATTEMPTS.c.weight, ATTEMPTS.c.charged_until, ATTEMPTS.c.reason,
        ATTEMPTS.c.stopping,
    )
    .join(JOBS, JOBS.c.id == ATTEMPTS.c.job_id)
    .join(TASKS, TASKS.c.id == JOBS.c.task_id)
    .where(ATTEMPTS.c.status.in_([AttemptStatus.STARTING.value, AttemptStatus.RUNNING.value]))
)
_SCOUTING_COND = (TASKS.c.status == TaskStatus.SCOUTING.value) & TASKS.c.request.is_(None)
_BROKEN_COND = (TASKS.c.status == TaskStatus.BROKEN.value) & (TASKS.c.n_queued > 0)
_DRAINED_COND = (TASKS.c.status == TaskStatus.RUNNING.value) & (TASKS.c.n_queued == 0) & TASKS.c.request.is_(None)
# The task step's three reads in one statement (each a few rows): what `_advance` looks at.
_TASKS_TO_ADVANCE = select(TASKS.c.id, TASKS.c.status, TASKS.c.n_scouts, TASKS.c.reason).where(
    _SCOUTING_COND | _BROKEN_COND | _DRAINED_COND).order_by(TASKS.c.id)
_BROKEN_WITH_QUEUED = select(TASKS.c.id, TASKS.c.reason).where(_BROKEN_COND).order_by(TASKS.c.id)
_RUNNING_DRAINED = select(TASKS.c.id).where(_DRAINED_COND).order_by(TASKS.c.id)


class _Statements:
    """The per-pass statements that bind a list of ids, built once per scheduler for its dialect."""

    def __init__(self, sqlite: bool) -> None:
        # The reads every short pass makes, through the driver (orchestra/db/driver_reads.py).
        self.live = DriverRead(_LIVE_ATTEMPTS, sqlite)
        self.to_advance = DriverRead(_TASKS_TO_ADVANCE, sqlite)
        start = dict(status=JobStatus.STARTING.value, attempts=JOBS.c.attempts + 1, started_at=None, ended_at=None)
        started = (JOBS.c.id, JOBS.c.task_id, JOBS.c.index, JOBS.c.attempts, JOBS.c.command, JOBS.c.queued_at)
        queued = JOBS.c.status == JobStatus.QUEUED.value
        # SQLite: the heads chosen (scheduler/heads.py) started; PostgreSQL runs heads.START.
        self.start_jobs = update(JOBS).where(one_of_param(JOBS.c.id, "ids", sqlite), queued).values(**start) \
            .returning(*started)
        charged = one_of_param(USERS.c.id, "ids", sqlite)
        self.charged_users = select(USERS.c.id, USERS.c.usage, USERS.c.usage_at).where(charged)
        self.users_to_decay = select(USERS.c.id, USERS.c.usage, USERS.c.usage_at).where((USERS.c.usage > 0) | charged)


def backend_name(task_id: int, job_index: int, attempt: int, installation: str = "") -> str:
    """Deterministic, DNS-1123 safe, at most 63 characters: the same (job, attempt), the same name;
    with the database's installation id, so another database's objects are never adopted."""
    return f"orc-{installation[:8]}-{task_id}-{job_index}-{attempt}" if installation else \
        f"orc-{task_id}-{job_index}-{attempt}"


def describe_counts(counts: Counter[str]) -> str:
    """`started 4, succeeded 3` (what a cycle or a run of short passes did), or `nothing to do`."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "nothing to do"


@dataclass
class CycleReport:
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    full: bool = True
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step, in cycle order
    # What the metrics (orchestra/metrics.py) count, as the cycle learns it: no query needed later.
    dispatched: Counter[tuple[str, str]] = field(default_factory=Counter)  # (cluster, queue): launches accepted
    waits: list[tuple[str, str, float]] = field(default_factory=list)  # (cluster, queue, seconds queued) per start
    ended: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (cluster, queue, attempt result)
    backend_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (cluster, kind)
    queued_at: dict[str, float] = field(default_factory=dict)  # backend name -> its job's queued_at, at dispatch
    # Seconds, per step, of the statements that write job, attempt, task and user rows (a part of
    # `steps`): what the bench compares with raw set-based statements making the same changes.
    writes: dict[str, float] = field(default_factory=dict)
    _current: str = field(default="", repr=False)

    def line(self) -> str:
        """`cycle: started 4, succeeded 3 (12 ms: reconcile 5, requests 0, ...)`: a slow cycle says
        which step was slow; a short pass (many per second at turnover) keeps to its total."""
        kind = "cycle" if self.full else "short pass"
        steps = ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in self.steps.items())
        timing = f"{self.seconds * 1000:.0f} ms" + (f": {steps}" if self.full and steps else "")
        return f"{kind}: {describe_counts(self.counts)} ({timing})"

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        outer, self._current = self._current, name
        try:
            yield
        finally:
            self._current = outer
            self.steps[name] = time.perf_counter() - started

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Times row-writing statements, added to the current step's `writes`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.writes[self._current] = self.writes.get(self._current, 0.0) + time.perf_counter() - started


class LiveAttempt(NamedTuple):
    """An attempt the database believes is out there, with what deciding its fate needs.

    A named tuple, not a frozen dataclass: a short pass builds one per live attempt (64 at 64
    slots), and a frozen dataclass's __init__ costs ~5x more (issue 18)."""

    id: int
    job_id: int
    task_id: int
    owner_id: int
    backend_name: str
    status: str
    pid: int | None
    pid_start: int | None
    log_path: str | None
    started_at: float | None
    cluster: str
    queue: str
    is_scout: bool
    attempts: int
    failures: int
    max_time: float | None
    max_retries: int
    task_status: str
    request: str | None
    weight: float
    charged_until: float | None
    note: str | None  # why a dispatched attempt does not run yet (a pod Pending: Unschedulable, ...)
    stopping: str | None  # why the scheduler stops it ("timeout", "killed by user"); None: let it run

    def tracked(self) -> Tracked:
        return Tracked(self.backend_name, self.log_path, self.pid, self.pid_start, self.started_at)


@dataclass(frozen=True)
class Ending:
    """How an attempt ended, as recorded."""

    attempt: LiveAttempt
    status: AttemptStatus
    exit_code: int | None
    reason: str | None
    ended_at: float
    final: bool = False  # fails the job at once, whatever its retries (e.g. its owner has no account)


class _TaskToAdvance(NamedTuple):
    id: int
    status: str
    n_scouts: int
    reason: str | None


class _Ack(NamedTuple):
    """A launch the backend accepted, not yet recorded as running (`Scheduler.defer_acks`).

    `pid_start` may be None until the record is written: the local backend reads a supervisor's
    start time only then (`start_time_of`), once its exec is over (see `Scheduler._settled`)."""

    job_id: int
    host: str | None
    pid: int | None
    pid_start: int | None
    started_at: float
    cluster: str


@dataclass
class _Observed:
    """What a survey of the live attempts found, before any of it is written."""

    now: float
    live: list[LiveAttempt]
    clusters: list[str]
    endings: list[Ending]
    confirmed: list[LiveAttempt]
    waiting: list[tuple[LiveAttempt, str | None]]
    strangers: dict[str, list[str]]


class Scheduler:
    """Runs cycles against the database and one backend per cluster."""

    def __init__(self, ctx: Context, backends: dict[str, Backend] | None = None, lease: Lease | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.backends = backends if backends is not None else {}
        self.lease = lease or Lease(ctx.engine, ctx.settings.scheduler.lease_ttl)
        self.clock = time.time
        self.next_deadline: float | None = None  # earliest max-time end of a live attempt (epoch s)
        self.wakeup: Callable[[], None] | None = None
        # The queues held because their cluster could not start a job (scheduler/holds.py): read
        # from the database at every fill step, kept up to date by the launches' acknowledgements.
        self.holds: dict[holds.Key, holds.HoldState] = {}
        self._holds_known = False  # `holds` was read from the database (by a full cycle's fill)
        self._kills_seen_until: float | None = None  # `_mail_direct_kills` looked at kills up to here
        # Live attempts as the last pass left them: the survey's, minus the ends it recorded, plus
        # the launches that started (only the scheduler creates or ends attempts). See `busy`.
        self._live_left = 0
        self._sqlite = is_sqlite(ctx.engine)
        self._sql = _Statements(self._sqlite)
        # Acknowledgements deferred (issue 18). The service loop sets `defer_acks`: a launch's
        # answer (running, pid, start) is then written by the scheduler's next fenced transaction
        # (the next pass's, usually milliseconds later at turnover, merged into the attempt's end
        # when it ended meanwhile), or by `write_acks` when the loop would wait (loop.ACK_DELAY),
        # instead of a transaction of its own after every launch: a lease renewal, two updates
        # and a commit saved per pass. Until then the attempt reads `starting` in the database,
        # exactly the state a scheduler killed between a launch and its record leaves, which the
        # next survey confirms (the backend knows it): deferring opens no new failure case.
        self.defer_acks = False
        self._unacked: dict[str, _Ack] = {}  # by backend name
        self._acks_in_tx: set[str] = set()  # written by the open transaction: forgotten once it commits
        # Job rows expanded or released in bulk since the jobs table's statistics were refreshed
        # (orchestra/db/planner_stats.py), refreshed at the end of a pass, after its launches.
        # Counted as written: a transaction that then fails costs at most one ANALYZE too many.
        self.job_statistics = TableStatistics(ctx.engine, "jobs")
        with Session(ctx.engine) as session:  # read once, before any transaction of the cycle holds a lock
            self._installation: str = session.scalar(select(Installation.id)) or "default"

    def backend(self, cluster: str) -> Backend:
        if cluster not in self.backends:
            self.backends[cluster] = self._wire(make_backend(self.settings.cluster(cluster), self.settings,
                                                             self.installation))
        return self.backends[cluster]

    @property
    def installation(self) -> str:
        """This database's id (migration 0004): attempt state on disk is kept under it."""
        return self._installation

    def set_wakeup(self, callback: Callable[[], None]) -> None:
        """Hand `callback` (thread-safe; it wakes the service loop for a short pass) to every backend
        that can learn of a job's end by itself: an optional `set_wakeup` method (the Kubernetes
        backend's pod watch). Backends without it (local, null, simulated) are left as they are."""
        self.wakeup = callback
        for backend in self.backends.values():
            self._wire(backend)

    def _wire(self, backend: Backend) -> Backend:
        setter = getattr(backend, "set_wakeup", None)
        if setter is not None and self.wakeup is not None:
            setter(self.wakeup)
        return backend

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()

    @contextmanager
    def tx(self, acks: bool = True) -> Iterator[Session]:
        """A fenced transaction: it renews the lease and aborts if another scheduler holds it.

        It writes the deferred acknowledgements first (`acks`; the record of a survey passes
        False and writes them itself, merged into the ends it records): whatever the transaction
        then reads or decides sees the attempts as running. They are forgotten only once it
        commits; a transaction that fails leaves them to the next."""
        self._acks_in_tx = set()
        try:
            with Session(self.ctx.engine, expire_on_commit=False) as session, session.begin():
                self.lease.guard(session)
                if acks:
                    self._write_acks(session)
                yield session
            for name in self._acks_in_tx:
                self._unacked.pop(name, None)
        finally:
            self._acks_in_tx = set()

    def write_acks(self) -> None:
        """Write the deferred acknowledgements now (the loop, before it waits or stops)."""
        if self._unacked:
            with self.tx():
                pass

    @property
    def busy(self) -> bool:
        """The last pass left live attempts (or started some): `--until-idle` need not ask the
        database whether anything remains (a statement after every pass, issue 18). An attempt
        counted here that ended or was refused meanwhile only costs one more pass, whose survey
        reads the database's own live attempts; a pass that leaves none says False, and the
        database is asked as before."""
        return self._live_left > 0

    @property
    def unacked(self) -> int:
        """How many accepted launches are not recorded as running yet."""
        return len(self._unacked)

    def _write_acks(self, session: Session, report: CycleReport | None = None) -> None:
        """Record the deferred launches not written in this transaction yet as running."""
        pending = [(name, self._settled(name, ack)) for name, ack in self._unacked.items() if name not in self._acks_in_tx]
        if not pending:
            return
        attempt_rows = [{"backend_name": name, "host": a.host, "pid": a.pid, "pid_start": a.pid_start,
                         "started_at": a.started_at} for name, a in pending]
        job_rows = [{"id": a.job_id, "started_at": a.started_at} for _, a in pending]
        with (report or CycleReport()).writing():
            bulk_update(session, ATTEMPTS, attempt_rows, key="backend_name", where=[_ATTEMPT_STARTING],
                        fixed={"status": AttemptStatus.RUNNING.value})
            bulk_update(session, JOBS, job_rows, where=[_JOB_STARTING], fixed={"status": JobStatus.RUNNING.value})
        self._acks_in_tx.update(name for name, _ in pending)

    def _settled(self, name: str, ack: _Ack) -> _Ack:
        """The acknowledgement with its process's start time, asked of the backend now if the
        launch left it out (issue 18: the local backend's launch does, rather than wait for the
        exec under way, ~0.4 ms a job; by the time the record is written the exec is long over).
        None when the backend no longer knows the process as its own (it ended and was reaped:
        its end is recorded in the same row, and a start time is needed only to adopt a live one)."""
        if ack.pid_start is not None or ack.pid is None:
            return ack
        read = getattr(self.backends.get(ack.cluster), "start_time_of", None)
        return ack if read is None else ack._replace(pid_start=read(name, ack.pid))

    # ------------------------------------------------------------------ the cycle
    def cycle(self, full: bool = True) -> CycleReport:
        """One cycle, or (`full=False`) the short pass that follows a job's end.

        The short pass is the cycle minus the steps only a user's command can make necessary
        (requests, expansion: their NOTIFY or counter change triggers a full cycle): it records what
        ended, moves the task states that the endings decide, and fills the freed slots. Its steps
        are the cycle's own, so it is exactly as crash-safe; each is bounded by live attempts,
        active tasks and free slots, never by the number of queued jobs.
        """
        try:
            return self._cycle(full)
        except BaseException:
            self._holds_known = False  # a write may or may not have happened: the next fill reads them
            raise

    def _cycle(self, full: bool) -> CycleReport:
        started = time.perf_counter()
        report = CycleReport(full=full)
        crashpoints.current_pass = "full" if full else "short"
        if not full:
            with report.step("reconcile"):
                seen = self._observe(report)
            if not report.counts["stopped"]:
                self._short_pass(seen, report)
                self.job_statistics.keep()
                report.seconds = time.perf_counter() - started
                return report
            with report.step("reconcile"):
                with self.tx(acks=False) as session:
                    self._record_observed(session, seen, report, full)
                self._release_ended(seen, report)
        else:
            with report.step("reconcile"):
                self.reconcile(report, full)
        if full or report.counts["stopped"]:  # the last stopped attempt of a killed task lets it finish
            with report.step("requests"):
                self.apply_requests(report)
        if full:
            with report.step("expand"):
                self.expand(report)
        with report.step("tasks"):
            self.advance_tasks(report)
        self.fill(report)  # steps `dispatch` and `launch`
        self.job_statistics.keep()
        report.seconds = time.perf_counter() - started
        return report

    def _short_pass(self, seen: _Observed, report: CycleReport) -> None:
        """The short pass's writes in one transaction (issue 18: each transaction costs a lease
        renewal and a commit, an fsync on PostgreSQL): the ends just observed are recorded, the task
        states they decide are moved and the freed slots' attempts are recorded, all committed
        before any backend call that depends on them (the release of the ended attempts, the
        launches); the launches' answers are recorded in a second one, as in a full cycle."""
        with report.step("dispatch"), self.tx(acks=False) as session:
            self._record_observed(session, seen, report, False)
            self._advance(session, report)
            now = self.clock()
            plan, info = self._plan(session, now, seen)
            specs = self._dispatch(session, plan, info, now, report) if plan else []
        self._release_ended(seen, report)
        if specs:
            with report.step("launch"):
                self._launch(specs, now, report)

    def poll_after(self) -> float | None:
        """Seconds after which a backend wants a short pass even without an event (or None).

        The local backend's children announce their end (SIGCHLD); processes adopted from an
        earlier scheduler do not, and pods end far away: a Kubernetes backend whose pod watch is
        healthy announces them (see `set_wakeup`), one without asks to be polled.
        """
        waits = [getattr(b, "poll_after", lambda: None)() for b in self.backends.values()]
        now = self.clock()
        if self.next_deadline is not None:  # a --max-time runs out: no backend event will say so
            waits.append(max(0.0, self.next_deadline - now) + DEADLINE_SLACK)
        # A held queue's backoff runs out: the pass that follows sends its probe launch.
        waits += [h.retry_at - now + DEADLINE_SLACK for h in self.holds.values() if h.retry_at > now]
        waits = [w for w in waits if w is not None]
        return min(waits) if waits else None

    # ------------------------------------------------------------------ 1. reconcile
    def live_attempts(self, session: Session, task_ids: Sequence[int] | None = None) -> list[LiveAttempt]:
        query = _LIVE_ATTEMPTS
        if task_ids is not None:
            query = query.where(one_of(session, JOBS.c.task_id, task_ids))
        return [LiveAttempt(*row) for row in session.connection().execute(query)]

    def _read_live(self) -> list[LiveAttempt]:
        """Every live attempt, as `live_attempts` reads them, through the driver (see
        orchestra/db/driver_reads.py): the read every pass begins with. In a short transaction of
        its own, like any read of the pass; nothing it reads is written unfenced."""
        rows = self._sql.live.read(self.ctx.engine)
        return [LiveAttempt(*row) for row in rows]

    def reconcile(self, report: CycleReport, full: bool = True) -> None:
        """Observe every live attempt; record the ended, the lost, the timed out; charge usage."""
        seen = self._observe(report)
        with self.tx(acks=False) as session:
            self._record_observed(session, seen, report, full)
        self._release_ended(seen, report)

    def _observe(self, report: CycleReport) -> _Observed:
        """Ask the backends about every live attempt; mark and signal the timed out (their
        `stopping` committed before the signal). Nothing it learns is written yet.

        The read is not fenced (issue 18): it writes nothing, so it needs no lease renewal, whose
        UPDATE made it a writing transaction (a commit with an fsync on PostgreSQL, every pass).
        What it learns is written only in fenced transactions, which a scheduler that lost its
        lease cannot commit; the signals it may send meanwhile (to attempts already marked
        `stopping`) are the ones any holder sends again."""
        live = self._read_live()
        if self._unacked:  # launched, their record deferred: as they will be recorded
            live = [self._as_acknowledged(a) for a in live]
        now = self.clock()
        by_cluster: dict[str, list[LiveAttempt]] = defaultdict(list)
        for attempt in live:
            by_cluster[attempt.cluster].append(attempt)
        endings: list[Ending] = []
        confirmed: list[LiveAttempt] = []
        waiting: list[tuple[LiveAttempt, str | None]] = []
        timed_out: list[LiveAttempt] = []
        stopping: list[LiveAttempt] = []
        strangers: dict[str, list[str]] = {}
        for cluster, attempts in by_cluster.items():
            survey = self.backend(cluster).survey([a.tracked() for a in attempts])
            strangers[cluster] = survey.strangers
            for attempt in attempts:
                seen = survey.observations.get(attempt.backend_name)
                if attempt.stopping and (seen is None or seen.phase in (Phase.MISSING, Phase.FAILED)):
                    # Stopped by us: it ends for the reason we stopped it, whatever the signal did.
                    code = seen.exit_code if seen else None
                    ended = (seen.ended_at if seen else None) or now
                    status = AttemptStatus.KILLED if attempt.stopping != "timeout" else AttemptStatus.FAILED
                    endings.append(Ending(attempt, status, code, attempt.stopping, ended))
                    report.counts["stopped"] += 1
                elif seen is None or seen.phase == Phase.MISSING:
                    reason = (seen.reason if seen else None) or "the backend no longer knows it"
                    endings.append(Ending(attempt, AttemptStatus.LOST, None, f"lost: {reason}", now))
                elif seen.phase == Phase.SUCCEEDED:
                    endings.append(Ending(attempt, AttemptStatus.SUCCEEDED, 0, None, seen.ended_at or now))
                elif seen.phase == Phase.FAILED:
                    endings.append(Ending(attempt, AttemptStatus.FAILED, seen.exit_code, seen.reason, seen.ended_at or now))
                elif attempt.stopping:
                    stopping.append(attempt)  # still there: ask again (a restarted scheduler forgot)
                elif attempt.max_time and attempt.started_at and now - attempt.started_at > attempt.max_time:
                    timed_out.append(attempt)
                elif seen.phase == Phase.PENDING:
                    waiting.append((attempt, seen.reason))  # stays starting: the cluster has not run it yet
                elif attempt.status == AttemptStatus.STARTING:
                    confirmed.append(attempt)
        ended_ids = {e.attempt.id for e in endings} | {a.id for a in timed_out}
        self.next_deadline = min((a.started_at + a.max_time for a in live
                                  if a.max_time and a.started_at and a.id not in ended_ids), default=None)
        if endings:
            crashpoint("after-end-observed")
        if timed_out:
            with self.tx() as session:  # recorded first: a crash before the signal repeats it
                self._mark_stopping(session, timed_out, "timeout")
        if timed_out or stopping:
            self._kill(timed_out + stopping)  # returns at once; the attempts end when their processes do
        self._live_left = len(live) - len(endings)
        return _Observed(now, live, list(by_cluster), endings, confirmed, waiting, strangers)

    def _as_acknowledged(self, attempt: LiveAttempt) -> LiveAttempt:
        ack = self._unacked.get(attempt.backend_name)
        if ack is None or attempt.status != AttemptStatus.STARTING.value:
            return attempt
        return attempt._replace(status=AttemptStatus.RUNNING.value, pid=ack.pid, pid_start=ack.pid_start,
                                started_at=ack.started_at)

    def _record_observed(self, session: Session, seen: _Observed, report: CycleReport, full: bool) -> None:
        """The survey's findings, in a transaction opened with `tx(acks=False)`: the deferred
        acknowledgements of attempts that ended are part of their end's update; the others follow."""
        with report.writing():
            self._confirm(session, seen.confirmed, seen.now)
            self._note_waiting(session, seen.waiting)
        self._record_endings(session, seen.endings, report, merge_acks=True)
        self._write_acks(session, report)
        self._charge_usage(session, seen.live, seen.endings, seen.now, everyone=full, report=report)

    def _release_ended(self, seen: _Observed, report: CycleReport) -> None:
        """Once their end is committed: the ended attempts' backend objects go, and strangers."""
        for cluster in seen.clusters:
            ended = [e.attempt.backend_name for e in seen.endings if e.attempt.cluster == cluster]
            if ended or seen.strangers.get(cluster):
                self.backend(cluster).release(ended + seen.strangers.get(cluster, []))
        report.counts["strangers removed"] += sum(len(s) for s in seen.strangers.values())

    @staticmethod
    def _mark_stopping(session: Session, attempts: Sequence[LiveAttempt], why: str) -> None:
        ids = [a.id for a in attempts if not a.stopping]
        if ids:
            session.execute(update(ATTEMPTS).where(one_of(session, ATTEMPTS.c.id, ids)).values(stopping=why))

    def _kill(self, attempts: Sequence[LiveAttempt]) -> None:
        by_cluster: dict[str, list[Tracked]] = defaultdict(list)
        for attempt in attempts:
            by_cluster[attempt.cluster].append(attempt.tracked())
        for cluster, tracked in by_cluster.items():
            self.backend(cluster).kill(tracked)

    @staticmethod
    def _note_waiting(session: Session, waiting: Sequence[tuple[LiveAttempt, str | None]]) -> None:
        """Why dispatched attempts do not run yet, on the attempt and its job (`maestro job why`,
        `maestro queue`), written only when it changed: a pass costs nothing while it stays."""
        changed = [(a, why) for a, why in waiting if why != a.note]
        bulk_update(session, ATTEMPTS, [{"id": a.id, "reason": why} for a, why in changed])
        bulk_update(session, JOBS, [{"id": a.job_id, "reason": why} for a, why in changed])

    def _confirm(self, session: Session, attempts: Sequence[LiveAttempt], now: float) -> None:
        """STARTING attempts the backend does run: a restart between create and its record, or a
        backend whose objects wait before they run (`starts_pending`)."""
        if not attempts:
            return
        ids = [a.id for a in attempts]
        session.execute(
            update(ATTEMPTS).where(one_of(session, ATTEMPTS.c.id, ids), ATTEMPTS.c.status == AttemptStatus.STARTING.value)
            .values(status=AttemptStatus.RUNNING.value, started_at=func.coalesce(ATTEMPTS.c.started_at, now))
        )
        session.execute(
            update(JOBS).where(one_of(session, JOBS.c.id, [a.job_id for a in attempts]),
                               JOBS.c.status == JobStatus.STARTING.value)
            .values(status=JobStatus.RUNNING.value, started_at=func.coalesce(JOBS.c.started_at, now))
        )
        noted = [a for a in attempts if a.note is not None]  # it runs now: why it waited is over
        bulk_update(session, ATTEMPTS, [{"id": a.id} for a in noted], fixed={"reason": None})
        bulk_update(session, JOBS, [{"id": a.job_id} for a in noted], fixed={"reason": None})

    def _record_endings(self, session: Session, endings: Sequence[Ending], report: CycleReport,
                        merge_acks: bool = False) -> None:
        """Attempts end; their jobs succeed, fail, or go back to the queue for another attempt.

        `merge_acks`: an attempt whose launch is not recorded yet (`defer_acks`) gets its host, pid
        and start in the same update as its end (one row write instead of two)."""
        if not endings:
            return
        acks = {e.attempt.backend_name: self._settled(e.attempt.backend_name, self._unacked[e.attempt.backend_name])
                for e in endings
                if e.attempt.backend_name in self._unacked and e.attempt.backend_name not in self._acks_in_tx} \
            if merge_acks and self._unacked else {}
        # An ended attempt's charge is settled up to its end here (see `_charge_usage`): one write per attempt.
        attempt_rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}  # by "with its launch's record"
        for e in endings:
            row = {"id": e.attempt.id, "status": e.status.value, "exit_code": e.exit_code,
                   "reason": e.reason, "ended_at": e.ended_at, "charged_until": e.ended_at}
            ack = acks.get(e.attempt.backend_name)
            if ack is not None:
                row.update(host=ack.host, pid=ack.pid, pid_start=ack.pid_start, started_at=ack.started_at)
            attempt_rows[ack is not None].append(row)
        with report.writing():
            for rows in attempt_rows.values():
                bulk_update(session, ATTEMPTS, rows)
        job_rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        requeued: Counter[int] = Counter()
        for e in endings:
            a = e.attempt
            active = a.task_status in DISPATCHABLE and a.request is None
            failures = a.failures + (1 if e.status == AttemptStatus.FAILED else 0)
            if e.status == AttemptStatus.SUCCEEDED:
                status = JobStatus.SUCCEEDED
            elif e.status == AttemptStatus.KILLED:
                status = JobStatus.KILLED
            elif not active:
                status = JobStatus.KILLED if a.request else JobStatus.FAILED
            elif e.final:
                status = JobStatus.FAILED
            elif e.status == AttemptStatus.LOST:
                status = JobStatus.QUEUED if a.attempts - a.failures < LOST_LIMIT else JobStatus.FAILED
            elif a.is_scout and a.task_status == TaskStatus.SCOUTING:
                status = JobStatus.FAILED  # a scout's failure is the signal itself: no retry
            else:
                status = JobStatus.QUEUED if failures <= a.max_retries else JobStatus.FAILED
            if status == JobStatus.QUEUED:
                requeued[a.task_id] += 1
            report.ended[(a.cluster, a.queue, e.status.value)] += 1
            report.counts[f"{'retried' if status == JobStatus.QUEUED else status.value}"] += 1
            row = {
                "id": a.job_id, "status": status.value, "failures": failures, "exit_code": e.exit_code,
                "reason": e.reason, "ended_at": None if status == JobStatus.QUEUED else e.ended_at,
                "queued_at": e.ended_at,
            }
            ack = acks.get(a.backend_name)
            if ack is not None:
                row["started_at"] = ack.started_at
            job_rows[ack is not None].append(row)
        with report.writing():
            for rows in job_rows.values():
                bulk_update(session, JOBS, rows)
            add_queued(session, requeued)
        self._acks_in_tx.update(acks)

    def _charge_usage(self, session: Session, live: Sequence[LiveAttempt], endings: Sequence[Ending], now: float,
                      everyone: bool = True, report: CycleReport | None = None) -> None:
        """Charge weighted slot-seconds to owners as attempts run; decay their usage to `now`.

        A full cycle charges every live attempt and decays every user; a short pass only the
        attempts that ended (and their owners). Nothing is lost in between: an attempt is charged
        from `charged_until`, and readers decay usage from `usage_at` (the policy counts running
        jobs through their running charge), so a short pass writes in proportion to what ended.
        Call it with the `endings` just given to `_record_endings`, which moved their
        `charged_until` to their end: only the attempts still running get it written here.
        """
        ended_at = {e.attempt.id: e.ended_at for e in endings}
        if not everyone:
            live = [a for a in live if a.id in ended_at]
        charges: Counter[int] = Counter()
        marks = []
        for a in live:
            start = a.charged_until or a.started_at
            if start is None:
                continue
            until = min(ended_at.get(a.id, now), now)
            if until > start:
                charges[a.owner_id] += (until - start) * a.weight
                if a.id not in ended_at:
                    marks.append({"id": a.id, "charged_until": until})
        report = report or CycleReport()
        with report.writing():
            bulk_update(session, ATTEMPTS, marks)
        if not everyone and not charges:
            return  # a short pass in which nothing ended: nothing to write
        half_life = self.settings.fairshare.half_life_days * 86400.0
        if not everyone and not self._sqlite and half_life > 0:
            # PostgreSQL, a short pass: read, decay and write in one statement (issue 18: a server
            # round trip less in every pass that records an end). The same formula as
            # fairshare.decay, in float8; its exponent is floored at -1000 because PostgreSQL
            # refuses a power() that underflows to 0 (2**-1000 is ~1e-301, then cut to 0 below).
            ids = sorted(charges)
            with report.writing():
                session.connection().execute(_CHARGE_DECAYED, {
                    "ids": ids, "charges": [float(charges[i]) for i in ids], "now": now, "half_life": half_life})
            return
        users = session.connection().execute(self._sql.users_to_decay if everyone else self._sql.charged_users,
                                             {"ids": list(charges)}).all()
        if not users:
            return
        ids = np.array([u[0] for u in users])
        usage = fairshare.decayed([u[1] for u in users], [u[2] for u in users], now, self.settings.fairshare)
        usage += np.array([charges.get(int(i), 0.0) for i in ids])
        usage[usage < 1e-6] = 0.0
        user_rows = [{"id": int(i), "usage": float(u)} for i, u in zip(ids, usage)]
        with report.writing():
            bulk_update(session, USERS, user_rows, fixed={"usage_at": now})

    # ------------------------------------------------------------------ 2. user requests
    def _mail_direct_kills(self, session: Session, now: float) -> None:
        """The mail of a task a user killed while none of its jobs ran: the kill ended it in the
        user's own transaction (no request for this cycle to finish), so its mail is written here.
        Bounded: only tasks killed since the last look (a day back after a start), without a
        request pending (the request path mails those) and without their mail already."""
        since = self._kills_seen_until if self._kills_seen_until is not None else now - 86400.0
        mailed = select(Outbox.id).where(Outbox.task_id == Task.id, Outbox.event == TaskStatus.KILLED.value).exists()
        ids = session.scalars(select(Task.id).where(
            Task.status == TaskStatus.KILLED.value, Task.request.is_(None), Task.finished_at >= since, ~mailed)).all()
        for task_id in ids:
            outbox.task_ended(session, self.settings, task_id, TaskStatus.KILLED.value, now)
        self._kills_seen_until = now - 60.0  # a margin for a client's clock behind ours; `mailed` stops repeats

    def apply_requests(self, report: CycleReport) -> None:
        """Kill the live jobs of killed and deleted tasks; then forget the deleted ones.

        A purge removes the output root recomputed from the cluster's storage and the owner's and
        task's names (never the row's `output_root`), without following a link; a refusal is
        logged and the cycle goes on.
        """
        with self.tx() as session:
            if self.settings.notify.enabled:
                self._mail_direct_kills(session, self.clock())
            requests = session.execute(
                select(Task.id, Task.request, Task.cluster, Task.name, User.name.label("owner"))
                .outerjoin(User, User.id == Task.owner_id).where(Task.request.is_not(None))
            ).all()
            if not requests:
                return
            live = self.live_attempts(session, [r.id for r in requests])
        if live:
            with self.tx() as session:  # recorded first: a crash before the signal repeats it
                self._mark_stopping(session, live, "killed by user")
            self._kill(live)  # returns at once: the attempts end (and free their slots) when their processes do
        busy = {a.task_id for a in live}
        now = self.clock()
        purge = []
        with self.tx() as session:
            for task_id, request, cluster, task_name, owner in requests:
                session.execute(
                    update(JOBS).where(JOBS.c.task_id == task_id,
                                       JOBS.c.status.in_([JobStatus.HELD.value, JobStatus.QUEUED.value]))
                    .values(status=JobStatus.KILLED.value, reason="killed by user", ended_at=now)
                )
                if task_id in busy:
                    session.execute(update(TASKS).where(TASKS.c.id == task_id).values(n_queued=0))
                    continue  # done in a later cycle, once its last attempt has ended
                if request == "kill":
                    session.execute(update(TASKS).where(TASKS.c.id == task_id).values(request=None, n_queued=0))
                    outbox.task_ended(session, self.settings, task_id, "killed", now)  # its last job has stopped
                else:
                    remove_task_rows(session, task_id)
                    report.counts["deleted"] += 1
                    if request == "purge":
                        try:
                            storage = self.settings.cluster(cluster).storage
                            purge.append((task_id, trusted_output_root(storage, owner, task_name), storage))
                        except OrchestraError as exc:
                            log.warning("purge of task %d refused: %s", task_id, exc)
        for task_id, root, storage in purge:
            try:
                purge_outputs(root, storage)
            except UntrustedPath as exc:
                log.warning("purge of task %d refused: %s", task_id, exc)
            except OrchestraError as exc:
                log.warning("purge of task %d incomplete: %s", task_id, exc)

    # ------------------------------------------------------------------ 3. expand
    def expand(self, report: CycleReport) -> None:
        with self.tx() as session:
            registered = session.scalars(
                select(Task.id).where(Task.status == TaskStatus.REGISTERED.value, Task.request.is_(None),
                                      dependencies.ready_clause()).order_by(Task.id)  # not while it waits
            ).all()
        for task_id in registered:
            with self.tx() as session:  # one task, one transaction
                expanded = expand_task(session, task_id, self.clock(), settings=self.settings)
            report.counts["jobs expanded"] += expanded
            self.job_statistics.add(expanded)

    # ------------------------------------------------------------------ 4. task states
    def advance_tasks(self, report: CycleReport) -> None:
        """Release or break scouting tasks (a broken task's queued jobs are killed); finish running
        tasks whose jobs are all final."""
        with self.tx() as session:
            self._advance(session, report)

    def _advance(self, session: Session, report: CycleReport) -> None:
        threshold = self.settings.scheduler.scout_success_threshold
        now = self.clock()
        connection = session.connection()
        # One read for the three steps below (issue 18: this runs at every short pass); a scouting
        # verdict changes what the later steps must see, so then they read again.
        tasks = [_TaskToAdvance(*row) for row in self._sql.to_advance.rows(connection.connection, connection.dialect)]
        scouting = [(t.id, t.n_scouts) for t in tasks if t.status == TaskStatus.SCOUTING.value]
        progress = scout_progress(session, [task_id for task_id, _ in scouting])
        moved = False
        for task_id, n_scouts in scouting:
            succeeded, failed = progress[task_id]
            verdict = scout_verdict(succeeded, failed, n_scouts, threshold)
            if verdict == TaskStatus.RUNNING:
                released = session.execute(
                    update(JOBS).where(JOBS.c.task_id == task_id, JOBS.c.status == JobStatus.HELD.value)
                    .values(status=JobStatus.QUEUED.value, queued_at=now)
                ).rowcount
                self.job_statistics.add(released)
                # The released jobs never ran: the task's queue is read from its first job again.
                session.execute(update(TASKS).where(TASKS.c.id == task_id).values(
                    status=TaskStatus.RUNNING.value, released_at=now, updated_at=now,
                    n_queued=TASKS.c.n_queued + released, queue_from=0))
                report.counts["tasks released"] += 1
                moved = True
            elif verdict == TaskStatus.BROKEN:
                session.execute(update(TASKS).where(TASKS.c.id == task_id).values(
                    status=TaskStatus.BROKEN.value, reason=self._broken_reason(session, task_id),
                    updated_at=now, finished_at=now))
                report.counts["tasks broken"] += 1
                moved = True
                outbox.task_ended(session, self.settings, task_id, "broken", now)  # its scouts failed
        # A broken task runs nothing more: its queued jobs (the scouts not started yet; any job of
        # a task broken at dispatch, see `_trusted_roots`) end KILLED with the reason, and a
        # retry re-queues them. Its held jobs stay held (a retry releases them after its scouts);
        # scouts already running end on their own (`task show` reports them).
        broken = (connection.execute(_BROKEN_WITH_QUEUED).all() if moved
                  else [(t.id, t.reason) for t in tasks if t.status == TaskStatus.BROKEN.value])
        for task_id, why in broken:
            report.counts["jobs cancelled"] += session.execute(
                update(JOBS).where(JOBS.c.task_id == task_id, JOBS.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.KILLED.value, reason=f"its task is broken: {why}", ended_at=now)
            ).rowcount
            session.execute(update(TASKS).where(TASKS.c.id == task_id).values(n_queued=0, updated_at=now))
        running = (connection.execute(_RUNNING_DRAINED).scalars().all() if moved or broken
                   else [t.id for t in tasks if t.status == TaskStatus.RUNNING.value])
        for task_id in running:  # none queued (n_queued = 0): any held or live?
            busy = session.scalar(select(exists().where(JOBS.c.task_id == task_id, settled(JobStatus.HELD.value))
                                         | live_jobs_exist(task_id)))
            if busy:
                continue
            counts = self._final_counts(session, [task_id]).get(task_id, {})
            status = final_task_status(counts.get(JobStatus.SUCCEEDED, 0), counts.get(JobStatus.FAILED, 0),
                                       counts.get(JobStatus.KILLED, 0))
            reason = None if status == TaskStatus.COMPLETED else (
                f"{counts.get(JobStatus.FAILED, 0)} job(s) failed after all retries, "
                f"{counts.get(JobStatus.KILLED, 0)} killed; `maestro task retry` re-queues them")
            session.execute(update(TASKS).where(TASKS.c.id == task_id).values(
                status=status.value, reason=reason, updated_at=now, finished_at=now))
            report.counts[f"tasks {status.value}"] += 1
            outbox.task_ended(session, self.settings, task_id, status.value, now)

    @staticmethod
    def _final_counts(session: Session, task_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        if not task_ids:
            return {}
        final = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.KILLED.value)
        return settled_counts(session, task_ids, *final)

    @staticmethod
    def _broken_reason(session: Session, task_id: int) -> str:
        from orchestra.reasons import ended

        rows = session.execute(
            select(JOBS.c.exit_code, JOBS.c.reason, TASKS.c.max_time)
            .join(TASKS, TASKS.c.id == JOBS.c.task_id).where(
                JOBS.c.task_id == task_id, JOBS.c.is_scout.is_(True), JOBS.c.status == JobStatus.FAILED.value)
        ).all()
        # No count and no job list: how many scouts had ended when the task broke depends on timing
        # (scouts still running then end later, counted in the job states); `maestro task show`
        # lists the failed scouts by job id, live. The distinct reasons are what to fix.
        reasons = sorted({ended("failed", code, why, limit) for code, why, limit in rows})
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else "")
        return (f"its scouts failed ({shown}); fix the command or image, then `maestro task retry` runs the "
                "scouts again (`maestro task show` lists the failed scouts and their logs)")

    # ------------------------------------------------------------------ 5. fill free slots
    def fill(self, report: CycleReport) -> None:
        """Decide and record what starts (step `dispatch`), then start it (step `launch`: the
        backend's creates and the record of their answers)."""
        now = self.clock()
        with report.step("dispatch"), self.tx() as session:
            plan, info = self._plan(session, now)
            specs = self._dispatch(session, plan, info, now, report) if plan else []
        if not specs:
            return
        with report.step("launch"):
            self._launch(specs, now, report)

    def _launch(self, specs: Sequence[LaunchSpec], now: float, report: CycleReport) -> None:
        """Ask each cluster's backend to start its recorded attempts; record what it answered."""
        crashpoint("after-dispatch-recorded")
        report.counts["started"] += len(specs)
        # The deadlines of what starts now (reconcile recomputes them from the recorded starts).
        ends = [now + spec.max_time for spec in specs if spec.max_time] + [self.next_deadline]
        self.next_deadline = min((end for end in ends if end is not None), default=None)
        by_cluster: dict[str, list[LaunchSpec]] = defaultdict(list)
        for spec in specs:
            by_cluster[spec.cluster.name].append(spec)
        for cluster, cluster_specs in by_cluster.items():
            backend = self.backend(cluster)
            launched = backend.launch(cluster_specs)
            crashpoint("after-launch")
            put_back = self._acknowledge(cluster_specs, launched, report,
                                         accepted_only=getattr(backend, "starts_pending", False))
            if put_back:
                backend.release(put_back)  # whatever the refused launch left (e.g. a prepared cgroup)

    def _plan(self, session: Session, now: float,
              seen: _Observed | None = None) -> tuple[list[tuple[int, int]], dict[int, DispatchInfo]]:
        """(task id, how many of its jobs) to dispatch now, decided by the fair-share policy, and
        what dispatch needs of those tasks (read by the same statement, `PolicyView.dispatch`).

        The input comes from `services.queue.policy_input`, the same function behind `maestro queue`
        and `maestro job why`, so what users are told is what this step decides. A short pass
        (`seen`: its survey, whose ends are recorded in this transaction) hands it the running
        counts and the holds it already knows instead of having them read again (issue 18): the
        live attempts are the surveyed ones minus the ended (only the scheduler creates or ends
        attempts), and the holds are the ones this scheduler keeps (their only writer), once a
        full cycle has read them.
        """
        running = held = None
        if seen is not None and self._holds_known:
            ended = {e.attempt.id for e in seen.endings}
            counts = Counter((a.cluster, a.queue, a.owner_id) for a in seen.live if a.id not in ended)
            running = [(c, q, o, n) for (c, q, o), n in counts.items()]
            held = self.holds
        view = policy_input(session, self.settings, now, running=running, held=held)
        self.holds = dict(view.holds)
        self._holds_known = True
        if not view.tasks or not view.free.any():
            return [], {}
        take = fairshare.allocate(view.inp, self.settings.fairshare, slot_seconds=self.settings.scheduler.interval)
        return [(view.tasks[i].id, int(take[i])) for i in np.flatnonzero(take)], view.dispatch

    def _dispatch(self, session: Session, plan: Sequence[tuple[int, int]], task_info: Mapping[int, DispatchInfo],
                  now: float, report: CycleReport) -> list[LaunchSpec]:
        """Record the attempts (STARTING, names fixed) of the head of each chosen task's queue.

        `task_info`: the planned tasks' columns, as `_plan` read them in this transaction. Each
        job's output directory and log live under its task's output root recomputed and checked
        here (see `_trusted_roots`), not under paths read from its rows.
        """
        roots = self._trusted_roots(session, [task_info[task_id] for task_id, _ in plan], now)
        rows = start_queue_heads(session, [(task_id, n) for task_id, n in plan if task_id in roots],
                                 self._sql.start_jobs, report.writing)
        if not rows:
            return []
        specs = []
        attempts = []
        for r in rows:
            t = task_info[r.task_id]
            cluster, root = roots[r.task_id]
            name = backend_name(r.task_id, r.index, r.attempts, self.installation)
            if r.queued_at is not None:
                report.queued_at[name] = r.queued_at  # its wait is observed if the launch is accepted
            log_path = f"{state_root_text(cluster.storage, self.installation)}/{name}/log"
            specs.append(LaunchSpec(name, r.task_id, t.name, r.id, r.index, r.attempts, t.user, cluster.queues[t.queue],
                                    t.image, r.command, expansion.output_dir(root, r.index), log_path, t.max_time,
                                    cluster))
            attempts.append((r.id, r.attempts, name, t.cluster, AttemptStatus.STARTING.value, log_path,
                             queue_charge(self.settings, t.cluster, t.queue), now))
        with report.writing():
            bulk_insert(session, ATTEMPTS, ATTEMPT_COLUMNS, attempts)
        return specs

    def _trusted_roots(self, session: Session, tasks: Iterable[Any], now: float) -> dict[int, tuple[ClusterConfig, str]]:
        """(cluster, output root) of each task whose root, recomputed from the cluster's storage,
        the owner's name and the task's name, lies inside the storage without a symbolic link on
        the way. Any other task is broken with the reason and gets no slot."""
        roots: dict[int, tuple[ClusterConfig, str]] = {}
        for t in tasks:
            try:
                cluster = self.settings.cluster(t.cluster)
                roots[t.id] = (cluster, str(trusted_output_root(cluster.storage, t.user, t.name)))
            except OrchestraError as exc:
                log.warning("task %d not dispatched: %s", t.id, exc)
                session.execute(update(TASKS).where(TASKS.c.id == t.id).values(
                    status=TaskStatus.BROKEN.value, reason=f"its output directory cannot be trusted: {exc}",
                    updated_at=now, finished_at=now))
                outbox.task_ended(session, self.settings, t.id, "broken", now)
        return roots

    def _acknowledge(self, specs: Sequence[LaunchSpec], launched: Sequence, report: CycleReport,
                     accepted_only: bool = False) -> list[str]:
        """Record what the backend started; a refused create fails the attempt (and maybe the job).

        `accepted_only` (a backend whose objects wait before they run: a pod is Pending until a node
        takes it): the attempts stay `starting`; the survey moves them to `running` when they run,
        and meanwhile notes why they wait (Unschedulable, ImagePullBackOff...).

        A create refused for the cluster's own reason (`Launched.infra`: storage full, fork refused)
        is not the job's fault: the job goes back to the queue uncharged (`_put_back`) and its queue
        is held until a probe launch succeeds (scheduler/holds.py); a launch that succeeds in a held
        queue clears its hold. Returns the backend names put back (the caller releases them).

        The accepted launches' record (running, host, pid, start) is written here, or, with
        `defer_acks` and nothing else to write, by the next fenced transaction.
        """
        now = self.clock()
        ok = [(s, l) for s, l in zip(specs, launched) if l.error is None]
        self._live_left += len(ok)
        infra = [(s, l) for s, l in zip(specs, launched) if l.error is not None and l.infra]
        refused = [(s, l) for s, l in zip(specs, launched) if l.error is not None and not l.infra]
        for s, _ in ok:
            report.dispatched[(s.cluster.name, s.queue.name)] += 1
            if s.backend_name in report.queued_at:
                report.waits.append((s.cluster.name, s.queue.name, now - report.queued_at[s.backend_name]))
        for s, _ in infra:
            report.backend_errors[(s.cluster.name, "launch_infra")] += 1
        for s, _ in refused:
            report.backend_errors[(s.cluster.name, "launch_refused")] += 1
        failing: dict[holds.Key, str] = {}
        for s, l in infra:
            failing.setdefault((s.cluster.name, s.queue.name), l.error)
        started = {(s.cluster.name, s.queue.name) for s, _ in ok} & set(self.holds)
        if not accepted_only:
            self._unacked.update((s.backend_name, _Ack(s.job_id, l.host, l.pid, l.pid_start, l.started_at or now,
                                                       s.cluster.name))
                                 for s, l in ok)
        plain = not (infra or refused or failing or started)  # only launches that started, in no held queue
        if plain and (self.defer_acks or not self._unacked):
            return []  # nothing else to write: the acknowledgements wait for the next transaction
        outcome = None
        with self.tx(acks=False) as session:
            if plain and not self._sqlite:
                # Only launches that started (issue 18): their record need not wait for the WAL
                # flush on PostgreSQL (an fsync, ~1 ms here, at every short pass). Nothing waits on
                # it: if the server itself crashed before flushing it, the attempts would stay
                # `starting` and the next survey confirms them as after a scheduler crash between a
                # create and its record; any later synchronous commit (the next pass's records,
                # before any backend call) flushes it first. SQLite's commits do not fsync anyway.
                session.execute(_ASYNC_COMMIT)
            if infra:
                self._put_back(session, infra, report)
            if failing or started:
                outcome = holds.record(session, failing, started, now)
            self._write_acks(session, report)
            if refused:
                live = {a.backend_name: a for a in self.live_attempts(session, list({s.task_id for s, _ in refused}))}
                endings = [Ending(live[s.backend_name], AttemptStatus.FAILED, None, l.error, now, final=l.final)
                           for s, l in refused if s.backend_name in live]
                self._record_endings(session, endings, report)
        if outcome is not None:  # committed: now the cache and the log
            for key, hold in outcome.changed.items():
                if hold is None:
                    self.holds.pop(key, None)
                else:
                    self.holds[key] = hold
            for level, line in outcome.lines:
                log.log(level, line)
        return [s.backend_name for s, _ in infra]

    def _put_back(self, session: Session, launches: Sequence[tuple[LaunchSpec, Any]], report: CycleReport) -> None:
        """Launches the cluster refused for a reason of its own: the attempt never was (its row goes,
        the job's attempt count goes back, no failure, no usage; its reason stays what it was: the
        hold is its queue's, and `maestro queue` / `maestro job why` say it), and the job is queued
        again, at the head of its task's queue. Its next attempt reuses the same number, hence the
        same backend name: a create that did reach the backend after all is adopted, never twice."""
        deleted = session.execute(
            delete(ATTEMPTS).where(one_of(session, ATTEMPTS.c.backend_name, [s.backend_name for s, _ in launches]),
                                   ATTEMPTS.c.status == AttemptStatus.STARTING.value)
            .returning(ATTEMPTS.c.job_id, ATTEMPTS.c.stopping)).all()
        # A job killed by its user while its launch was on the way (`job kill`, `task kill` mark the
        # attempt `stopping`) ends killed: putting it back would lose the kill.
        killed = {r.job_id: r.stopping for r in deleted if r.stopping and r.stopping != "timeout"}
        gone = [r.job_id for r in deleted if r.job_id not in killed]
        rows = session.execute(
            update(JOBS).where(one_of(session, JOBS.c.id, gone), JOBS.c.status == JobStatus.STARTING.value)
            .values(status=JobStatus.QUEUED.value, attempts=JOBS.c.attempts - 1, started_at=None)
            .returning(JOBS.c.id, JOBS.c.task_id, JOBS.c.index, JOBS.c.attempts)).all()
        add_queued(session, Counter(r.task_id for r in rows),
                   lowest_fresh((r.task_id, r.index, r.attempts) for r in rows))  # a first launch: fresh again
        if killed:
            now = self.clock()
            bulk_update(session, JOBS, [{"id": job_id, "reason": why} for job_id, why in killed.items()],
                        where=[_JOB_STARTING],
                        fixed={"status": JobStatus.KILLED.value, "attempts": JOBS.c.attempts - 1, "ended_at": now})
            report.counts["killed"] += len(killed)
        report.counts["started"] -= len(launches)
        report.counts["put back (queue held)"] += len(rows)
