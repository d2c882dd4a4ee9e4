"""Issue 18: a short pass writes in two transactions (its records, then the launches' answers),
and every write is committed before the backend call that depends on it; on SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestra.backends.null import NullBackend
from orchestra.db.models import Attempt, Job
from orchestra.scheduler.cycle import Scheduler
from tests.helpers import Cli


def submit(cli: Cli, storage: Path, n: int) -> None:
    (storage / "configs").mkdir()
    for i in range(n):
        (storage / "configs" / f"c{i:02d}").write_text(str(i))
    (storage / "data").write_text("d")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {storage / 'configs'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'} --cluster LPS")
    cli.ok("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.t "
           "--containerImage x/img --exec 'run %DATA %IN %OUT' --bypass")


def committed(scheduler: Scheduler) -> dict[str, int]:
    """What another connection sees now: jobs by status, attempts by status."""
    with scheduler.ctx.engine.connect() as conn:
        jobs = dict(conn.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        attempts = dict(conn.execute(select(Attempt.status, func.count()).group_by(Attempt.status)).all())
    return {**{f"job {k}": v for k, v in jobs.items()}, **{f"attempt {k}": v for k, v in attempts.items()}}


def count_guards(scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The lease guards run from now on (one per fenced, i.e. writing, transaction), as a list
    that grows with each."""
    seen: list[object] = []
    guard = scheduler.lease.guard

    def counting(session):  # type: ignore[no-untyped-def]
        seen.append(session)
        guard(session)

    monkeypatch.setattr(scheduler.lease, "guard", counting)
    return seen


def test_a_short_pass_commits_its_records_before_the_backend_hears_of_them(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, backend = sched
    submit(cli, storage, 12)
    report = scheduler.cycle()  # full: expands, fills the 4 cpu slots
    assert report.counts["started"] == 4
    seen_at_release: list[dict[str, int]] = []
    seen_at_launch: list[dict[str, int]] = []
    release, launch = backend.release, backend.launch
    monkeypatch.setattr(backend, "release", lambda names: (seen_at_release.append(committed(scheduler)), release(names)))
    monkeypatch.setattr(backend, "launch", lambda specs: (seen_at_launch.append(committed(scheduler)), launch(specs))[1])
    guards = count_guards(scheduler, monkeypatch)
    backend.finish(sorted(backend.running)[:2])
    report = scheduler.cycle(full=False)
    assert (report.counts["succeeded"], report.counts["started"]) == (2, 2)
    # The read is not fenced (it writes nothing); one fenced transaction for the ends + task states
    # + dispatch, one for the launches' answers.
    assert len(guards) == 2
    # The ends and the new attempts were committed before the release and the launch.
    assert seen_at_release == [{"job succeeded": 2, "job starting": 2, "job running": 2, "job queued": 6,
                                "attempt succeeded": 2, "attempt starting": 2, "attempt running": 2}]
    assert seen_at_launch == seen_at_release
    assert committed(scheduler) == {"job succeeded": 2, "job running": 4, "job queued": 6,
                                    "attempt succeeded": 2, "attempt running": 4}


def test_a_short_pass_with_nothing_ended_writes_in_one_transaction(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, backend = sched
    submit(cli, storage, 4)
    scheduler.cycle()
    guards = count_guards(scheduler, monkeypatch)
    report = scheduler.cycle(full=False)
    assert report.counts["started"] == 0 and len(guards) == 1  # the (empty) records; the read is not fenced
