"""The scheduler trusts no path read from the database, on SQLite and PostgreSQL.

A user can write any value into the rows of their own tasks; the scheduler runs with more rights.
These tests change rows behind the CLI's back, with SQLAlchemy, and run real scheduler cycles.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from orchestra.db.models import Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.scheduler.expand import expand_task
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import make_inputs
from tests.helpers import Cli, intact

TASK = "user.alice.t"


@pytest.fixture
def ctx(cli: Cli, storage: Path, env: dict[str, str]) -> Iterator[Context]:
    configs, data = make_inputs(storage / "inputs", 4)
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {configs}/ --cluster LPS")
    cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t {TASK} --containerImage img "
           "--exec 'true %DATA %IN %OUT'")
    context = Context.from_env()
    yield context
    context.engine.dispose()


def hack(ctx: Context, **values: object) -> None:
    """What a hostile user does with their own database login."""
    with ctx.transaction() as session:
        session.execute(update(Task).where(Task.name == TASK).values(**values))


def one_cycle(ctx: Context) -> None:
    scheduler = Scheduler(ctx)
    assert scheduler.lease.try_acquire()
    try:
        scheduler.cycle()
    finally:
        scheduler.lease.release()
        scheduler.close()


def test_purge_request_with_a_forged_output_root_leaves_the_victim(ctx: Context, storage: Path,
                                                                   victim: Path) -> None:
    own = storage / "alice" / TASK / "job_000000"
    own.mkdir(parents=True)
    (own / "result").write_text("mine")
    hack(ctx, output_root=str(victim), request="purge")
    one_cycle(ctx)
    assert intact(victim)
    assert not (storage / "alice" / TASK).exists()  # what the user may purge: the recomputed root
    with ctx.transaction() as session:
        assert session.scalar(select(Task.id).where(Task.name == TASK)) is None


def test_purge_through_a_linked_root_is_refused_and_logged(ctx: Context, storage: Path, victim: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    (storage / "alice").mkdir()
    (storage / "alice" / TASK).symlink_to(victim)
    hack(ctx, request="purge")
    with caplog.at_level(logging.WARNING, logger="orchestra.scheduler"):
        one_cycle(ctx)  # the cycle goes on
    assert intact(victim)
    assert any(r.getMessage().startswith("purge of task 1 refused: ") and "symbolic link" in r.getMessage()
               for r in caplog.records), caplog.text
    with ctx.transaction() as session:
        assert session.scalar(select(Task.id).where(Task.name == TASK)) is None


def test_expansion_rewrites_root_and_counters(ctx: Context, storage: Path, victim: Path) -> None:
    hack(ctx, output_root=str(victim), n_scouts=1000, n_jobs=7)
    with ctx.transaction() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == TASK))
        assert expand_task(session, task_id, settings=ctx.settings) == 4
    root = storage / "alice" / TASK
    with ctx.transaction() as session:
        task = session.scalars(select(Task)).one()
        dirs = session.scalars(select(Job.output_dir).order_by(Job.index)).all()
        commands = session.scalars(select(Job.command).order_by(Job.index)).all()
    assert task.output_root == str(root) and task.n_jobs == 4 and task.n_scouts == 4 and task.n_queued == 4
    assert dirs == [str(root / f"job_{i:06d}") for i in range(4)]
    assert all(str(victim) not in c for c in commands)


@pytest.mark.parametrize("hostile", ["name", "cluster", "link"])
def test_an_untrusted_root_breaks_the_task_at_expansion(ctx: Context, storage: Path, victim: Path,
                                                        hostile: str) -> None:
    if hostile == "name":
        hack(ctx, name="../../victim")
    elif hostile == "cluster":
        hack(ctx, cluster="nowhere")
    else:
        (storage / "alice").symlink_to(victim)
    one_cycle(ctx)
    with ctx.transaction() as session:
        task = session.scalars(select(Task)).one()
        assert session.scalar(select(Job.id).limit(1)) is None
    assert task.status == "broken" and task.reason.startswith("its output directory cannot be trusted: ")
    assert intact(victim)


def test_a_root_linked_after_expansion_is_not_dispatched(ctx: Context, storage: Path, victim: Path) -> None:
    with ctx.transaction() as session:
        expand_task(session, session.scalar(select(Task.id)), settings=ctx.settings)
    shutil.rmtree(storage / "alice", ignore_errors=True)
    (storage / "alice").symlink_to(victim)
    one_cycle(ctx)
    with ctx.transaction() as session:
        task = session.scalars(select(Task)).one()
        states = set(session.scalars(select(Job.status)))
    assert task.status == "broken" and "symbolic link" in task.reason
    assert states <= {"queued", "held"}  # nothing started
    assert intact(victim)
