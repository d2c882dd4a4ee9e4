"""The set-based writes and reads of the scheduler's hot path, on both databases: `bulk_update`
(one UPDATE ... FROM unnest() on PostgreSQL, an executemany on SQLite), `one_of` (= ANY(array) /
IN list), `queue_heads` (a LATERAL join / a query per task) and `start_queue_heads` (one statement
for the jobs and their tasks / two UPDATEs) must mean the same thing on both."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from orchestra.db.bulk import UNNEST_MIN_ROWS, bulk_update, one_of
from orchestra.db.engine import connect
from orchestra.db.models import Job, Task, User
from orchestra.scheduler.expand import expand_task
from orchestra.scheduler.cycle import _Statements
from orchestra.db.job_lookup import queue_heads
from orchestra.scheduler.heads import start_queue_heads
from tests.helpers import Cli

USERS = User.__table__


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = connect(db_url)
    with Session(engine) as session, session.begin():
        session.execute(USERS.insert(), [{"name": f"u{i}", "share": 1.0, "usage": float(i), "usage_at": 0.0,
                                          "created_at": 0.0} for i in range(500)])
    yield engine
    engine.dispose()


def tasks_of_alice(cli: Cli, storage: Path, configs: int, names: tuple[str, ...]) -> None:
    """alice's datasets (`configs` config files, one data file) and a bypassed task per name, not expanded."""
    (storage / "configs").mkdir()
    for i in range(configs):
        (storage / "configs" / f"c{i}").write_text(str(i))
    (storage / "data").write_text("d")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {storage / 'configs'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'} --cluster LPS")
    for name in names:
        cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t user.alice.{name} "
               "--containerImage x --exec 'run %DATA %IN %OUT' --bypass")


def users(engine: Engine) -> dict[str, tuple[float, float, float, int | None]]:
    with Session(engine) as session:
        return {r.name: (r.share, r.usage, r.usage_at, r.max_running) for r in session.execute(
            select(User.name, User.share, User.usage, User.usage_at, User.max_running))}


