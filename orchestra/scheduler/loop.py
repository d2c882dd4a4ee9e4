"""The scheduler service: hold the lease, run a cycle every `interval`, and an early one when work
arrives (a NOTIFY on PostgreSQL, a change counter polled on SQLite, a child process exiting).

Between full cycles, a job's end (SIGCHLD from a local child, a backend's own event such as the
Kubernetes pod watch calling `Waker.poke`, or a backend that asks to be polled) triggers a short
pass (`Scheduler.cycle(full=False)`): the freed slot is refilled within milliseconds instead of at
the next interval, while the full cycle keeps its own schedule.

`--once` runs one cycle (cron), `--until-idle` cycles until nothing can run without a user's action
(small installs, tests, demos; its last line says what remains). SIGTERM and SIGINT finish the
current step and stop cleanly.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select as sql_select
from sqlalchemy.exc import DBAPIError

from orchestra.backends.base import BackendUnavailable
from orchestra.db import faults
from orchestra.db.engine import is_sqlite
from orchestra.db.models import Attempt, ChangeCounter, Task
from orchestra.metrics import Metrics
from orchestra.scheduler.cycle import CycleReport, Scheduler, describe_counts
from orchestra.scheduler import holds as queue_holds
from orchestra.scheduler.lease import LeaseLost
from orchestra.notify.postman import Postman
from orchestra.services import dependencies, retention
from orchestra.services.history import Recorder
from orchestra.services.context import WAKEUP_CHANNEL, Context, wake_socket_path
from orchestra.services.status import Heartbeat
from orchestra.states import FINAL_TASK, LIVE_ATTEMPT, TaskStatus

log = logging.getLogger("orchestra.scheduler")
OUTAGE_MAX_WAIT = 60.0  # seconds between tries while a backend stays unavailable
# Seconds a launch's record (running, pid) may wait for the next pass's transaction before the loop
# writes it alone (`Scheduler.defer_acks`): at turnover the next pass comes first and carries it.
ACK_DELAY = 0.1
# After a pass that ended or started jobs, the loop lets more ends arrive before it looks again:
# this fraction of the pass's own duration, at most GATHER_MAX seconds (see `gather`).
GATHER_FRACTION = 0.05
GATHER_MAX = 0.005
GATHER_UNTIL = 16  # jobs ended and started by a pass from which no pause follows it


@dataclass
class LoopOptions:
    once: bool = False
    until_idle: bool = False
    interval: float | None = None
    max_cycles: int | None = None


def _socket_alive(path: Path) -> bool:
    """Whether a live process is bound to the datagram socket at `path` (connect sends nothing)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(path))
        except PermissionError:  # someone else's: not ours to replace
            return True
        except OSError:  # missing, refused (left by a dead scheduler), not a socket, too long...
            return False
    return True


POKE = b"\xff"  # what `poke` writes to the pipe: not a signal number, which set_wakeup_fd writes


