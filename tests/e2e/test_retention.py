"""Retention on both databases, with tasks run by real scheduler cycles (local backend) and the
clock then moved forward: notices at the right days, then removal with the attempts' log
directories; outputs kept or purged as configured (kept when a dataset points into them);
`orchestra gc --dry-run` changes nothing; keep_finished_days = 0 keeps everything; more tasks than
one batch are removed in several transactions; a task that a waiting task depends on stays; the
service runs it once a day, remembered across restarts; only admins may run `orchestra gc`."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import Session

from orchestra.db.models import Attempt, AuditEntry, ChangeCounter, Job, Task
from orchestra.paths import state_root
from orchestra.scheduler.cycle import Scheduler
from orchestra.services import retention
from orchestra.services.context import Context
from tests.db.test_security import POSTGRES_ONLY, World, role_url, world  # noqa: F401 - the fixture
from tests.e2e.scheduler_helpers import cycles_until, installation, make_inputs, run_scheduler, task_status
from tests.e2e.test_task_edit import refused
from tests.helpers import ADMIN, Cli

DAY = 86400.0
FINAL = ("completed", "partial", "broken", "killed")


def configure(env: dict[str, str], retention_toml: str) -> None:
    with open(env["ORCHESTRA_CONFIG"], "a") as f:
        f.write(f"\n[retention]\n{retention_toml}\n")


def run_tasks(cli: Cli, storage: Path, names: list[str], extra: str = "") -> tuple[Context, Scheduler]:
    """Tasks of two jobs each (each writes %OUT/r.txt), run to completion by real cycles."""
    configs, data = make_inputs(storage / "inputs", 2)
    cli.ok(f"orchestra_registry.py -d user.alice.data -p {data}")
    cli.ok(f"orchestra_registry.py -d user.alice.configs -p {configs}/")
    for name in names:
        cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t {name} --containerImage img "
               f"--exec 'echo %DATA %IN > %OUT/r.txt' --bypass {extra}")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: all(task_status(ctx, n) == "completed" for n in names))
    return ctx, scheduler


def log_dirs(ctx: Context, storage: Path, name: str) -> list[Path]:
    with ctx.transaction() as session:
        names = session.scalars(select(Attempt.backend_name).join(Job).join(Task).where(Task.name == name)).all()
    return [state_root(storage, installation(ctx)) / n for n in names]


def finished_at(ctx: Context) -> float:
    with ctx.transaction() as session:
        return session.scalar(select(func.max(Task.finished_at))) or 0.0


def rows(ctx: Context, name: str) -> tuple[int, int, int]:
    """(tasks, jobs, attempts) of task `name`."""
    with ctx.transaction() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == name))
        if task_id is None:
            return 0, 0, 0
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.task_id == task_id)) or 0
        attempts = session.scalar(select(func.count()).select_from(Attempt).join(Job).where(Job.task_id == task_id))
        return 1, jobs, attempts or 0


def age(ctx: Context, days: float) -> None:
    """Every finished task finished `days` earlier than it did (a clock moved back for the CLI)."""
    with ctx.transaction() as session:
        session.execute(update(Task).where(Task.finished_at.is_not(None))
                        .values(finished_at=Task.finished_at - days * DAY))


def snapshot(ctx: Context) -> dict[str, list[Any]]:
    with ctx.transaction() as session:
        return {t: [tuple(r) for r in session.execute(text(f"SELECT * FROM {t} ORDER BY 1")).all()]
                for t in ("tasks", "jobs", "attempts", "datasets", "change_counter", "audit_log")}


def test_notices_at_the_right_days_then_removal_with_logs(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "keep_finished_days = 10\nnotice_days = [5, 1]")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a", "user.alice.b"])
    ctx = Context.from_env()
    end = finished_at(ctx)
    dirs = log_dirs(ctx, storage, "user.alice.a") + log_dirs(ctx, storage, "user.alice.b")
    assert len(dirs) == 4 and all((d / "log").is_file() for d in dirs)
    outputs = storage / "alice" / "user.alice.a"
    assert any(outputs.rglob("r.txt"))

    def daily(days: float) -> retention.Report | None:
        return retention.daily(ctx, scheduler.tx, lambda: end + days * DAY)

    first = daily(4)  # the first run ever: at once; nothing due yet (the first notice is at day 5)
    assert first is not None and not first.noticed and not first.removed
    assert daily(4.9) is None  # remembered: the next run is a day after the last
    five = daily(5.01)
    assert five is not None and sorted(n.name for n in five.noticed) == ["user.alice.a", "user.alice.b"]
    assert not five.removed and rows(ctx, "user.alice.a") == (1, 2, 2)
    assert daily(6.5) is not None and not daily(7.6).noticed  # type: ignore[union-attr]  # told already
    one = daily(9.02)
    assert one is not None and len(one.noticed) == 2 and not one.removed  # the second notice: one day before
    assert daily(9.5) is None
    gone = daily(10.03)
    assert gone is not None and sorted(r.name for r in gone.removed) == ["user.alice.a", "user.alice.b"]
    assert all(r.refused is None and r.jobs == 2 and r.attempts == 2 and r.logs == 2 for r in gone.removed)
    assert rows(ctx, "user.alice.a") == rows(ctx, "user.alice.b") == (0, 0, 0)
    assert not any(os.path.lexists(d) for d in dirs)
    assert any(outputs.rglob("r.txt")), "purge_outputs is off: outputs stay"
    with ctx.transaction() as session:  # the datasets the tasks used stay
        assert session.scalar(select(func.count()).select_from(Task)) == 0
    assert "user.alice.data" in cli.ok("maestro dataset list").out
    scheduler.lease.release()


def test_a_late_first_notice_postpones_the_removal(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "keep_finished_days = 10\nnotice_days = [3]")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a"])
    ctx = Context.from_env()
    end = finished_at(ctx)
    late = retention.daily(ctx, scheduler.tx, lambda: end + 20 * DAY)  # the service was away
    assert late is not None and [n.name for n in late.noticed] == ["user.alice.a"] and not late.removed
    assert late.noticed[0].remove_at == pytest.approx(end + 23 * DAY)
    assert retention.daily(ctx, scheduler.tx, lambda: end + 22 * DAY) is not None
    assert rows(ctx, "user.alice.a")[0] == 1, "told 2 days ago: not yet"
    done = retention.daily(ctx, scheduler.tx, lambda: end + 23.01 * DAY)
    assert done is not None and [r.name for r in done.removed] == ["user.alice.a"]
    scheduler.lease.release()


def test_outputs_purged_as_configured_but_not_under_a_dataset(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "keep_finished_days = 1\nnotice_days = []\npurge_outputs = true")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a", "user.alice.b"])
    cli.ok(f"orchestra_registry.py -d user.alice.b_results -p {storage / 'alice' / 'user.alice.b'}/")
    ctx = Context.from_env()
    report = retention.daily(ctx, scheduler.tx, lambda: finished_at(ctx) + 1.01 * DAY)
    assert report is not None and {r.name for r in report.removed} == {"user.alice.a", "user.alice.b"}
    by_name = {r.name: r for r in report.removed}
    assert by_name["user.alice.a"].outputs == str(storage / "alice" / "user.alice.a")
    assert by_name["user.alice.b"].outputs is None
    assert by_name["user.alice.b"].outputs_kept == "dataset user.alice.b_results points into them"
    assert not (storage / "alice" / "user.alice.a").exists()
    assert any((storage / "alice" / "user.alice.b").rglob("r.txt"))
    scheduler.lease.release()


def test_gc_dry_run_changes_nothing_and_gc_removes(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "notice_days = []")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a", "user.alice.b"])
    scheduler.lease.release()
    ctx = Context.from_env()
    age(ctx, 29)  # not yet due (30 days)
    dirs = log_dirs(ctx, storage, "user.alice.a")
    nothing = cli.ok("orchestra gc --dry-run", user=ADMIN).out
    assert "would remove 0 task(s)" in nothing
    age(ctx, 2)
    before = snapshot(ctx)
    out = cli.ok("orchestra gc --dry-run", user=ADMIN).out
    assert "would remove user.alice.a (completed " in out and "2 job(s), 2 attempt(s), 2 log dir(s)" in out
    assert "would remove 2 task(s) finished more than 30 day(s) ago" in out
    assert snapshot(ctx) == before and all((d / "log").is_file() for d in dirs)
    # --now previews a later date: with the age back, nothing is due today, both are then.
    age(ctx, -31)
    later = cli.ok("orchestra gc --dry-run --now 2999-01-01", user=ADMIN).out
    assert "would remove 2 task(s)" in later
    refused(cli, "orchestra gc --now 2999-01-01", "--now only previews: use it with --dry-run", user=ADMIN)
    refused(cli, "orchestra gc --dry-run --now soon", "--now 'soon' is neither epoch seconds nor an ISO date",
            user=ADMIN)
    age(ctx, 31)
    # A user (alice, not an admin on either database) is refused in one line, changing nothing.
    before = snapshot(ctx)
    refused(cli, "orchestra gc", "only admins may run `orchestra gc`")
    refused(cli, "orchestra gc --dry-run", "only admins may run `orchestra gc`")
    assert snapshot(ctx) == before
    out = cli.ok("orchestra gc", user=ADMIN).out
    assert "removed user.alice.a" in out and "removed 2 task(s)" in out
    assert rows(ctx, "user.alice.a") == (0, 0, 0) and not any(os.path.lexists(d) for d in dirs)
    with ctx.transaction() as session:
        assert sorted(session.scalars(select(AuditEntry.target).where(AuditEntry.action == "gc")).all()) == [
            "user.alice.a", "user.alice.b"]


def test_gc_by_hand_leaves_notices_to_the_service(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a"])  # defaults: 30 days, notices [5, 1]
    ctx = Context.from_env()
    age(ctx, 40)
    before = snapshot(ctx)
    out = cli.ok("orchestra gc", user=ADMIN).out
    assert "notice due: user.alice.a (alice) goes on" in out and "removed 0 task(s)" in out
    assert snapshot(ctx) == before
    told = retention.daily(ctx, scheduler.tx)  # the service tells; a day later `gc` may remove
    assert told is not None and [n.name for n in told.noticed] == ["user.alice.a"]
    with ctx.transaction() as session:
        session.execute(update(Task).values(removal_notice_at=Task.removal_notice_at - 1.01 * DAY))
    assert "removed user.alice.a" in cli.ok("orchestra gc", user=ADMIN).out
    scheduler.lease.release()


def test_keep_finished_days_0_keeps_everything(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "keep_finished_days = 0")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a"])
    ctx = Context.from_env()
    before = snapshot(ctx)
    assert retention.daily(ctx, scheduler.tx, lambda: finished_at(ctx) + 10000 * DAY) is None
    assert "finished tasks are kept forever" in cli.ok("orchestra gc", user=ADMIN).out
    assert snapshot(ctx) == before
    scheduler.lease.release()


def test_more_tasks_than_a_batch_go_in_several_transactions(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "keep_finished_days = 1\nnotice_days = []")
    names = [f"user.alice.t{i}" for i in range(5)]
    ctx, scheduler = run_tasks(cli, storage, names)
    ctx = Context.from_env()
    opened = []

    @contextlib.contextmanager
    def counted() -> Iterator[Session]:
        with scheduler.tx() as session:
            opened.append(session)
            yield session

    later = finished_at(ctx) + 2 * DAY
    first = retention.daily(ctx, counted, lambda: later, batch=2, limit=3)
    assert first is not None and len(first.removed) == 3 and first.more
    assert len(opened) >= 3, "batches of 2: at least two transactions for the removals, and the bookkeeping"
    # Cut short: due again at the next full cycle (not a day later), which removes the rest.
    second = retention.daily(ctx, counted, lambda: later + 60, batch=2, limit=3)
    assert second is not None and len(second.removed) == 2 and not second.more
    assert all(rows(ctx, n) == (0, 0, 0) for n in names)
    assert retention.daily(ctx, counted, lambda: later + 120) is None  # finished: a day later
    scheduler.lease.release()


def test_a_task_that_a_waiting_task_depends_on_stays(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "keep_finished_days = 1\nnotice_days = []")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.prep", "user.alice.other"])
    cli.ok("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.next --containerImage img "
           "--exec 'echo %DATA %IN %OUT' --bypass --after user.alice.prep")  # not expanded: no cycle runs
    ctx = Context.from_env()
    report = retention.daily(ctx, scheduler.tx, lambda: finished_at(ctx) + 2 * DAY)
    assert report is not None and [r.name for r in report.removed] == ["user.alice.other"]
    assert report.kept == [("user.alice.prep", "user.alice.next waits for it")]
    assert rows(ctx, "user.alice.prep")[0] == 1 and task_status(ctx, "user.alice.next") == "registered"
    scheduler.lease.release()


def test_the_service_runs_it_once_a_day(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    configure(env, "notice_days = []")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a"])
    scheduler.lease.release()
    ctx = Context.from_env()
    age(ctx, 31)
    first = run_scheduler("--once")
    assert first.returncode == 0, first.stderr
    assert "retention: 1 task(s) removed (2 jobs, 2 log dirs), 0 notice(s), 0 kept" in first.stderr
    assert rows(ctx, "user.alice.a") == (0, 0, 0)
    with ctx.transaction() as session:
        due = session.scalar(select(ChangeCounter.value).where(ChangeCounter.name == retention.RUN_ROW))
    assert due is not None and due > finished_at(ctx) + 31 * DAY + 0.9 * DAY
    again = run_scheduler("--once")  # a restart: not again before a day has passed
    assert again.returncode == 0 and "retention:" not in again.stderr


@POSTGRES_ONLY
def test_only_admins_may_run_gc_on_postgresql(world: World, env: dict[str, str]) -> None:  # noqa: F811
    configure(env, "notice_days = []")
    world.ok("alice", "maestro task kill -t user.alice.t")
    with world.owner.begin() as conn:
        conn.execute(text("UPDATE tasks SET finished_at = finished_at - 40 * 86400 WHERE name = 'user.alice.t'"))
    before = world.snapshot()
    for line in ("orchestra gc", "orchestra gc --dry-run"):
        result = world.run("bob", line)
        assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
        assert "only admins may run `orchestra gc`; 'bob' is not one" in result.err
    assert world.snapshot() == before
    # bob going around the CLI: the database itself refuses (no privilege, the owner's function).
    bob = create_engine(role_url(world.db_url, "bob"))
    for statement in ("DELETE FROM tasks WHERE name = 'user.alice.t'",
                      "UPDATE tasks SET removal_notice_at = 1 WHERE name = 'user.alice.t'",
                      f"SELECT orchestra_task_delete({world.ids['alice_task']}, false, 'bob')"):
        with pytest.raises(Exception, match="permission denied|belongs to alice"), bob.begin() as conn:
            conn.execute(text(statement))
    bob.dispose()
    assert world.snapshot() == before
    out = world.ok("carol", "orchestra gc").out  # an admin that is not the scheduler
    assert "removed user.alice.t (killed" in out and "removed 1 task(s)" in out
    with world.owner.connect() as conn:
        assert conn.execute(text("SELECT name FROM tasks")).scalars().all() == ["user.bob.t"]
        assert conn.execute(text("SELECT actor, action FROM audit_log WHERE target = 'user.alice.t' "
                                 "ORDER BY id DESC LIMIT 1")).one() == ("carol", "gc")


def test_a_removal_notice_is_a_mail_in_the_owners_outbox(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    """With notifications on, each notice the service gives is one outbox row for the task's owner
    (the postman sends it: tests/e2e/test_notify.py); an owner without an address gets none."""
    from orchestra.db.models import Outbox
    from tests.e2e.test_notify import enable_notify, free_port

    configure(env, "keep_finished_days = 10\nnotice_days = [5]")
    enable_notify(env, free_port())  # nothing listens there: the rows stay unsent, which is all we look at
    cli.ok("maestro user email alice@lab.example.org", user="alice")
    ctx, scheduler = run_tasks(cli, storage, ["user.alice.a"])
    ctx = Context.from_env()
    end = finished_at(ctx)

    def removal_mails() -> list[tuple[str, str]]:
        with ctx.transaction() as session:
            return [(r.event, r.subject) for r in session.scalars(select(Outbox).where(Outbox.event == "removal notice"))]

    assert removal_mails() == []
    report = retention.daily(ctx, scheduler.tx, lambda: end + 5.01 * DAY)
    assert report is not None and [n.name for n in report.noticed] == ["user.alice.a"]
    [(event, subject)] = removal_mails()
    assert subject.startswith("[orchestra] task user.alice.a will be removed on ")
    cli.ok("maestro user email --clear", user="alice")
    age(ctx, 20)  # another notice would be due; with no address, no mail
    with ctx.transaction() as session:
        session.execute(update(Task).values(removal_notice_at=None))
    assert retention.daily(ctx, scheduler.tx, lambda: end + 6.5 * DAY) is not None
    assert len(removal_mails()) == 1
    scheduler.lease.release()
