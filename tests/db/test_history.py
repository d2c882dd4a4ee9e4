"""The usage history (orchestra/services/history.py, migration 0011), on SQLite and PostgreSQL:
the scheduler loop records it after real cycles, for active users only; a failed write is skipped
and its starts carried to the next record; the daily retention run prunes it in batches; the
series query buckets hand-made rows; the migration goes down and up; and on PostgreSQL the
dashboard's read-only group role reads and cannot write."""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from orchestra.db.engine import HEAD_REVISION, MIGRATIONS, current_revision, make_engine
from orchestra.db.models import UsageHistory, User
from orchestra.scheduler.cycle import CycleReport, backend_name
from orchestra.services import history, retention
from orchestra.services.context import Context
from tests.db.test_security import role_url
from tests.e2e.scheduler_helpers import make_inputs, run_scheduler
from tests.helpers import Cli, write_config

DAY = 86400.0
T0 = 1_800_000_000.0  # a round time: multiples of the bucket widths below


def history_rows(ctx: Context) -> list[tuple[float, str | None, float, int, int, float, float]]:
    with ctx.transaction() as session:
        return [tuple(r) for r in session.execute(  # type: ignore[misc]
            select(UsageHistory.at, User.name, UsageHistory.running, UsageHistory.queued, UsageHistory.started,
                   UsageHistory.wait_seconds_sum, UsageHistory.max_wait_seconds)
            .outerjoin(User, User.id == UsageHistory.user_id).order_by(UsageHistory.id)).all()]


def user_ids(ctx: Context, *names: str) -> list[int]:
    with ctx.transaction() as session:
        return [ctx.user_id(session, n) for n in names]


def add_rows(ctx: Context, rows: list[dict]) -> None:
    with ctx.transaction() as session:
        session.execute(insert(UsageHistory), [{"user_id": None, "running": 0.0, "queued": 0, "started": 0,
                                                "wait_seconds_sum": 0.0, "max_wait_seconds": 0.0, **r} for r in rows])


# ---------------------------------------------------------------------------------------- recording
def test_the_loop_records_active_users_after_real_cycles(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    """Alice's six jobs on four cpu slots; bob registered data but runs nothing: no row of his."""
    configs, data = make_inputs(storage / "in", 6)
    cli.ok(f"orchestra_registry -d user.alice.cfg -p {configs}/")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data}")
    cli.ok(f"orchestra_registry -d user.bob.data -p {data}", user="bob")
    cli.ok("maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.h --containerImage img "
           "--exec 'echo %DATA %IN > %OUT/r.txt' --bypass")
    result = run_scheduler("--until-idle")
    assert result.returncode == 0, result.stdout + result.stderr
    ctx = Context.from_env()
    rows = history_rows(ctx)
    totals = [r for r in rows if r[1] is None]
    users = [r for r in rows if r[1] is not None]
    assert totals and {r[1] for r in users} == {"alice"}  # bob had nothing: no row, ever
    first_at = totals[0][0]
    # The first full cycle expanded the task and started four jobs (four cpu slots, weight 1 each):
    # its record sees them running, two queued, four started.
    assert [r[2:5] for r in rows if r[0] == first_at] == [(4.0, 2, 4), (4.0, 2, 4)]
    # Every start is recorded once, in the totals and in alice's rows; waits are sane.
    assert sum(r[4] for r in totals) == sum(r[4] for r in users) == 6
    assert all(r[5] >= 0 and 0 <= r[6] and (r[4] or r[5] == 0) for r in rows)
    assert sum(r[5] for r in users) == pytest.approx(sum(r[5] for r in totals), abs=1e-6)
    # Each record has one totals row, and a user row only with something running, queued or started.
    assert len({r[0] for r in totals}) == len(totals)
    assert all(r[2] or r[3] or r[4] for r in users)


def report(dispatched: dict[str, float], waits: list[float]) -> CycleReport:
    return CycleReport(queued_at=dispatched, waits=[("LPS", "cpu", w) for w in waits])


