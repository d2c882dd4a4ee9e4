"""Issue 18: with `defer_acks` (the service loop) a launch's record (running, host, pid, start) is
written by the scheduler's next fenced transaction instead of one of its own: merged into the
attempt's end when it ended meanwhile, written with the next pass's records otherwise, or by
`write_acks` when the loop would wait. On SQLite and PostgreSQL."""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestra.backends.base import Launched, LaunchSpec
from orchestra.backends.null import NullBackend
from orchestra.db.models import Attempt, Job, User
from orchestra.scheduler import cycle
from orchestra.scheduler.cycle import Scheduler
from orchestra.scheduler.loop import Waker, wait_acknowledging
from orchestra.services.status import Heartbeat
from tests.db.conftest import scheduler_on
from tests.db.test_perf_short_pass import committed, count_guards, submit
from tests.helpers import Cli


class WithPids(NullBackend):
    """A NullBackend whose launches answer with a pid and its start time, as the local backend's."""

    def __init__(self) -> None:
        super().__init__()
        self.pids = itertools.count(4000)
        self.answers: dict[str, Launched] = {}

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        answers = [Launched(a.backend_name, host="node1", pid=next(self.pids), pid_start=77,
                            started_at=a.started_at - 5.0)  # five seconds ago: its charge must show
                   for a in super().launch(specs)]
        self.answers.update((a.backend_name, a) for a in answers)
        return answers


@pytest.fixture
def deferring(env: dict[str, str]) -> Iterator[tuple[Scheduler, WithPids]]:
    backend = WithPids()
    with scheduler_on(backend) as scheduler:
        scheduler.defer_acks = True
        yield scheduler, backend


def attempts(scheduler: Scheduler) -> dict[str, tuple]:
    """backend name -> (status, host, pid, pid_start, started_at, job's started_at), as committed."""
    with scheduler.ctx.engine.connect() as conn:
        rows = conn.execute(select(Attempt.backend_name, Attempt.status, Attempt.host, Attempt.pid, Attempt.pid_start,
                                   Attempt.started_at, Job.started_at).join(Job, Job.id == Attempt.job_id)).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_the_launch_record_waits_for_the_next_transaction_and_joins_the_end(
        cli: Cli, storage: Path, deferring: tuple[Scheduler, WithPids], monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, backend = deferring
    submit(cli, storage, 12)
    report = scheduler.cycle()  # full: expands, fills the 4 cpu slots
    assert report.counts["started"] == 4 and scheduler.unacked == 4
    # Not written yet: exactly what a scheduler killed between the launches and their record leaves.
    assert committed(scheduler)["attempt starting"] == 4
    assert all(row[:3] == ("starting", None, None) for row in attempts(scheduler).values())

    guards = count_guards(scheduler, monkeypatch)
    updates: list[tuple[str, str, tuple[str, ...], int]] = []  # (table, key, columns, rows) of each bulk update
    bulk_update = cycle.bulk_update

    def recording(session, table, rows, *, key="id", **kw):  # type: ignore[no-untyped-def]
        if rows:
            updates.append((table.name, key, tuple(rows[0]), len(rows)))
        bulk_update(session, table, rows, key=key, **kw)

    monkeypatch.setattr(cycle, "bulk_update", recording)
    ending = sorted(backend.running)[:2]
    backend.finish(ending)
    report = scheduler.cycle(full=False)
    assert (report.counts["succeeded"], report.counts["started"]) == (2, 2)
    assert len(guards) == 1  # one fenced transaction: the ends, the other two's records, the dispatch
    # The ended two: their record is part of their end's update; the running two: an update of their own.
    assert ("attempts", "id", ("id", "status", "exit_code", "reason", "ended_at", "charged_until", "host", "pid",
                               "pid_start", "started_at"), 2) in updates
    assert ("attempts", "backend_name", ("backend_name", "host", "pid", "pid_start", "started_at"), 2) in updates
    rows = attempts(scheduler)
    for name in ending:
        answer = backend.answers[name]
        assert rows[name] == ("succeeded", "node1", answer.pid, 77, answer.started_at, answer.started_at)
    launched_now = set(scheduler._unacked)
    assert len(launched_now) == 2 and all(rows[name][:3] == ("starting", None, None) for name in launched_now)
    for name in set(backend.answers) - launched_now - set(ending):
        answer = backend.answers[name]
        assert rows[name] == ("running", "node1", answer.pid, 77, answer.started_at, answer.started_at)
    assert scheduler.unacked == 2
    with scheduler.ctx.engine.connect() as conn:  # charged from the launch's start, 5 s before the end
        assert conn.scalar(select(User.usage).where(User.name == "alice")) >= 2 * 5.0

    scheduler.write_acks()
    assert scheduler.unacked == 0
    assert committed(scheduler) == {"job succeeded": 2, "job running": 4, "job queued": 6,
                                    "attempt succeeded": 2, "attempt running": 4}
    for name in backend.running:
        answer = backend.answers[name]
        assert attempts(scheduler)[name] == ("running", "node1", answer.pid, 77, answer.started_at, answer.started_at)


def test_a_failed_transaction_keeps_the_records_for_the_next(
        cli: Cli, storage: Path, deferring: tuple[Scheduler, WithPids]) -> None:
    scheduler, backend = deferring
    submit(cli, storage, 4)
    scheduler.cycle()
    assert scheduler.unacked == 4
    with pytest.raises(RuntimeError):
        with scheduler.tx():  # writes the records, then fails: rolled back
            raise RuntimeError("the database went away")
    assert scheduler.unacked == 4 and committed(scheduler)["attempt starting"] == 4
    with scheduler.tx():  # any fenced transaction writes them first
        pass
    assert scheduler.unacked == 0 and committed(scheduler)["attempt running"] == 4


def test_records_lost_with_the_scheduler_are_confirmed_by_its_successor(
        cli: Cli, storage: Path, deferring: tuple[Scheduler, WithPids]) -> None:
    scheduler, backend = deferring
    submit(cli, storage, 4)
    scheduler.cycle()
    scheduler.lease.release()  # it stops without writing them (killed: its memory is gone)
    with scheduler_on(backend) as successor:
        report = successor.cycle()
        assert report.counts["started"] == 0  # nothing runs twice
        assert committed(successor) == {"job running": 4, "attempt running": 4}
        assert backend.launches == 4


def test_the_loop_writes_them_before_it_waits_and_an_event_comes_first(
        cli: Cli, storage: Path, deferring: tuple[Scheduler, WithPids]) -> None:
    scheduler, backend = deferring
    submit(cli, storage, 4)
    scheduler.cycle()
    waker = Waker(scheduler.ctx, poll=3600)
    heartbeat = Heartbeat(scheduler.tx, lease_ttl=36000)  # writes nothing meanwhile (it would write them too)
    heartbeat.last = float("inf")
    try:
        waker.poke()  # an event already there: the pass it starts writes them, the wait does not
        assert wait_acknowledging(waker, 3600, heartbeat, scheduler) == "event"
        assert scheduler.unacked == 4
        woke: list[str] = []
        waiting = threading.Thread(target=lambda: woke.append(wait_acknowledging(waker, 3600, heartbeat, scheduler)))
        waiting.start()
        try:
            deadline = time.monotonic() + 60  # a condition waited on, not a timing
            while scheduler.unacked and time.monotonic() < deadline:
                time.sleep(0.02)
            assert committed(scheduler)["attempt running"] == 4  # written while the loop waits
        finally:
            waker.poke()
            waiting.join(timeout=60)
        assert woke == ["event"]
    finally:
        waker.close()
