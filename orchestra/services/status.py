"""Is the scheduler alive, and what is the cluster doing: `orchestra status`, and the one-line
warning `maestro task list`, `maestro queue` and `orchestra status` print when it is not.

The scheduler service records its signs of life in `change_counter` (name/value rows, values in
epoch milliseconds; the scheduler role may insert and update them, every user may read them):

- `heartbeat`: the last sign of life: after every full cycle, after short passes (at most one
  write per second), and every `lease_ttl / 3` seconds while idle;
- `last_cycle`: the end of the last full cycle;
- `stopped`: when the service stopped cleanly (a signal, `--until-idle` idle); 0 while it runs.
  `--once` (cron) leaves it at 0: the next run is due, and a cron that stops firing shows up as
  a stale heartbeat instead.

Each write is a fenced transaction (`Scheduler.tx`): it renews the lease too, and a scheduler
that lost its lease cannot write a heartbeat for its successor. No row: no scheduler ever ran.

Stale means older than max(2 x interval, 3 x lease_ttl) of the reader's `[scheduler]` config: a
live scheduler writes at least every lease_ttl / 3 seconds and after each cycle, so the margin
covers a slow cycle, a database hiccup and a scheduler started with a longer `--interval`.

Trust: on PostgreSQL, users hold UPDATE (value) on change_counter (migration 0003, for the CLI's
wake-up counter `cli`), so a user could rewrite these rows too; only the lease row (`holder`,
shown by `orchestra status`) is the scheduler's alone. Restricting that grant to the `cli` row
needs a migration.
"""
from __future__ import annotations

import importlib.metadata
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from orchestra.config import Settings
from orchestra.db.models import ChangeCounter, SchedulerLease, User
from orchestra.services.context import Context

if TYPE_CHECKING:  # numpy and the policy: imported by `status` only when it runs
    from orchestra.services.queue import PolicyView

HEARTBEAT, LAST_CYCLE, STOPPED = "heartbeat", "last_cycle", "stopped"
ROWS = (HEARTBEAT, LAST_CYCLE, STOPPED)
LEASE = "scheduler"  # the lease row's name (orchestra/scheduler/lease.py)

log = logging.getLogger("orchestra.scheduler")


def _ms(t: float) -> int:
    return int(round(t * 1000))