class Waker:
    """Sleeps until the next cycle is due or something happened: a NOTIFY (PostgreSQL), a byte on
    its wake socket or else a change of the CLI's counter (SQLite, polled), a SIGCHLD from a local
    job, a `poke` from a backend's thread, or a stop signal.

    The wake socket (SQLite, the personal mode: one machine): a Unix datagram socket
    `ORCHESTRA_HOME/scheduler.wake`, mode 0600 from the start (bound inside a fresh 0700
    directory, then moved into place), to which `Context.wake_scheduler` sends a byte after its
    commit; a new task starts without waiting for the next counter poll. Best effort on both
    sides: if it cannot be bound (a path too long for a socket address, a read-only home) or a
    live scheduler's socket is there already (a second scheduler waiting for the lease), the
    counter poll alone wakes it, and an unbound waker tries again at each poll."""

    def __init__(self, ctx: Context, poll: float) -> None:
        self.ctx = ctx
        self.poll = poll
        self.stop = False
        self.stop_signal = ""  # SIGTERM, SIGINT: for the stop line
        self._lock = threading.Lock()
        self._closed = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._listener = None
        self._counter = self.counter()
        self._sock: socket.socket | None = None
        self._sock_id: tuple[int, int] | None = None  # (device, inode) of the socket file bound
        self._bind_later = False  # another live waker has the socket: try again while waiting
        if not is_sqlite(ctx.engine):
            self._listen()
        else:
            self._bind()

    def _bind(self) -> None:
        """Listen on the wake socket (SQLite), unless a live scheduler does already."""
        path = wake_socket_path(self.ctx.settings)
        self._bind_later = _socket_alive(path)
        if self._bind_later:
            return
        private = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            private = Path(tempfile.mkdtemp(prefix=".wake-", dir=path.parent))  # 0700: nobody else reaches it
            staged = private / "s"
            sock.bind(str(staged))
            os.chmod(staged, 0o600)  # only the owner may send (connect needs write permission)
            os.replace(staged, path)  # in place with its mode already safe
            st = os.stat(path)
            sock.setblocking(False)
        except OSError as exc:
            log.debug("no wake socket at %s (%s): polling the change counter", path, exc)
            sock.close()
            return
        finally:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
        self._sock, self._sock_id = sock, (st.st_dev, st.st_ino)

    def _listen(self) -> None:
        """A connection of its own that LISTENs for the CLIs' NOTIFY (PostgreSQL); None while the
        server is away (retried on each wait)."""
        try:
            raw = self.ctx.engine.raw_connection()
            raw.driver_connection.set_isolation_level(0)  # type: ignore[union-attr]  # autocommit: LISTEN at once
            raw.driver_connection.cursor().execute(f"LISTEN {WAKEUP_CHANNEL}")  # type: ignore[union-attr]
        except DBAPIError:
            return
        except Exception:  # noqa: BLE001 - a raw psycopg2 error before SQLAlchemy wraps it
            return
        self._listener = raw

    def _drop_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.invalidate()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
            self._listener = None

    def counter(self) -> int:
        with self.ctx.engine.connect() as conn:
            return conn.execute(sql_select(ChangeCounter.value).where(ChangeCounter.name == "cli")).scalar() or 0

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # its byte on the wakeup fd is what counts
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)

    def _on_stop(self, signum: int = 0, *_: object) -> None:
        self.stop = True
        self.stop_signal = signal.Signals(signum).name if signum else "a stop signal"

    def poke(self) -> None:
        """Wake `wait` from any thread ("event": a short pass follows). Safe after `close`: the
        descriptor could belong to another file by then, so a closed waker writes nothing."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write, POKE)
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already: `wait` returns anyway

    def wait(self, seconds: float) -> str:
        """Block up to `seconds`; returns why it woke up."""
        deadline = time.monotonic() + seconds
        while not self.stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return "interval"
            poll = self.poll
            if self._listener is None and not is_sqlite(self.ctx.engine):
                self._listen()  # after an outage: NOTIFYs wake us again once the server is back
                if self._listener is None:
                    poll = min(poll, 1.0)  # the server is still away: try again soon
            if self._bind_later and not self._closed:
                self._bind()  # the scheduler that held it may have stopped
            fds = [self._read] + ([self._listener.driver_connection] if self._listener else [])  # type: ignore[attr-defined]
            if self._sock is not None:
                fds.append(self._sock)
            ready, _, _ = select.select(fds, [], [], min(left, poll))
            if self._read in ready:
                got = b""
                try:
                    while chunk := os.read(self._read, 512):
                        got += chunk
                except BlockingIOError:
                    pass
                return "event" if got and not got.strip(POKE) else "signal"
            if self._sock is not None and self._sock in ready:
                try:
                    while self._sock.recv(64):
                        pass
                except OSError:  # BlockingIOError: drained
                    pass
                try:
                    self._counter = self.counter()  # what the sender's commit changed: no second wake for it
                except DBAPIError:
                    pass
                return "change"
            if self._listener is not None and ready:
                conn = self._listener.driver_connection  # type: ignore[attr-defined]
                try:
                    conn.poll()
                except Exception as exc:  # noqa: BLE001 - the server went away: listen again later
                    log.warning("lost the LISTEN connection (%s); listening again when the database is back",
                                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    self._drop_listener()
                    return "notify"  # a full cycle: it finds out whether the database is back
                if conn.notifies:
                    conn.notifies.clear()
                    return "notify"
            try:
                value = self.counter()
            except DBAPIError:
                continue  # the database is away: the cycle's backoff reports it
            if value != self._counter:
                self._counter = value
                return "change"
        return "stop"

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._sock is not None:
            path = wake_socket_path(self.ctx.settings)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == self._sock_id:  # still ours, not a successor's
                    os.unlink(path)
            self._sock.close()
            self._sock = None
        with self._lock:
            self._closed = True
            os.close(self._read)
            os.close(self._write)


class PassSummary:
    """Short passes come by the hundred per second under load: one line per `every` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.seconds = 0.0
        self.counts: Counter[str] = Counter()
        self.since = time.monotonic()

    def add(self, report: CycleReport, say: Callable[[str], None]) -> None:
        self.n += 1
        self.seconds += report.seconds
        self.counts.update(report.counts)
        if time.monotonic() - self.since >= self.every:
            self.flush(say)

    def flush(self, say: Callable[[str], None]) -> None:
        if self.n:
            say(f"{self.n} short pass(es) in {time.monotonic() - self.since:.1f} s: {describe_counts(self.counts)} "
                f"({1000 * self.seconds / self.n:.1f} ms each)")
        self.reset()