def test_starts_are_split_per_user_and_a_failed_write_keeps_them(env: dict[str, str], cli: Cli,
                                                                 storage: Path) -> None:
    configs, data = make_inputs(storage / "in", 2)
    for user in ("alice", "bob"):
        cli.ok(f"orchestra_registry -d user.{user}.cfg -p {configs}/", user=user)
        cli.ok(f"orchestra_registry -d user.{user}.data -p {data}", user=user)
        cli.ok(f"maestro task create -c user.{user}.cfg -d user.{user}.data -t user.{user}.t --containerImage i "
               "--exec 'echo %DATA %IN %OUT'", user=user)
    ctx = Context.from_env()
    with ctx.transaction() as session:
        tasks = dict(session.execute(text("SELECT name, id FROM tasks")).all())
    a, b = tasks["user.alice.t"], tasks["user.bob.t"]
    recorder = history.Recorder()
    # One pass, all accepted at t=1000: alice waited 100 and 300, bob 50.
    recorder.add(report({backend_name(a, 0, 1, "x"): 900.0, backend_name(a, 1, 1, "x"): 700.0,
                         backend_name(b, 0, 1, "x"): 950.0}, [100.0, 300.0, 50.0]))

    @contextlib.contextmanager
    def outage() -> Iterator[Session]:
        raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        yield  # pragma: no cover

    assert recorder.write(outage, T0) is None and recorder.pending  # logged, skipped, kept
    # A second pass with a refusal: two dispatched (alice, bob), one accepted after 20 s.
    recorder.add(report({backend_name(a, 2, 1, "x"): 2000.0, backend_name(b, 1, 1, "x"): 2000.0}, [20.0]))
    assert recorder.write(ctx.transaction, T0 + 60) == 3 and not recorder.pending
    rows = {r[1]: r for r in history_rows(ctx)}
    assert rows[None][2:] == (0.0, 0, 4, 470.0, 300.0)  # the totals are exact
    assert rows["alice"][4:] == (2, pytest.approx(410.0), 300.0)  # 2 + half of the refused pass, rounded
    assert rows["bob"][4:] == (2, pytest.approx(60.0), 50.0)  # 1.5 rounds to even
    assert rows["alice"][3] == rows["bob"][3] == 0  # never expanded: nothing queued


# ---------------------------------------------------------------------------------------- retention
def test_the_daily_retention_run_prunes_old_history_in_batches(env: dict[str, str]) -> None:
    ctx = Context.from_env()
    (alice,) = user_ids(ctx, "alice")
    now = T0 + 100 * DAY
    add_rows(ctx, [{"at": now - d * DAY, "user_id": u} for d in (95, 92, 91, 89, 1) for u in (None, alice)])
    opened = []

    @contextlib.contextmanager
    def counted() -> Iterator[Session]:
        with ctx.transaction() as session:
            opened.append(session)
            yield session

    assert history.prune(counted, now, 90, batch=4) == 6  # 3 days x 2 rows, 4 at a time
    assert len(opened) == 2
    assert sorted({round((now - r[0]) / DAY) for r in history_rows(ctx)}) == [1, 89]
    add_rows(ctx, [{"at": now - 120 * DAY}])
    report_ = retention.daily(ctx, ctx.transaction, lambda: now)
    assert report_ is not None and report_.history_removed == 1
    assert "1 usage history row(s) removed" in report_.line()
    assert len(history_rows(ctx)) == 4


def test_records_older_than_a_day_are_thinned_to_one_per_hour(env: dict[str, str]) -> None:
    ctx = Context.from_env()
    alice, bob, carol = user_ids(ctx, "alice", "bob", "carol")
    hour = T0 - 2 * DAY  # a whole hour, two days old: thinned
    add_rows(ctx, [
        {"at": hour + 60, "running": 3.0, "queued": 5, "started": 1, "wait_seconds_sum": 10.0, "max_wait_seconds": 10.0},
        {"at": hour + 60, "user_id": alice, "running": 3.0, "queued": 5, "started": 1, "wait_seconds_sum": 10.0,
         "max_wait_seconds": 10.0},
        {"at": hour + 360, "running": 1.0, "started": 2, "wait_seconds_sum": 100.0, "max_wait_seconds": 70.0},
        {"at": hour + 360, "user_id": bob, "running": 1.0},  # running only between: gone with its record
        {"at": hour + 360, "user_id": carol, "started": 2, "wait_seconds_sum": 100.0, "max_wait_seconds": 70.0},
        {"at": T0 - 600, "running": 8.0}, {"at": T0 - 300, "running": 9.0},  # recent: kept as they are
    ])
    assert history.thin(ctx.transaction, T0, DAY, 3600) == 2  # five rows became three
    kept = sorted(history_rows(ctx), key=lambda r: (r[0], r[1] or ""))
    assert kept == [(hour + 60, None, 3.0, 5, 3, 110.0, 70.0), (hour + 60, "alice", 3.0, 5, 1, 10.0, 10.0),
                    (hour + 60, "carol", 0.0, 0, 2, 100.0, 70.0), (T0 - 600, None, 8.0, 0, 0, 0.0, 0.0),
                    (T0 - 300, None, 9.0, 0, 0, 0.0, 0.0)]
    assert history.thin(ctx.transaction, T0, DAY, 3600) == 0  # again: nothing changes
    assert sorted(history_rows(ctx), key=lambda r: (r[0], r[1] or "")) == kept


