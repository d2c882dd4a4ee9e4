"""The usage history (orchestra/services/history.py, migration 0011), on SQLite and PostgreSQL:
the scheduler loop records it after real cycles, for active users only; a failed write is skipped
and its starts carried to the next record; the rollups the recorder keeps equal the aggregation
of the raw records; the daily retention run prunes raw records and each rollup level in batches;
the series of each window reads its level and buckets hand-made records; the migration goes down
and up; and on PostgreSQL the dashboard's read-only group role reads and cannot write."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from orchestra.db.engine import HEAD_REVISION, current_revision, downgrade, make_engine, upgrade
from orchestra.db.models import UsageHistory, UsageRollup, User
from orchestra.scheduler.cycle import CycleReport, backend_name
from orchestra.services import history, retention
from orchestra.services.context import Context
from tests.db.conftest import readers_login
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
    """Hand-made records, written as the recorder writes them: raw rows and their rollups."""
    full = [{"user_id": None, "running": 0.0, "queued": 0, "started": 0, "wait_seconds_sum": 0.0,
             "max_wait_seconds": 0.0, **r} for r in rows]
    with ctx.transaction() as session:
        session.execute(insert(UsageHistory), full)
        history.roll_up(session, full)


def rollups(ctx: Context) -> list[tuple]:
    """Every rollup row, user by name, in a stable order."""
    r = UsageRollup
    with ctx.transaction() as session:
        rows = session.execute(
            select(r.level_seconds, r.bucket_at, User.name, r.samples, r.running_sum, r.running_max, r.queued_max,
                   r.started, r.wait_sum, r.wait_max).outerjoin(User, User.id == r.user_id)).all()
    return sorted((tuple(round(float(v), 6) if isinstance(v, float) else v for v in row) for row in rows),
                  key=lambda t: (t[0], t[1], t[2] or ""))


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


# ---------------------------------------------------------------------------------------- rollups
def test_the_rollups_equal_the_aggregation_of_the_raw_records(env: dict[str, str], cli: Cli, storage: Path) -> None:
    """Records one by one (each an upsert into the buckets of every level), one recorder write
    among them, and the same buckets recomputed from the raw rows in SQL (`rebuild`): equal."""
    configs, data = make_inputs(storage / "in", 1)
    cli.ok(f"orchestra_registry -d user.bob.cfg -p {configs}/", user="bob")
    cli.ok(f"orchestra_registry -d user.bob.data -p {data}", user="bob")
    cli.ok("maestro task create -c user.bob.cfg -d user.bob.data -t user.bob.t --containerImage i "
           "--exec 'echo %DATA %IN %OUT'", user="bob")
    ctx = Context.from_env()
    alice, bob = user_ids(ctx, "alice", "bob")
    with ctx.transaction() as session:
        task = session.execute(text("SELECT id FROM tasks")).scalar_one()
    for i, at in enumerate([T0 - 7100, T0 - 3000, T0 - 290, T0 - 10]):  # one 6-hour bucket, finer ones apart
        add_rows(ctx, [{"at": at, "running": 3.0 + i, "queued": 10 - i, "started": i, "wait_seconds_sum": 5.0 * i,
                        "max_wait_seconds": 4.0 * i},
                       {"at": at, "user_id": alice, "running": 2.0 + i, "queued": 7, "started": i,
                        "wait_seconds_sum": 5.0 * i, "max_wait_seconds": 4.0 * i},
                       {"at": at, "user_id": bob, "running": 1.0, "queued": 3 - i % 2}])
    recorder = history.Recorder()
    recorder.add(report({backend_name(task, 0, 1, "x"): T0 - 40.0}, [25.0]))
    assert recorder.write(ctx.transaction, T0 + 5) == 2  # totals and bob (started one)
    incremental = rollups(ctx)
    levels = [level for level, _ in history.LEVELS]
    # By hand, the 6-hour bucket holding all five records: totals, alice, bob.
    six = [r for r in incremental if r[0] == 21600 and r[1] == (T0 // 21600) * 21600]
    assert [r[2:] for r in six] == [
        (None, 5, 18.0, 6.0, 10, 7, 55.0, 25.0),  # running 3+4+5+6+0, started 0+1+2+3+1, waits 0+5+10+15+25
        ("alice", 4, 14.0, 5.0, 7, 6, 30.0, 12.0),
        ("bob", 5, 4.0, 1.0, 3, 1, 25.0, 25.0)]  # with the recorder's row: nothing runs or is queued, one start
    assert {r[0] for r in incremental} == set(levels)
    assert len([r for r in incremental if r[0] == 300 and r[2] is None]) == 4  # T0 - 290 and T0 - 10 share one
    with ctx.transaction() as session:
        assert history.rebuild(session) == len(incremental)
    assert rollups(ctx) == incremental


# ---------------------------------------------------------------------------------------- retention
def test_retention_prunes_raw_records_and_each_level_in_batches(env: dict[str, str]) -> None:
    """Raw records go after two days, each rollup level after its horizon (5 min: a day, 15 min:
    two, 2 h: ten), the 6-hour and 1-day levels after keep_history_days; batch by batch."""
    ctx = Context.from_env()
    (alice,) = user_ids(ctx, "alice")
    now = T0 + 100 * DAY + 14400  # a multiple of 6 hours: each record starts a bucket at every level
    ages = (95.0, 89.0, 9.0, 1.5, 0.5)  # days
    add_rows(ctx, [{"at": now - d * DAY, "user_id": u} for d in ages for u in (None, alice)])
    opened = []

    @contextlib.contextmanager
    def counted() -> Iterator[Session]:
        with ctx.transaction() as session:
            opened.append(session)
            yield session

    def ages_left() -> dict:
        with ctx.transaction() as session:
            left = {"raw": sorted({round((now - at) / DAY, 1) for at in session.scalars(select(UsageHistory.at))})}
            for level, _ in history.LEVELS:
                left[level] = sorted({round((now - at) / DAY, 1) for at in session.scalars(
                    select(UsageRollup.bucket_at).where(UsageRollup.level_seconds == level))})
        return left

    removed = history.prune(counted, now, 90, batch=4)
    # raw: 95, 89, 9 (6 rows); 5 min: all but 0.5 (8); 15 min: 95, 89, 9 (6); 2 h: 95, 89 (4); 6 h: 95 (2);
    # 1 day: 95 (2).
    assert removed == 6 + 8 + 6 + 4 + 2 + 2
    assert len(opened) == 2 + 3 + 2 + 2 + 1 + 1  # 4 rows a transaction, until one finds fewer
    assert ages_left() == {"raw": [0.5, 1.5], 300: [0.5], 900: [0.5, 1.5], 7200: [0.5, 1.5, 9.0],
                           21600: [0.5, 1.5, 9.0, 89.0], 86400: [0.5, 1.5, 9.5, 89.5]}  # days start at 0:00
    add_rows(ctx, [{"at": now - 120 * DAY}])  # a raw row and a bucket per level, all too old
    report_ = retention.daily(ctx, ctx.transaction, lambda: now)
    assert report_ is not None and report_.history_removed == 6
    assert "6 usage history row(s) removed" in report_.line()
    assert history.prune(ctx.transaction, now, 90) == 0  # again: nothing


def test_keep_history_days_0_keeps_the_coarsest_rollups_forever(env: dict[str, str], storage: Path) -> None:
    write_config(Path(env["ORCHESTRA_CONFIG"]), storage, "\n[retention]\nkeep_history_days = 0\n")
    ctx = Context.from_env()
    add_rows(ctx, [{"at": T0 - 1000 * DAY, "running": 2.0}])
    assert retention.daily(ctx, ctx.transaction, lambda: T0) is not None
    assert history_rows(ctx) == []  # the raw record went after two days
    assert [r[:2] + r[3:5] for r in rollups(ctx)] == [(21600, (T0 - 1000 * DAY) // 21600 * 21600, 1, 2.0),
                                                      (86400, (T0 - 1000 * DAY) // 86400 * 86400, 1, 2.0)]
    with ctx.transaction() as session:
        s = history.series(session, T0 - 1001 * DAY, T0 - 999 * DAY, buckets=8)
    assert s.bucket_seconds == 21600 and s.records == 1


def test_history_goes_with_task_retention_off_too(env: dict[str, str], storage: Path) -> None:
    write_config(Path(env["ORCHESTRA_CONFIG"]), storage, "\n[retention]\nkeep_finished_days = 0\n")
    ctx = Context.from_env()
    add_rows(ctx, [{"at": T0 - 100 * DAY}, {"at": T0 - DAY}])
    assert retention.daily(ctx, ctx.transaction, lambda: T0) is None  # no task retention report
    assert [r[0] for r in history_rows(ctx)] == [T0 - DAY]
    assert {r[1] for r in rollups(ctx)} == {(T0 - DAY) // level * level for level, _ in history.LEVELS}


# ---------------------------------------------------------------------------------------- reading
def test_the_series_buckets_hand_made_rows(env: dict[str, str]) -> None:
    ctx = Context.from_env()
    ids = user_ids(ctx, "alice", "bob", "carol", "dave")
    alice, bob, carol, dave = ids
    width = 900  # 6 hours in at most 24 buckets: the 15-minute level
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
    # Bucket 1: one record; carol and dave run 0.5 each (the smallest: "others" with top=2).
    rows += [{"at": T0 + 1210, "running": 1.0},
             {"at": T0 + 1210, "user_id": carol, "running": 0.5},
             {"at": T0 + 1210, "user_id": dave, "running": 0.5}]
    # Outside the window: ignored.
    rows += [{"at": T0 - 5, "running": 9.0}, {"at": T0 - 5, "user_id": bob, "running": 9.0}]
    add_rows(ctx, rows)
    with ctx.transaction() as session:
        s = history.series(session, T0, T0 + 6 * 3600, buckets=24, top=2)
    assert s.bucket_seconds == width and s.records == 3
    assert s.users == ["alice", "bob", "others"]
    assert len(s.points) == 24 and s.points[0].at == T0 and s.points[-1].at == T0 + 23 * width
    assert s.points[0].running == {"alice": 3.0, "bob": 0.5, "others": 0.0}
    assert s.points[0].wait_seconds == pytest.approx(70.0 / 3, abs=0.05)  # rounded to 0.1 s
    assert s.points[0].user_wait_seconds == {"alice": 30.0, "bob": 10.0, "others": None}
    assert s.points[1].running == {"alice": 0.0, "bob": 0.0, "others": 1.0}
    assert s.points[2].running == {"alice": 0.0, "bob": 0.0, "others": 0.0} and s.points[2].wait_seconds is None
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
    assert s.records == 0 and s.users == [] and s.totals == [] and len(s.points) == 12  # 5-minute buckets
    assert all(p.running == {} and p.wait_seconds is None for p in s.points)


@pytest.mark.parametrize(("hours", "level"), [(6, 300), (24, 900), (168, 7200), (720, 21600)])
def test_each_window_reads_its_level_and_gives_the_records_numbers(env: dict[str, str], hours: int,
                                                                   level: int) -> None:
    """A month of records (one every 2 hours, and every 5 minutes over the last 6 hours): each
    window reads one level, draws at most 121 points, and its totals are those of the records in
    its (bucket-aligned) span: mean running over the records, exact starts and waits, peaks."""
    ctx = Context.from_env()
    alice, bob = user_ids(ctx, "alice", "bob")
    now = T0 + 1234.5
    times = sorted({now - k * 7200 for k in range(1, 31 * 12)} | {now - k * 300 for k in range(1, 72)})
    raw, rows = [], []
    for i, at in enumerate(times):
        a, b = 1.0 + i % 5, float(i % 3)  # alice runs 1..5, bob 0..2
        raw.append((at, a, b, i % 4))
        rows += [{"at": at, "running": a + b, "started": i % 4, "wait_seconds_sum": 10.0 * (i % 4),
                  "max_wait_seconds": 7.0 * (i % 4)},
                 {"at": at, "user_id": alice, "running": a, "queued": i % 7, "started": i % 4,
                  "wait_seconds_sum": 10.0 * (i % 4), "max_wait_seconds": 7.0 * (i % 4)},
                 {"at": at, "user_id": bob, "running": b}]
    add_rows(ctx, rows)  # in one go: the rollups sum them as the upserts of each record would
    with ctx.transaction() as session:
        s = history.series(session, now - hours * 3600, now, buckets=120)
    assert s.bucket_seconds == level and len(s.points) <= 121 and s.since_at % level == 0
    assert s.since_at <= now - hours * 3600 < s.since_at + level and s.points[0].at == s.since_at
    inside = [r for r in raw if s.since_at <= r[0] < now]
    assert s.records == len(inside)
    totals = {t.user: t for t in s.totals}
    assert totals["alice"].mean_running == pytest.approx(sum(r[1] for r in inside) / len(inside), abs=1e-3)
    assert totals["bob"].mean_running == pytest.approx(sum(r[2] for r in inside) / len(inside), abs=1e-3)
    assert totals["alice"].started == sum(r[3] for r in inside)
    assert totals["alice"].mean_wait_seconds == pytest.approx(10.0, abs=0.05)
    assert totals["alice"].max_wait_seconds == 21.0 and totals["alice"].peak_running == 5.0
    assert totals["alice"].peak_queued == 6
    # The points: each record's slots in its bucket, averaged.
    for p in s.points:
        here = [r for r in inside if p.at <= r[0] < p.at + level]
        if here:
            assert p.running["alice"] == pytest.approx(sum(r[1] for r in here) / len(here), abs=1e-3)


def test_a_bucket_narrower_than_the_interval_holds_the_slots_before_it(env: dict[str, str]) -> None:
    """Records every 10 minutes read in 5-minute buckets: with `hold` (the scheduler's interval)
    the bucket between two records shows the first one's slots, not a dip to zero; a longer gap
    (the scheduler stopped) still shows zero."""
    ctx = Context.from_env()
    (alice,) = user_ids(ctx, "alice")
    add_rows(ctx, [row for at in (T0 + 10, T0 + 610, T0 + 1210, T0 + 3010)
                   for row in ({"at": at, "running": 2.0}, {"at": at, "user_id": alice, "running": 2.0})])
    with ctx.transaction() as session:
        plain = history.series(session, T0, T0 + 3600, buckets=120)
        held = history.series(session, T0, T0 + 3600, buckets=120, hold=600)
    assert plain.bucket_seconds == 300
    assert [p.running["alice"] for p in plain.points] == [2.0, 0, 2.0, 0, 2.0, 0, 0, 0, 0, 0, 2.0, 0]
    assert [p.running["alice"] for p in held.points] == [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0, 0, 0, 2.0, 2.0]
    assert held.totals == plain.totals and held.records == plain.records == 4
    assert all(p.wait_seconds is None for p in held.points)


def test_the_totals_tile_the_window_with_the_coarsest_buckets() -> None:
    """A month in 6-hour buckets: whole days inside, 6-hour buckets at the ends; the tiles cover
    the window once, each a whole bucket of its level."""
    lo, hi = 1_000 * DAY + 3 * 21600, 1_030 * DAY + 21600 + 5.0
    tiles = history.cover(lo, hi, 21600)
    assert tiles == [(21600, lo, 1_001 * DAY), (21600, 1_030 * DAY, 1_030 * DAY + 2 * 21600),
                     (86400, 1_001 * DAY, 1_030 * DAY)]
    assert history.cover(0.0, 600.0, 300) == [(300, 0.0, 600.0)]
    six = history.cover(7100 * 300.0, 7100 * 300.0 + 6 * 3600 + 1, 300)
    assert sum(b - a for _, a, b in six) == 6 * 3600 + 300 and all(a % level == b % level == 0 for level, a, b in six)


# ---------------------------------------------------------------------------------------- the schema
def test_migration_0011_goes_down_and_up(db_url: str) -> None:
    engine = make_engine(db_url)
    downgrade(engine, "0010")
    assert not {"usage_history", "usage_rollup"} & set(inspect(engine).get_table_names())
    if engine.dialect.name == "postgresql":  # made by another database's migration (the template): kept
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = 'orchestra_readers'")).scalar()
    upgrade(engine)
    assert current_revision(engine) == HEAD_REVISION
    assert "ix_usage_history_at" in {i["name"] for i in inspect(engine).get_indexes("usage_history")}
    assert {"ix_usage_rollup_level_bucket_user", "ix_usage_rollup_totals"} <= {
        i["name"] for i in inspect(engine).get_indexes("usage_rollup")}
    engine.dispose()


def test_the_readers_role_reads_and_cannot_write(db_url: str) -> None:
    """`orchestra web`'s production login (`GRANT orchestra_readers TO orchestra_web`): SELECT on
    the users' tables and the history, no INSERT/UPDATE/DELETE anywhere, no owner's function."""
    if db_url.startswith("sqlite"):
        pytest.skip("roles are PostgreSQL's")
    with readers_login(db_url) as role:
        _check_reader(db_url, role)


def _check_reader(db_url: str, role: str) -> None:
    owner = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
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
            for table in ("tasks", "jobs", "attempts", "users", "datasets", "queue_holds", "usage_history",
                          "usage_rollup"):
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
        owner.dispose()


def first_column(conn, table: str) -> str:  # type: ignore[no-untyped-def]
    return conn.execute(text("SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                             "AND table_schema = current_schema() ORDER BY ordinal_position LIMIT 1"),
                        {"t": table}).scalar()