def idle_summary(ctx: Context) -> str | None:
    """`--until-idle`'s last line once nothing can run without a user's action, else None.

    Not idle while there is a live attempt, a pending kill or delete, a registered task that waits
    for no dependency (the next full cycle expands it), queued jobs of a scouting or running task in
    a queue with slots that is not held, or queued jobs of a broken task (the next pass kills them).
    Read right after a pass, whose task step has settled every other scouting or running task. The
    line says what remains, e.g. `idle: 2 tasks broken, 1 killed; nothing can run without a user's
    action`. A held queue (storage full, the cluster's API away: scheduler/holds.py) counts as
    stuck: its probe may take minutes and often needs an admin, so `--until-idle` stops and says
    why rather than backing off for ever."""
    with_slots = {(c.name, q.name) for c in ctx.settings.clusters.values() for q in c.queues.values() if q.slots}
    with ctx.engine.connect() as conn:
        if conn.execute(sql_select(func.count()).select_from(Attempt).where(
                Attempt.status.in_([s.value for s in LIVE_ATTEMPT]))).scalar():
            return None
        rows = conn.execute(
            sql_select(Task.status, Task.cluster, Task.queue, func.count(), func.count(Task.request),
                       func.sum(Task.n_queued))
            .where(Task.status != TaskStatus.COMPLETED.value)
            .where((Task.status != TaskStatus.REGISTERED.value) | dependencies.ready_clause())
            .group_by(Task.status, Task.cluster, Task.queue)).all()
        # Registered tasks waiting for a dependency: nothing for them until it is done (if it can
        # be, the dependency itself is work that keeps the loop going).
        waiting = conn.execute(sql_select(func.count()).select_from(Task).where(
            Task.status == TaskStatus.REGISTERED.value, ~dependencies.ready_clause())).scalar() or 0
        held = queue_holds.read(conn)  # type: ignore[arg-type]  # a Connection executes as a Session does
    remaining: Counter[str] = Counter()
    unrunnable = 0  # queued jobs in a queue without slots (or not configured)
    in_held: Counter[tuple[str, str]] = Counter()  # queued jobs per held queue
    for status, cluster, queue, n, requests, queued in rows:
        startable = status in (TaskStatus.SCOUTING, TaskStatus.RUNNING) and (cluster, queue) in with_slots
        runnable = queued and (status == TaskStatus.BROKEN or (startable and (cluster, queue) not in held))
        if requests or status == TaskStatus.REGISTERED or runnable:
            return None
        remaining[status] += n
        if queued and startable:
            in_held[(cluster, queue)] += queued
        else:
            unrunnable += queued or 0
    listed: list[tuple[str, int]] = [(status.value, remaining[status]) for status in TaskStatus if remaining[status]]
    if waiting:
        listed.append(("waiting for a dependency", waiting))
    if not listed:
        return "idle: nothing queued or running"
    parts = [f"{n} {('task ' if n == 1 else 'tasks ') if i == 0 else ''}{status}"
             for i, (status, n) in enumerate(listed)]
    stuck = f"; {unrunnable} queued job(s) in queues without slots" if unrunnable else ""
    for (cluster, queue), n in sorted(in_held.items()):
        stuck += f"; {n} queued job(s) in {cluster}/{queue}, held: {held[(cluster, queue)].reason}"
    return f"idle: {', '.join(parts)}{stuck}; nothing can run without a user's action"