def test_bulk_update_sets_adds_fixes_and_guards(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        ids = dict(session.execute(select(User.name, User.id)).all())
        rows = [{"id": ids[f"u{i}"], "usage": 1000.0 + i, "share": 0.5, "max_running": None if i % 2 else i}
                for i in range(300)]
        bulk_update(session, USERS, rows, add=["share"], fixed={"usage_at": 42.0},
                    where=[USERS.c.name != "u7"])  # the guard holds u7 back
    after = users(engine)
    assert after["u0"] == (1.5, 1000.0, 42.0, 0)
    assert after["u1"] == (1.5, 1001.0, 42.0, None)  # NULLs travel in the arrays too
    assert after["u299"] == (1.5, 1299.0, 42.0, None)
    assert after["u7"] == (1.0, 7.0, 0.0, None)  # guarded: untouched
    assert after["u300"] == (1.0, 300.0, 0.0, None)  # not in the rows: untouched


@pytest.mark.parametrize("count", [2, UNNEST_MIN_ROWS + 4])  # executemany / unnest() on PostgreSQL
def test_bulk_update_by_another_key_with_only_fixed_values_and_nothing(engine: Engine, count: int) -> None:
    names = [f"u{i}" for i in range(3, 3 + count)]
    with Session(engine) as session, session.begin():
        bulk_update(session, USERS, [{"name": name} for name in names], key="name", fixed={"max_running": 9})
        bulk_update(session, USERS, [], fixed={"max_running": 1})  # no rows: no statement at all
    after = users(engine)
    assert sorted(name for name, row in after.items() if row[3] is not None) == sorted(names)
    assert {after[name][3] for name in names} == {9}


def test_few_rows_and_many_rows_update_alike(engine: Engine) -> None:
    """Both PostgreSQL paths (below and above UNNEST_MIN_ROWS) give the same result."""
    with Session(engine) as session, session.begin():
        ids = dict(session.execute(select(User.name, User.id)).all())
        for first, count in ((0, 1), (10, UNNEST_MIN_ROWS)):
            bulk_update(session, USERS, [{"id": ids[f"u{i}"], "usage": 0.5, "share": 2.0}
                                         for i in range(first, first + count)], add=["usage"])
    after = users(engine)
    assert after["u0"][:2] == (2.0, 0.5) and after["u10"][:2] == (2.0, 10.5)
    assert after["u25"][:2] == (2.0, 25.5) and after["u26"][:2] == (1.0, 26.0)


def test_lower_sets_a_column_only_where_the_value_is_lower(engine: Engine) -> None:
    """`lower` (a task's queue cursor going down), on both PostgreSQL paths."""
    with Session(engine) as session, session.begin():
        ids = dict(session.execute(select(User.name, User.id)).all())
        session.execute(update(User).values(max_running=10))
        for first, count in ((0, 2), (100, UNNEST_MIN_ROWS)):
            bulk_update(session, USERS, [{"id": ids[f"u{i}"], "usage": 1.0, "max_running": 5 + 10 * (i % 2)}
                                         for i in range(first, first + count)], add=["usage"], lower=["max_running"])
    after = users(engine)
    assert [after[f"u{i}"][3] for i in (0, 1, 100, 101, 200)] == [5, 10, 5, 10, 10]
    assert after["u1"][1] == 2.0 and after["u101"][1] == 102.0


def test_one_of_matches_hundreds_of_values_and_none(engine: Engine) -> None:
    with Session(engine) as session:
        ids = sorted(session.scalars(select(User.id)))
        wanted = ids[::2]
        assert sorted(session.scalars(select(User.id).where(one_of(session, User.id, wanted)))) == wanted
        assert session.scalars(select(User.id).where(one_of(session, User.id, []))).all() == []
        assert sorted(session.scalars(select(User.id).where(one_of(session, User.id, iter(ids[:3]))))) == ids[:3]


def test_queue_heads_are_the_first_queued_jobs_of_each_task(cli: Cli, db_url: str, storage: Path) -> None:
    tasks_of_alice(cli, storage, 6, ("a", "b"))
    engine = connect(db_url)
    with Session(engine) as session, session.begin():
        a, b = session.scalars(select(Task.id).order_by(Task.id)).all()
        for task_id in (a, b):
            expand_task(session, task_id, 0.0)
        jobs = {t: session.scalars(select(Job.id).where(Job.task_id == t).order_by(Job.id)).all() for t in (a, b)}
        session.execute(update(Job).where(Job.id.in_([jobs[a][0], jobs[b][1]])).values(status="running"))
    with Session(engine) as session:
        choices = queue_heads(session, [(a, 2), (b, 3)])
        heads = choices[a].ids + choices[b].ids
        assert choices[a].ids == jobs[a][1:3] and choices[b].ids == [jobs[b][0], jobs[b][2], jobs[b][3]]
        assert queue_heads(session, [(a, 100)])[a].ids == jobs[a][1:]  # fewer queued than asked: all of them
        assert queue_heads(session, []) == {}
    sql = _Statements(db_url.startswith("sqlite"))
    with Session(engine) as session:
        queued_before = dict(session.execute(select(Task.id, Task.n_queued)).all())
    with Session(engine) as session, session.begin():
        started = start_queue_heads(session, [(a, 2), (b, 3)], sql.start_jobs)
        assert sorted(r.id for r in started) == sorted(heads)  # the heads, as queue_heads chose them
        assert {r.task_id for r in started} == {a, b} and all(r.attempts == 1 for r in started)
        assert start_queue_heads(session, [], sql.start_jobs) == []
    with Session(engine) as session:
        status = dict(session.execute(select(Job.id, Job.status)).all())
        assert sorted(i for i, s in status.items() if s == "starting") == sorted(heads)
        assert [status[jobs[a][0]], status[jobs[b][1]]] == ["running", "running"]  # never started twice
        after = {t: (n, q) for t, n, q in session.execute(select(Task.id, Task.n_queued, Task.queue_from))}
        assert {t: queued_before[t] - after[t][0] for t in (a, b)} == {a: 2, b: 3}  # taken off n_queued
        assert {t: after[t][1] for t in (a, b)} == {a: 3, b: 4}  # the cursors: past the jobs taken
        assert sorted(i for i, s in status.items() if s == "queued") == [jobs[a][3], jobs[a][4], jobs[a][5],
                                                                            jobs[b][4], jobs[b][5]]
    engine.dispose()


def test_a_guard_on_a_transient_state_never_drives_the_plan(cli: Cli, db_url: str, storage: Path) -> None:
    """The acknowledgement's UPDATE (jobs by id, guarded by `status = 'starting'`) after an ANALYZE
    that saw no job starting: PostgreSQL estimated one row for the guard, drove the UPDATE from the
    status index and ran unnest() once per row found (1,000 acknowledgements at 1M jobs: 160-190 ms
    instead of 15-22). The guard must stay a filter on the rows the ids find; on both databases
    it still holds back the rows it guards."""
    from orchestra.db.bulk import bulk_insert
    from orchestra.scheduler.cycle import _JOB_STARTING
    from sqlalchemy import event, func, text

    tasks_of_alice(cli, storage, 1, ("big",))
    engine = connect(db_url)
    jobs = Job.__table__
    with Session(engine) as session, session.begin():
        task_id = session.scalar(select(Task.id))
        bulk_insert(session, jobs, ("task_id", "index", "config_path", "output_dir", "command", "status", "is_scout",
                                    "attempts", "failures", "queued_at"),
                    [(task_id, i, f"/c/{i}", f"/o/{i}", "run", "queued", False, 0, 0, 0.0) for i in range(20_000)])
    if not db_url.startswith("sqlite"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE jobs"))  # the statistics: no job starting
    with Session(engine) as session, session.begin():
        ids = session.scalars(select(Job.id).order_by(Job.id)).all()
        starting, other = ids[::40], ids[1:200:40]  # 500 starting (after the ANALYZE), 5 still queued
        session.execute(update(Job).where(Job.id.in_(starting)).values(status="starting"))
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, many):  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("UPDATE jobs"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    with Session(engine) as session, session.begin():
        bulk_update(session, jobs, [{"id": i, "started_at": 7.0} for i in starting + other], where=[_JOB_STARTING],
                    fixed={"status": "running"})
    event.remove(engine, "before_cursor_execute", capture)
    with Session(engine) as session:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        assert counts == {"running": 500, "queued": 19_500}  # the 5 guarded ones stayed queued
        assert session.scalar(select(func.count()).where(Job.started_at == 7.0)) == 500
    if not db_url.startswith("sqlite"):
        [(statement, parameters)] = captured
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            raw.close()
        assert "ix_jobs" not in plan, plan  # found by their ids, the guard a filter, never a status index
    engine.dispose()


def test_a_value_shared_by_every_row_is_sent_once_and_still_set(engine: Engine, db_url: str) -> None:
    from sqlalchemy import event

    captured: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: captured.append(statement))
    with Session(engine) as session, session.begin():
        ids = dict(session.execute(select(User.name, User.id)).all())
        rows = [{"id": ids[f"u{i}"], "usage": float(i) / 2, "share": 0.25, "max_running": None}
                for i in range(UNNEST_MIN_ROWS + 4)]
        rows[3]["share"] = 0.25  # the same value, an equal float: still one value
        bulk_update(session, USERS, rows, fixed={"usage_at": 5.0})
    after = users(engine)
    assert [after[f"u{i}"] for i in range(UNNEST_MIN_ROWS + 4)] == [
        (0.25, i / 2, 5.0, None) for i in range(UNNEST_MIN_ROWS + 4)]
    assert after[f"u{UNNEST_MIN_ROWS + 4}"] == (1.0, float(UNNEST_MIN_ROWS + 4), 0.0, None)  # not in the rows
    if not db_url.startswith("sqlite"):
        [statement] = [s for s in captured if s.startswith("UPDATE users")]
        assert "unnest(%(arr_id)s::BIGINT[], %(arr_usage)s::FLOAT[])" in statement, statement  # usage varies
        assert "share=%(fix_share)s" in statement and "max_running=%(fix_max_running)s" in statement
    with Session(engine) as session, session.begin():  # True == 1, but not the same value: not folded
        bulk_update(session, USERS, [{"id": ids[f"u{i}"], "max_running": 1 if i else True}
                                     for i in range(UNNEST_MIN_ROWS)])
    assert {after_row[3] for name, after_row in users(engine).items() if int(name[1:]) < UNNEST_MIN_ROWS} == {1}