def test_keep_history_days_0_keeps_it_forever(env: dict[str, str], storage: Path) -> None:
    write_config(Path(env["ORCHESTRA_CONFIG"]), storage, "\n[retention]\nkeep_history_days = 0\n")
    ctx = Context.from_env()
    add_rows(ctx, [{"at": T0 - 1000 * DAY}])
    assert retention.daily(ctx, ctx.transaction, lambda: T0) is not None
    assert len(history_rows(ctx)) == 1


def test_history_goes_with_task_retention_off_too(env: dict[str, str], storage: Path) -> None:
    write_config(Path(env["ORCHESTRA_CONFIG"]), storage, "\n[retention]\nkeep_finished_days = 0\n")
    ctx = Context.from_env()
    add_rows(ctx, [{"at": T0 - 100 * DAY}, {"at": T0 - DAY}])
    assert retention.daily(ctx, ctx.transaction, lambda: T0) is None  # no task retention report
    assert [r[0] for r in history_rows(ctx)] == [T0 - DAY]


# ---------------------------------------------------------------------------------------- reading
def test_the_series_buckets_hand_made_rows(env: dict[str, str]) -> None:
    ctx = Context.from_env()
    ids = user_ids(ctx, "alice", "bob", "carol", "dave")
    alice, bob, carol, dave = ids
    width = 600  # 6 hours in 36 buckets
    rows: list[dict] = []
    # Bucket 0: two records. alice 4 then 2 running (mean 3), bob 1 at the second only (mean 0.5).
    rows += [{"at": T0 + 10, "running": 4.0, "started": 2, "wait_seconds_sum": 60.0, "max_wait_seconds": 40.0},
             {"at": T0 + 10, "user_id": alice, "running": 4.0, "queued": 5, "started": 2, "wait_seconds_sum": 60.0,
              "max_wait_seconds": 40.0},
             {"at": T0 + 310, "running": 3.0},
             {"at": T0 + 310, "user_id": alice, "running": 2.0, "queued": 3},
             {"at": T0 + 310, "user_id": bob, "running": 1.0, "started": 1, "wait_seconds_sum": 10.0,
              "max_wait_seconds": 10.0}]
    rows[2]["started"], rows[2]["wait_seconds_sum"] = 1, 10.0
    # Bucket 2: one record; carol and dave run 0.5 each (the smallest: "others" with top=2).
    rows += [{"at": T0 + 1210, "running": 1.0},
             {"at": T0 + 1210, "user_id": carol, "running": 0.5},
             {"at": T0 + 1210, "user_id": dave, "running": 0.5}]
    # Outside the window: ignored.
    rows += [{"at": T0 - 5, "running": 9.0}, {"at": T0 - 5, "user_id": bob, "running": 9.0}]
    add_rows(ctx, rows)
    with ctx.transaction() as session:
        s = history.series(session, T0, T0 + 6 * 3600, buckets=36, top=2)
    assert s.bucket_seconds == width and s.records == 3
    assert s.users == ["alice", "bob", "others"]
    assert len(s.points) == 36 and s.points[0].at == T0 and s.points[-1].at == T0 + 35 * width
    assert s.points[0].running == {"alice": 3.0, "bob": 0.5, "others": 0.0}
    assert s.points[0].wait_seconds == pytest.approx(70.0 / 3, abs=0.05)  # rounded to 0.1 s
    assert s.points[0].user_wait_seconds == {"alice": 30.0, "bob": 10.0, "others": None}
    assert s.points[1].running == {"alice": 0.0, "bob": 0.0, "others": 0.0} and s.points[1].wait_seconds is None
    assert s.points[2].running == {"alice": 0.0, "bob": 0.0, "others": 1.0}
    totals = {t.user: t for t in s.totals}
    assert [t.user for t in s.totals][:2] == ["alice", "bob"] and set(totals) == {"alice", "bob", "carol", "dave"}
    assert totals["alice"].mean_running == 2.0 and totals["alice"].peak_running == 4.0
    assert totals["alice"].peak_queued == 5 and totals["alice"].started == 2
    assert totals["alice"].mean_wait_seconds == 30.0 and totals["alice"].max_wait_seconds == 40.0
    assert totals["carol"].started == 0 and totals["carol"].mean_wait_seconds is None