def daily_retention(ctx: Context, scheduler: Scheduler, say: Callable[[str], None]) -> None:
    """After a full cycle: the retention run when due (once a day; services/retention.py), in the
    scheduler's fenced transactions and on its clock. A database outage ends it for now (the next
    full cycle tries again); it never stops the service."""
    try:
        report = retention.daily(ctx, scheduler.tx, scheduler.clock)
    except DBAPIError as exc:
        if not faults.is_outage(exc):
            raise
        say(f"retention interrupted: {faults.describe(exc)}; trying again after the next full cycle")
        return
    if report is not None:
        say(report.line())


def wait_beating(waker: Waker, seconds: float, heartbeat: Heartbeat) -> str:
    """`waker.wait(seconds)`, writing the heartbeat (which renews the lease) at least every
    `heartbeat.every` seconds meanwhile: an idle scheduler stays visibly alive."""
    deadline = time.monotonic() + seconds
    while True:
        woke = waker.wait(min(max(0.0, deadline - time.monotonic()), heartbeat.every))
        if woke != "interval" or time.monotonic() >= deadline:
            return woke
        heartbeat.beat()


def gather(report: CycleReport) -> None:
    """Pause briefly after a pass that turned jobs over, so that the next pass handles the ends that
    come together rather than one each (issue 18; Slurm's `sched_min_interval` does the same).

    A pass costs a fixed part (its transaction, the policy, the lease) plus a part per job, and
    jobs launched in the same pass tend to end close together. At 2 slots on PostgreSQL (2,000
    trivial jobs, the bench's service loop), passes that each took the first end they found made
    421-509 passes and 135-150 jobs/s (scheduler CPU 3.6-4.1 ms/job); with this pause, 305-318
    passes and 163-174 jobs/s (2.9-3.1 ms/job). The pause is a fraction of the pass just made, so it adds
    at most that fraction to the turnaround, and is capped so a slow pass never makes the next wait
    long. Ends that come meanwhile stay in the waker's pipe.

    A pass that handled GATHER_UNTIL jobs or more is not followed by the pause: its fixed part is
    spread over them already, and pausing would only keep the slots its ends freed empty for
    longer. At 64 slots (passes of ~80 ms with ~60 ends and launches each, then a 4 ms pause),
    2,000-4,000 trivial jobs, alternated pairs, 2026-12-02: SQLite 811 against 771 jobs/s (4 pairs;
    faster in 6 of 7 pairs over two series), PostgreSQL 768 against 697 (3 pairs, all faster).
    Passes of a few jobs (2 slots) pause as before.

    The pause lasts at least as long as the pass's launches took: jobs started one after the other
    end about as far apart as they were started, and a pause shorter than that let the next pass
    find one end of the two, the other ending just after its survey (at 2 slots a faster pass,
    prepared reads on PostgreSQL, had dropped to 1.1 jobs a pass and 165 jobs/s). Alternated
    pairs, 1,500 trivial jobs, 2026-12-02: PostgreSQL 229 and 248 jobs/s against 217 and 222 (the
    code without the prepared reads), SQLite 330, 348 and 294 against 317, 288 and 233, with
    ~30 % less scheduler CPU a job."""
    handled = report.counts["started"] + sum(report.ended.values())
    if 0 < handled < GATHER_UNTIL:
        time.sleep(min(max(GATHER_FRACTION * report.seconds, report.steps.get("launch", 0.0)), GATHER_MAX))


def wait_acknowledging(waker: Waker, seconds: float, heartbeat: Heartbeat, scheduler: Scheduler,
                       then: Callable[[], None] | None = None) -> str:
    """`wait_beating`, which first writes the launches' deferred records if no event came within
    ACK_DELAY: a job that runs on is shown running (with its pid) at most that late. `then` runs
    after they are written (the metrics' gauges, refreshed to show them)."""
    if not scheduler.unacked or seconds <= ACK_DELAY:
        return wait_beating(waker, seconds, heartbeat)
    deadline = time.monotonic() + seconds
    woke = wait_beating(waker, ACK_DELAY, heartbeat)
    if woke != "interval":
        return woke  # the pass this event starts writes them
    write_acks(scheduler)
    if then is not None:
        then()
    return wait_beating(waker, max(0.0, deadline - time.monotonic()), heartbeat)


