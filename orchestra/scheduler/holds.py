"""Queue holds: the cluster could not start a job, and it was not the job's fault.

Like Slurm draining a node that cannot start a job, instead of failing job after job: when a
backend refuses a launch for a reason of its own (`Launched.infra`: storage full, over quota,
read-only, failing or not mounted; fork refused), the scheduler

- puts the job back in the queue uncharged (its attempt never existed: see `Scheduler._put_back`);
- holds the job's cluster/queue: a row of `queue_holds` (migration 0006) with the reason, since
  when, and `retry_at`. Until then the fill step gives the queue no slot
  (`services.queue.policy_input`), so nothing churns; after it, exactly one (the probe: the next
  launch of one job). A probe that starts clears the hold; one refused again doubles the backoff,
  from `INITIAL_BACKOFF` up to `MAX_BACKOFF`.

The rows live in the database so that `maestro queue` (the reason, on every affected row) and
`orchestra status` (the list of holds), which run in other processes and on other hosts, see
them; only the scheduler writes them, inside its fenced transactions. A restarted scheduler reads
them back, backoff included. The service logs one line when a hold starts and one when it clears.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from orchestra.db.models import QueueHold

INITIAL_BACKOFF = 1.0  # seconds from the first refused launch to the first probe (tests shorten it)
MAX_BACKOFF = 300.0  # the backoff doubles with each refused probe, up to this

Key = tuple[str, str]  # (cluster, queue)
HOLDS = QueueHold.__table__


@dataclass(frozen=True)
class HoldState:
    cluster: str
    queue: str
    reason: str
    since: float
    retry_at: float
    backoff: float
    tries: int

    @property
    def key(self) -> Key:
        return (self.cluster, self.queue)

    def probing(self, now: float) -> bool:
        """The backoff has run out: one launch may try the queue."""
        return now >= self.retry_at


def read(session: Session) -> dict[Key, HoldState]:
    """Every hold (a few rows at most: one per held queue)."""
    rows = session.execute(select(HOLDS.c.cluster, HOLDS.c.queue, HOLDS.c.reason, HOLDS.c.since, HOLDS.c.retry_at,
                                  HOLDS.c.backoff, HOLDS.c.tries)).all()
    return {(r.cluster, r.queue): HoldState(*r) for r in rows}


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def describe(hold: HoldState, now: float) -> str:
    """`queue LPS/cpu held: cannot start jobs: No space left on device (storage /mnt/cv) (since
    05:31:02, next try in 40 s)`: what `maestro queue` and `maestro job why` say of its jobs."""
    left = hold.retry_at - now
    nxt = f"next try in {left:.0f} s" if left >= 0.5 else "next try at the next cycle"
    return f"queue {hold.cluster}/{hold.queue} held: {hold.reason} (since {clock(hold.since)}, {nxt})"


@dataclass
class Outcome:
    """What one round of launches did to the holds: the new state of each queue it touched (None:
    cleared) and the lines for the service log (a hold started, a hold cleared)."""

    changed: dict[Key, HoldState | None]
    lines: list[tuple[int, str]]  # (logging level, line)


def record(session: Session, refused: Mapping[Key, str], started: Iterable[Key], now: float) -> Outcome:
    """Apply one round of launches, inside the caller's (fenced) transaction.

    `refused`: queues where a launch was refused for the cluster's reason (the reason); `started`:
    queues where a launch succeeded. A queue in both stays held (the cluster failed after all).
    """
    started = {k for k in started if k not in refused}
    keys = set(refused) | started
    out = Outcome({}, [])
    if not keys:
        return out
    current = {k: h for k, h in read(session).items() if k in keys}
    for key, reason in sorted(refused.items()):
        cluster, queue = key
        hold = current.get(key)
        if hold is None:
            new = HoldState(cluster, queue, reason, now, now + INITIAL_BACKOFF, INITIAL_BACKOFF, 1)
            session.execute(insert(HOLDS).values(cluster=cluster, queue=queue, reason=reason, since=now,
                                                 retry_at=new.retry_at, backoff=new.backoff, tries=1))
            out.lines.append((logging.WARNING, f"queue {cluster}/{queue} held: {reason}; no job starts there until a "
                              f"probe launch succeeds (first in {INITIAL_BACKOFF:g} s, backing off up to "
                              f"{MAX_BACKOFF:g} s)"))
        else:
            if hold.probing(now):  # the probe was refused: wait twice as long
                backoff = min(MAX_BACKOFF, hold.backoff * 2)
                retry_at = now + backoff
            else:  # a launch dispatched before the hold: the clock stays
                backoff, retry_at = hold.backoff, hold.retry_at
            new = HoldState(cluster, queue, reason, hold.since, retry_at, backoff, hold.tries + 1)
            session.execute(update(HOLDS).where(HOLDS.c.cluster == cluster, HOLDS.c.queue == queue).values(
                reason=reason, retry_at=retry_at, backoff=backoff, tries=new.tries))
        out.changed[key] = new
    for key in sorted(started):
        hold = current.get(key)
        if hold is None:
            continue
        session.execute(delete(HOLDS).where(HOLDS.c.cluster == key[0], HOLDS.c.queue == key[1]))
        out.changed[key] = None
        out.lines.append((logging.INFO, f"queue {key[0]}/{key[1]} hold cleared: a job started there (held since "
                          f"{clock(hold.since)}, {now - hold.since:.0f} s, {hold.tries} refused launch(es))"))
    return out