def test_an_empty_window_has_points_but_no_records(env: dict[str, str]) -> None:
    ctx = Context.from_env()
    with ctx.transaction() as session:
        s = history.series(session, T0, T0 + 3600, buckets=120)
    assert s.records == 0 and s.users == [] and s.totals == [] and len(s.points) == 120
    assert all(p.running == {} and p.wait_seconds is None for p in s.points)


# ---------------------------------------------------------------------------------------- the schema
def test_migration_0011_goes_down_and_up(db_url: str) -> None:
    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010")
    assert "usage_history" not in inspect(engine).get_table_names()
    if engine.dialect.name == "postgresql":  # made by another database's migration (the template): kept
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = 'orchestra_readers'")).scalar()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert current_revision(engine) == HEAD_REVISION
    assert "ix_usage_history_at" in {i["name"] for i in inspect(engine).get_indexes("usage_history")}
    engine.dispose()


def test_the_readers_role_reads_and_cannot_write(db_url: str) -> None:
    """`orchestra web`'s production login (`GRANT orchestra_readers TO orchestra_web`): SELECT on
    the users' tables and the history, no INSERT/UPDATE/DELETE anywhere, no owner's function."""
    if db_url.startswith("sqlite"):
        pytest.skip("roles are PostgreSQL's")
    role = f"web_{uuid.uuid4().hex[:8]}"
    owner = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"))
        conn.execute(text(f"GRANT orchestra_readers TO {role}"))
        conn.execute(text("INSERT INTO users (name, share, usage, usage_at, created_at) VALUES ('ann', 1, 0, 0, 0)"))
        conn.execute(text("INSERT INTO usage_history (at, user_id, running, queued, started, wait_seconds_sum, "
                          "max_wait_seconds) VALUES (1, NULL, 0, 0, 0, 0, 0)"))
        tables = {t: first_column(conn, t) for t in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars()}
        functions = conn.execute(text(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.proname LIKE 'orchestra%'")).scalars().all()
    web = create_engine(role_url(db_url, role), isolation_level="AUTOCOMMIT")
    try:
        with web.connect() as conn:
            for table in ("tasks", "jobs", "attempts", "users", "datasets", "queue_holds", "usage_history"):
                conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            assert conn.execute(text("SELECT count(*) FROM usage_history")).scalar() == 1
            assert functions and not [f for f in functions if conn.execute(
                text("SELECT has_function_privilege(:f, 'EXECUTE')"), {"f": f}).scalar()]
            for table, column in tables.items():
                for statement in (f"INSERT INTO {table} DEFAULT VALUES", f"UPDATE {table} SET {column} = NULL",
                                  f"DELETE FROM {table}"):
                    with pytest.raises(DBAPIError, match="permission denied"):
                        conn.execute(text(statement))
    finally:
        web.dispose()
        with owner.connect() as conn:
            conn.execute(text(f"DROP ROLE {role}"))
        owner.dispose()


def first_column(conn, table: str) -> str:  # type: ignore[no-untyped-def]
    return conn.execute(text("SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                             "AND table_schema = current_schema() ORDER BY ordinal_position LIMIT 1"),
                        {"t": table}).scalar()