# ---------------------------------------------------------------------------------------- the writer
class Heartbeat:
    """The service's side: writes the rows above, each write in a fenced transaction (`tx`, i.e.
    `Scheduler.tx`: renews the lease, raises LeaseLost if another scheduler holds it).

    A database error is logged (once per outage) and otherwise ignored: a heartbeat that cannot be
    written only ages, which is what the readers should see; the cycle reports the outage itself.
    """

    def __init__(self, tx: Callable[[], AbstractContextManager[Session]], lease_ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.tx = tx
        self.every = lease_ttl / 3  # while idle: at least this often (it renews the lease too)
        self.gap = min(1.0, self.every)  # after short passes: at most one write per `gap` seconds
        self.clock = clock
        self.last = -math.inf  # monotonic time of the last write
        self.failing = False

    def start(self) -> None:
        now = _ms(self.clock())
        self._write({HEARTBEAT: now, STOPPED: 0})

    def beat(self, full: bool = False) -> None:
        """After a full cycle (`full`: also `last_cycle`), after a short pass, or while idle."""
        if not full and time.monotonic() - self.last < self.gap:
            return
        now = _ms(self.clock())
        self._write({HEARTBEAT: now, LAST_CYCLE: now} if full else {HEARTBEAT: now})

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def stop(self) -> None:
        now = _ms(self.clock())
        self._write({HEARTBEAT: now, STOPPED: now})

    def _write(self, values: dict[str, int]) -> None:
        try:
            with self.tx() as session:
                for name, value in values.items():
                    # Insert if missing, then update: the fence (a lock on the lease row) keeps a
                    # second writer out, so the insert cannot race on SQLite or PostgreSQL.
                    changed = session.execute(
                        update(ChangeCounter).where(ChangeCounter.name == name).values(value=value)).rowcount
                    if not changed:
                        session.execute(insert(ChangeCounter).values(name=name, value=value))
        except SQLAlchemyError as exc:
            if not self.failing:
                first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                log.warning("heartbeat not recorded: %s", first[0] if first else type(exc).__name__)
            self.failing = True
            return
        self.failing = False
        self.last = time.monotonic()


# ---------------------------------------------------------------------------------------- the reader
@dataclass
class Liveness:
    """What the database says about the scheduler service (times: epoch seconds)."""

    now: float
    threshold: float  # seconds: a heartbeat older than this is stale
    heartbeat_at: float | None  # None: no scheduler ever recorded one
    heartbeat_age: float | None
    last_cycle_at: float | None
    stopped_at: float | None  # a clean stop; None while running (or never ran)
    holder: str | None  # the lease row: host:pid:token of the active scheduler
    lease_expires_at: float | None
    state: str  # "running", "stale", "stopped", "never"
    warning: str | None = None


def stale_after(settings: Settings) -> float:
    s = settings.scheduler
    return max(2 * s.interval, 3 * s.lease_ttl)


def liveness(engine: Engine, settings: Settings, now: float | None = None) -> Liveness:
    """Two small reads: the three rows and the lease row."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        rows = dict(conn.execute(select(ChangeCounter.name, ChangeCounter.value).where(ChangeCounter.name.in_(ROWS))).all())
        lease = conn.execute(select(SchedulerLease.holder, SchedulerLease.expires_at)
                             .where(SchedulerLease.name == LEASE)).first()
    holder, expires = (lease[0], lease[1]) if lease is not None else (None, None)
    seconds = {name: value / 1000 for name, value in rows.items() if value}
    heartbeat = seconds.get(HEARTBEAT)
    stopped = seconds.get(STOPPED)
    threshold = stale_after(settings)
    age = max(0.0, now - heartbeat) if heartbeat is not None else None
    if heartbeat is None and holder is None:
        state = "never"
    elif stopped is not None:
        state = "stopped"
    elif age is not None and age > threshold:
        state = "stale"
    else:  # a fresh heartbeat, or a holder from before heartbeats existed
        state = "running"
    out = Liveness(now, threshold, heartbeat, age, seconds.get(LAST_CYCLE), stopped, holder,
                   expires if holder is not None else None, state)
    out.warning = warning(out)
    return out


def ago(seconds: float) -> str:
    """14m, 2h05m, 3d04h: how long, to the unit that matters."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def warning(live: Liveness) -> str | None:
    """The one line the CLIs print on stderr, or None when the scheduler is fine."""
    if live.state == "never":
        return ("warning: no scheduler has ever run on this database; nothing will start until an admin runs "
                "`orchestra scheduler run`")
    if live.state == "stopped" and live.stopped_at is not None:
        return (f"warning: the scheduler stopped at {stamp(live.stopped_at)} ({ago(live.now - live.stopped_at)} ago); "
                "nothing starts and no job's end is recorded until an admin runs `orchestra scheduler run` again")
    if live.state == "stale" and live.heartbeat_at is not None:
        return (f"warning: the scheduler has not been seen for {ago(live.now - live.heartbeat_at)} (last heartbeat "
                f"{stamp(live.heartbeat_at)}); jobs shown running may have ended — ask the admin")
    return None


def warn_line(engine: Engine, settings: Settings) -> str | None:
    """The warning for the user commands; never their failure (a read error: no warning)."""
    try:
        return liveness(engine, settings).warning
    except SQLAlchemyError:
        return None


# ---------------------------------------------------------------------------------------- orchestra status
@dataclass
class UserLoad:
    user: str
    queued: int  # waiting for a slot
    held: int  # behind scouts, or in tasks not expanded yet
    running: int  # live attempts (starting or running)


@dataclass
class Hold:
    """A hold: nothing starts in its target. Today the scheduler's holds on a queue whose cluster
    could not start a job (scheduler/holds.py); the kinds leave room for an admin's holds."""

    kind: str  # "queue" (an admin's "user" or "task" holds would come here too)
    target: str  # "LPS/cpu"
    reason: str
    since: float | None = None
    next_try: float | None = None  # when the next probe launch may go (epoch s)
    tries: int = 0  # launches refused so far


@dataclass
class StatusReport:
    version: str
    scheduler: Liveness
    queues: list = field(default_factory=list)  # services.queue.QueueState: the rows `maestro queue` shows
    users: list[UserLoad] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)