def refresh_metrics(ctx: Context, metrics: Metrics, scheduler: Scheduler) -> None:
    try:
        metrics.refresh(ctx, scheduler.holds)
    except DBAPIError as exc:  # the gauges stay as they were: the next cycle says why
        log.warning("metrics not refreshed: %s", faults.describe(exc))


def write_acks(scheduler: Scheduler) -> None:
    """The deferred launch records, now; a database outage leaves them to the next pass's
    transaction (the cycle reports the outage), a lost lease ends the loop as in a cycle."""
    try:
        scheduler.write_acks()
    except DBAPIError as exc:
        if not faults.is_outage(exc):
            raise
        log.warning("launch records not written yet: %s", faults.describe(exc))


def _unavailable_cluster(ctx: Context, exc: Exception) -> str:
    """The cluster a BackendUnavailable came from: only remote backends raise it, so with one such
    cluster it is that one (the exception itself does not say)."""
    remote = [name for name, c in ctx.settings.clusters.items() if c.backend != "local"]
    return str(getattr(exc, "cluster", "") or (remote[0] if len(remote) == 1 else "unknown"))


def run(ctx: Context, options: LoopOptions, say: Callable[[str], None] = print, metrics: Metrics | None = None,
        on_signals: Callable[[], None] | None = None) -> int:
    """The service loop; returns the process exit code. With `metrics`, each cycle's report feeds
    them and their gauges are refreshed after it (orchestra/metrics.py). `on_signals` runs once
    SIGTERM and SIGINT are the loop's: whatever announces the service (the metrics endpoint) starts
    there, so a stop sent as soon as it answers is a clean stop, not the signal's default death."""
    scheduler = Scheduler(ctx)
    scheduler.defer_acks = True  # written by the next pass, or before the loop waits or stops
    interval = options.interval if options.interval is not None else ctx.settings.scheduler.interval
    waker = Waker(ctx, ctx.settings.scheduler.poll_interval)
    waker.install_signals()
    if on_signals is not None:
        on_signals()
    if not options.once:
        scheduler.set_wakeup(waker.poke)  # e.g. the Kubernetes pod watch: a pod ended
    announced = False
    heartbeat = Heartbeat(scheduler.tx, ctx.settings.scheduler.lease_ttl)
    started = clean = False  # clean: a stop that sets `stopped` (a signal, --until-idle idle)
    stop_reason = ""
    postman: Postman | None = None  # [notify] enabled: sends the outbox in its own thread, never in a cycle
    try:
        while not scheduler.lease.try_acquire():
            holder, expires = scheduler.lease.current()
            if options.once:
                say(f"another scheduler ({holder}) holds the lease until {time.ctime(expires)}; skipping this cycle")
                stop_reason = "--once: another scheduler holds the lease"
                return 0
            if not announced:
                say(f"waiting: another scheduler ({holder}) is active; taking over if it stops")
                announced = True
            if waker.wait(min(5.0, ctx.settings.scheduler.lease_ttl / 3)) == "stop":
                return 0
        say(f"scheduler {scheduler.lease.holder} started (interval {interval:g} s)")
        heartbeat.start()
        started = True
        if ctx.settings.notify.enabled:
            postman = Postman(ctx)
            postman.start()
        for name, cluster in ctx.settings.clusters.items():
            describe = getattr(scheduler.backend(name), "describe", None) if cluster.backend == "local" else None
            if describe is not None:
                say(f"cluster {name}: {describe()}")  # as whom jobs run and how they are contained
        cycles = 0
        passes = PassSummary()
        history = Recorder()  # the usage history: starts of every pass, one record per full cycle
        outage = 0.0  # seconds of the last backoff while a backend is unavailable
        next_full = 0.0  # monotonic time the next full cycle is due: at once
        woke = "start"
        while not waker.stop:
            # A full cycle when it is due or a user's command asked for one (new task, kill...);
            # a short pass when a job ended (SIGCHLD, a backend's event) or a backend asked to be polled.
            full = woke in ("start", "notify", "change") or time.monotonic() >= next_full
            try:
                report: CycleReport = scheduler.cycle(full=full)
            except (BackendUnavailable, DBAPIError) as exc:
                if options.once or (isinstance(exc, DBAPIError) and not faults.is_outage(exc)):
                    raise
                # Every step commits before the backend call that depends on it, so an interrupted
                # cycle loses nothing; the next one (full, after a backoff) carries on. A database
                # fault (lock timeout, server restart, full disk) is an outage like a backend's.
                outage = min(OUTAGE_MAX_WAIT, max(1.0, outage * 2))
                if metrics is not None and isinstance(exc, BackendUnavailable):
                    metrics.backend_unavailable(_unavailable_cluster(ctx, exc))
                why = faults.describe(exc) if isinstance(exc, DBAPIError) else str(exc)
                say(f"cycle interrupted: {why}; next try in {outage:.0f} s")
                next_full = 0.0
                woke = waker.wait(outage)
                continue
            outage = 0.0
            tasks_ended = any(report.counts[f"tasks {s.value}"] for s in FINAL_TASK)
            history.add(report)
            if metrics is not None:
                metrics.record(report)
            if full:
                cycles += 1
                next_full = time.monotonic() + interval
                passes.flush(say)
                say(report.line())
                history.write(scheduler.tx, scheduler.clock())  # a failed write is logged, never raised
                daily_retention(ctx, scheduler, say)
            else:
                passes.add(report, say)
                if tasks_ended:
                    # A task ended in this short pass: a task waiting for it (`--after`) is expanded
                    # by a full cycle, due now rather than one interval later.
                    next_full = 0.0
            heartbeat.beat(full=full)  # at most one write per second for short passes
            if postman is not None and (full or tasks_ended):
                postman.nudge()  # mails of tasks that ended (and retries due) go now, beside the cycles
            if metrics is not None and metrics.due(full):
                # After the pass's other writes: any fenced transaction (heartbeat, history) also
                # writes the launches' deferred records, which the gauges then show.
                refresh_metrics(ctx, metrics, scheduler)
            if options.once or (options.max_cycles and cycles >= options.max_cycles):
                break
            if options.until_idle and not scheduler.busy and (idle := idle_summary(ctx)) is not None:
                passes.flush(say)
                say(idle)  # what remains, waiting for a user's action
                break
            gather(report)
            wait = max(0.0, next_full - time.monotonic())
            if options.until_idle:
                wait = min(wait, 1.0)  # ends of an earlier scheduler's jobs are seen by polling
            poll = scheduler.poll_after()
            if poll is not None:
                wait = min(wait, poll)
            owed = metrics.refresh_in() if metrics is not None else None
            if owed is not None:
                wait = min(wait, owed)  # a short pass then, and the refresh it skipped
            woke = wait_acknowledging(waker, wait, heartbeat, scheduler,
                                      then=None if metrics is None else lambda: refresh_metrics(ctx, metrics, scheduler))
        write_acks(scheduler)
        passes.flush(say)
        if history.pending:  # starts of the short passes since the last full cycle: not lost at a stop
            history.write(scheduler.tx, scheduler.clock())
        clean = not options.once
        if not waker.stop:
            stop_reason = ("--once: cycle done" if options.once
                           else f"{cycles} cycle(s) done" if options.max_cycles and cycles >= options.max_cycles
                           else "--until-idle: idle")
        return 0
    except LeaseLost as exc:
        stop_reason = f"lease lost ({exc})"
        return 3
    except Exception as exc:
        stop_reason = f"error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
        raise
    finally:
        if started and clean:
            with contextlib.suppress(LeaseLost):
                heartbeat.stop()  # still under the lease: `stopped` says when
        stop_reason = stop_reason or (f"{waker.stop_signal} received" if waker.stop else "interrupted")
        if postman is not None:
            postman.stop()
        say(f"scheduler {scheduler.lease.holder} stopped: {stop_reason}")
        scheduler.lease.release()
        scheduler.close()
        waker.close()
        signal.set_wakeup_fd(-1)
