"""The scheduler service: hold the lease, run a cycle every `interval`, and an early one when work
arrives (a NOTIFY on PostgreSQL, a change counter polled on SQLite, a child process exiting).

Between full cycles, a job's end (SIGCHLD from a local child, a backend's own event such as the
Kubernetes pod watch calling `Waker.poke`, or a backend that asks to be polled) triggers a short
pass (`Scheduler.cycle(full=False)`): the freed slot is refilled within milliseconds instead of at
the next interval, while the full cycle keeps its own schedule.

`--once` runs one cycle (cron), `--until-idle` cycles until nothing is queued or running (small
installs, tests, demos). SIGTERM and SIGINT finish the current step and stop cleanly.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select as sql_select

from orchestra.backends.base import BackendUnavailable
from orchestra.db.engine import is_sqlite
from orchestra.db.models import Attempt, ChangeCounter, Task
from orchestra.scheduler.cycle import CycleReport, Scheduler, describe_counts
from orchestra.scheduler.lease import LeaseLost
from orchestra.services.context import WAKEUP_CHANNEL, Context
from orchestra.states import ACTIVE_TASK, LIVE_ATTEMPT

log = logging.getLogger("orchestra.scheduler")
OUTAGE_MAX_WAIT = 60.0  # seconds between tries while a backend stays unavailable


@dataclass
class LoopOptions:
    once: bool = False
    until_idle: bool = False
    interval: float | None = None
    max_cycles: int | None = None


POKE = b"\xff"  # what `poke` writes to the pipe: not a signal number, which set_wakeup_fd writes


class Waker:
    """Sleeps until the next cycle is due or something happened: a NOTIFY (PostgreSQL), a change of
    the CLI's counter (SQLite, polled), a SIGCHLD from a local job, a `poke` from a backend's
    thread, or a stop signal."""

    def __init__(self, ctx: Context, poll: float) -> None:
        self.ctx = ctx
        self.poll = poll
        self.stop = False
        self._lock = threading.Lock()
        self._closed = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._listener = None
        self._counter = self.counter()
        if not is_sqlite(ctx.engine):
            raw = ctx.engine.raw_connection()
            raw.set_isolation_level(0)  # autocommit: LISTEN takes effect at once
            raw.cursor().execute(f"LISTEN {WAKEUP_CHANNEL}")
            self._listener = raw

    def counter(self) -> int:
        with self.ctx.engine.connect() as conn:
            return conn.execute(sql_select(ChangeCounter.value).where(ChangeCounter.name == "cli")).scalar() or 0

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # its byte on the wakeup fd is what counts
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)

    def _on_stop(self, *_: object) -> None:
        self.stop = True

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
            fds = [self._read] + ([self._listener.driver_connection] if self._listener else [])  # type: ignore[attr-defined]
            ready, _, _ = select.select(fds, [], [], min(left, self.poll))
            if self._read in ready:
                got = b""
                try:
                    while chunk := os.read(self._read, 512):
                        got += chunk
                except BlockingIOError:
                    pass
                return "event" if got and not got.strip(POKE) else "signal"
            if self._listener is not None and ready:
                conn = self._listener.driver_connection  # type: ignore[attr-defined]
                conn.poll()
                if conn.notifies:
                    conn.notifies.clear()
                    return "notify"
            value = self.counter()
            if value != self._counter:
                self._counter = value
                return "change"
        return "stop"

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
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


def is_idle(ctx: Context) -> bool:
    """Nothing left to do: no active task and no live attempt."""
    with ctx.engine.connect() as conn:
        active = conn.execute(sql_select(func.count()).select_from(Task).where(
            Task.status.in_([s.value for s in ACTIVE_TASK]) | Task.request.is_not(None))).scalar()
        live = conn.execute(sql_select(func.count()).select_from(Attempt).where(
            Attempt.status.in_([s.value for s in LIVE_ATTEMPT]))).scalar()
    return not active and not live


def run(ctx: Context, options: LoopOptions, say: Callable[[str], None] = print) -> int:
    """The service loop; returns the process exit code."""
    scheduler = Scheduler(ctx)
    interval = options.interval if options.interval is not None else ctx.settings.scheduler.interval
    waker = Waker(ctx, ctx.settings.scheduler.poll_interval)
    waker.install_signals()
    if not options.once:
        scheduler.set_wakeup(waker.poke)  # e.g. the Kubernetes pod watch: a pod ended
    announced = False
    try:
        while not scheduler.lease.try_acquire():
            holder, expires = scheduler.lease.current()
            if options.once:
                say(f"another scheduler ({holder}) holds the lease until {time.ctime(expires)}; skipping this cycle")
                return 0
            if not announced:
                say(f"waiting: another scheduler ({holder}) is active; taking over if it stops")
                announced = True
            if waker.wait(min(5.0, ctx.settings.scheduler.lease_ttl / 3)) == "stop":
                return 0
        say(f"scheduler {scheduler.lease.holder} started (interval {interval:g} s)")
        for name, cluster in ctx.settings.clusters.items():
            describe = getattr(scheduler.backend(name), "describe", None) if cluster.backend == "local" else None
            if describe is not None:
                say(f"cluster {name}: {describe()}")  # as whom jobs run and how they are contained
        cycles = 0
        passes = PassSummary()
        outage = 0.0  # seconds of the last backoff while a backend is unavailable
        next_full = 0.0  # monotonic time the next full cycle is due: at once
        woke = "start"
        while not waker.stop:
            # A full cycle when it is due or a user's command asked for one (new task, kill...);
            # a short pass when a job ended (SIGCHLD, a backend's event) or a backend asked to be polled.
            full = woke in ("start", "notify", "change") or time.monotonic() >= next_full
            try:
                report: CycleReport = scheduler.cycle(full=full)
            except BackendUnavailable as exc:
                if options.once:
                    raise
                # Every step commits before the backend call that depends on it, so an interrupted
                # cycle loses nothing; the next one (full, after a backoff) carries on.
                outage = min(OUTAGE_MAX_WAIT, max(1.0, outage * 2))
                say(f"cycle interrupted: {exc}; next try in {outage:.0f} s")
                next_full = 0.0
                woke = waker.wait(outage)
                continue
            outage = 0.0
            if full:
                cycles += 1
                next_full = time.monotonic() + interval
                passes.flush(say)
                say(report.line())
            else:
                passes.add(report, say)
            if options.once or (options.max_cycles and cycles >= options.max_cycles):
                break
            if options.until_idle and is_idle(ctx):
                passes.flush(say)
                say("idle: nothing queued or running")
                break
            wait = max(0.0, next_full - time.monotonic())
            if options.until_idle:
                wait = min(wait, 1.0)  # ends of an earlier scheduler's jobs are seen by polling
            poll = scheduler.poll_after()
            if poll is not None:
                wait = min(wait, poll)
            woke = waker.wait(wait)
        passes.flush(say)
        return 0
    except LeaseLost as exc:
        say(f"stopping: {exc}")
        return 3
    finally:
        scheduler.lease.release()
        scheduler.close()
        waker.close()
        signal.set_wakeup_fd(-1)