def version() -> str:
    try:
        return importlib.metadata.version("orchestra")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def holds(session: Session) -> list[Hold]:
    """Every hold (see `Hold`), oldest first: one small read of `queue_holds`."""
    from orchestra.scheduler import holds as queue_holds

    rows = sorted(queue_holds.read(session).values(), key=lambda h: (h.since, h.cluster, h.queue))
    return [Hold("queue", f"{h.cluster}/{h.queue}", h.reason, h.since, h.retry_at, h.tries) for h in rows]


def status(ctx: Context, now: float | None = None, *, view: PolicyView | None = None,
           pending: dict[int, tuple[int, int]] | None = None) -> StatusReport:
    """Everything `orchestra status` shows; any user may ask (it reads what `maestro queue` reads).

    `view` and `pending`: the policy input at `now` and `pending_by_user`, when the caller has
    read them already (the dashboard's overview shares one read with `usage_report`); else read."""
    from orchestra.services.queue import pending_by_user, policy_input, queue_states  # numpy: only here

    now = time.time() if now is None else now
    live = liveness(ctx.engine, ctx.settings, now)
    with ctx.transaction() as session:
        if view is None:
            view = policy_input(session, ctx.settings, now)
        if pending is None:
            pending = pending_by_user(session)
        ids = sorted({*pending, *(u for u, n in view.user_running.items() if n)})
        names = dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all()) if ids else {}
        held = holds(session)
    queues = queue_states(view)
    users = [UserLoad(names.get(u, str(u)), pending.get(u, (0, 0))[0], pending.get(u, (0, 0))[1],
                      int(view.user_running.get(u, 0))) for u in ids]
    users = [u for u in users if u.queued or u.held or u.running]
    users.sort(key=lambda u: u.user)
    return StatusReport(version(), live, queues, users, held)


# ---------------------------------------------------------------------------------------- the dashboard
@dataclass
class Activity:
    """The cluster at a glance, for the dashboard's overview: live jobs by state and tasks by state.

    Read from the live attempts (at most the slots) and the tasks table only: counting job rows by
    state is a scan of every job (1M rows: far beyond a page's 200 ms). Queued and held jobs come
    from the per-task counters `status()` already reads (its `users`)."""

    live: dict[str, int]  # "starting", "running": live attempts
    tasks: dict[str, int]  # every TaskStatus, zeros included


def activity(ctx: Context) -> Activity:
    """Two small GROUP BYs: live attempts by state (index on attempts.status), tasks by state."""
    from sqlalchemy import func

    from orchestra.db.models import Attempt, Task
    from orchestra.states import LIVE_ATTEMPT, TaskStatus

    with ctx.engine.connect() as conn:
        live = dict(conn.execute(select(Attempt.status, func.count())
                                 .where(Attempt.status.in_([s.value for s in LIVE_ATTEMPT]))
                                 .group_by(Attempt.status)).all())
        tasks = dict(conn.execute(select(Task.status, func.count()).group_by(Task.status)).all())
    return Activity({s.value: int(live.get(s.value, 0)) for s in LIVE_ATTEMPT},
                    {s.value: int(tasks.get(s.value, 0)) for s in TaskStatus})
