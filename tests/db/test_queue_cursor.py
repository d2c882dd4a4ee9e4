"""A task's queue read from its cursor and the partial indexes (orchestra/db/job_lookup.py,
scheduler/heads.py), on both databases: dispatch order by index with retries in their place, the
cursor's moves (down for a job that never ran and is queued again, by the CLI's retry on either
database), the safety net when the cursor is wrong, the plans, and migration 0012 down and up."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, inspect, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from orchestra.backends.null import NullBackend
from orchestra.db.engine import HEAD_REVISION, connect, current_revision, downgrade, make_engine, upgrade
from orchestra.db.job_lookup import (CANDIDATES, CANDIDATES_SQLITE, first_jobs, queue_heads, queued_ahead, settled,
                                     settled_counts, state_counts)
from orchestra.db.models import Attempt, Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.scheduler.expand import expand_task
from tests.db.test_bulk import tasks_of_alice
from tests.db.test_perf_short_pass import submit
from tests.helpers import Cli


def jobs_by_index(scheduler: Scheduler) -> dict[int, tuple[int, str, int]]:
    """index -> (job id, status, attempts) of the one task."""
    with Session(scheduler.ctx.engine) as session:
        return {i: (j, s, a) for j, i, s, a in session.execute(select(Job.id, Job.index, Job.status, Job.attempts))}


def cursor(scheduler: Scheduler) -> tuple[int, int]:
    """(queue_from, n_queued) of the one task."""
    with Session(scheduler.ctx.engine) as session:
        return tuple(session.execute(select(Task.queue_from, Task.n_queued)).one())  # type: ignore[return-value]


def running_index(backend: NullBackend, index: int) -> str:
    """The backend name of the running attempt of the job with this index."""
    [name] = [n for n in backend.running if int(n.rsplit("-", 2)[1]) == index]
    return name


def test_a_retried_job_keeps_its_place_and_every_job_runs_once_to_success(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    scheduler, backend = sched
    submit(cli, storage, 8)
    assert scheduler.cycle().counts["started"] == 4  # indexes 0-3 (the 4 cpu slots)
    assert cursor(scheduler) == (4, 4)
    backend.finish([running_index(backend, 1)], exit_code=1)  # fails once: retried (attempts 1)
    report = scheduler.cycle(full=False)
    assert (report.counts["retried"], report.counts["started"]) == (1, 1)
    jobs = jobs_by_index(scheduler)
    assert jobs[1][1:] == ("running", 2)  # before index 4: by index, as the queue always was
    assert jobs[4][1] == "queued" and cursor(scheduler) == (4, 4)  # the retry did not move the cursor
    for _ in range(10):
        backend.finish(list(backend.running))
        scheduler.cycle(full=False)
    jobs = jobs_by_index(scheduler)
    assert {i: s for i, (_, s, _) in jobs.items()} == {i: "succeeded" for i in range(8)}
    assert {i: a for i, (_, _, a) in jobs.items()} == {i: 2 if i == 1 else 1 for i in range(8)}
    assert cursor(scheduler) == (8, 0)


def test_a_job_killed_before_it_ran_and_retried_takes_the_cursor_down(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    """`maestro job retry` (SQLite: Python; PostgreSQL: the SECURITY DEFINER function)."""
    scheduler, backend = sched
    submit(cli, storage, 6)
    scheduler.cycle()
    jobs = jobs_by_index(scheduler)
    cli.ok(f"maestro job kill {jobs[4][0]}")  # queued, never ran
    backend.finish([running_index(backend, 0)])
    scheduler.cycle(full=False)
    assert jobs_by_index(scheduler)[5][1] == "running" and cursor(scheduler) == (6, 0)
    cli.ok(f"maestro job retry {jobs[4][0]}")
    assert cursor(scheduler) == (4, 1)  # down to it: the dispatch reads the queue from index 4
    cli.ok(f"maestro job kill {jobs[4][0]}")
    for index in (1, 2, 3):
        backend.finish([running_index(backend, index)])
    scheduler.cycle(full=False)
    cli.ok("maestro task retry -t user.alice.t")  # the whole task: its one killed job again
    assert cursor(scheduler) == (4, 1)
    backend.finish(list(backend.running))
    scheduler.cycle(full=False)
    assert jobs_by_index(scheduler)[4][1:] == ("running", 1) and cursor(scheduler)[1] == 0


def test_a_fresh_job_below_the_cursor_waits_one_pass_and_is_never_lost(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend]) -> None:
    """The safety net: a cursor past queued fresh jobs (a move back to QUEUED that did not lower
    it) makes the dispatch find fewer jobs than `n_queued` promised; the cursor goes to 0 and the
    next pass finds them."""
    scheduler, backend = sched
    submit(cli, storage, 6)
    scheduler.cycle()
    with Session(scheduler.ctx.engine) as session, session.begin():
        session.execute(update(Task).values(queue_from=100))
    backend.finish([running_index(backend, 0), running_index(backend, 1)])
    report = scheduler.cycle(full=False)
    assert report.counts["started"] == 0 and cursor(scheduler) == (0, 2)
    report = scheduler.cycle(full=False)
    assert report.counts["started"] == 2 and cursor(scheduler) == (6, 0)
    assert [jobs_by_index(scheduler)[i][1] for i in (4, 5)] == ["running", "running"]


def test_the_queue_view_and_the_position_read_the_dispatch_order(cli: Cli, storage: Path, db_url: str) -> None:
    tasks_of_alice(cli, storage, 8, ("a",))
    engine = connect(db_url)
    with Session(engine) as session, session.begin():
        task_id = session.scalar(select(Task.id))
        expand_task(session, task_id, 0.0)
        ids = {i: j for j, i in session.execute(select(Job.id, Job.index))}
        # 0-3 ran: 0, 1 and 3 succeeded, 2 failed once and is queued again; the cursor at 4.
        session.execute(update(Job).where(Job.index.in_([0, 1, 3])).values(status="succeeded", attempts=1))
        session.execute(update(Job).where(Job.index == 2).values(attempts=1))
        session.execute(update(Task).values(queue_from=4, n_queued=5))
    with Session(engine) as session:
        heads = first_jobs(session, {task_id: 3}, "queued")[task_id]
        assert heads == [(ids[2], 2), (ids[4], 4), (ids[5], 5)]
        assert queue_heads(session, [(task_id, 3)])[task_id].ids == [ids[2], ids[4], ids[5]]
        assert [queued_ahead(session, task_id, i) for i in (2, 4, 7)] == [0, 1, 4]
        assert state_counts(session, [task_id]) == {task_id: {"queued": 5, "succeeded": 3}}
    engine.dispose()


def test_the_lookups_use_the_partial_indexes(cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend],
                                             db_url: str) -> None:
    scheduler, _ = sched
    submit(cli, storage, 4)
    scheduler.cycle()
    engine = scheduler.ctx.engine
    sqlite = db_url.startswith("sqlite")
    with Session(engine) as session:
        task_id = session.scalar(select(Task.id))
        count = select(Job.task_id, Job.status).where(Job.task_id == task_id)
        counts = count.where(settled("failed", "killed"))
        connection = session.connection()
        if sqlite:
            def plan(sql: str, params: tuple | dict) -> str:  # type: ignore[type-arg]
                return " ".join(str(r[-1]) for r in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))

            compiled = counts.compile(engine, compile_kwargs={"literal_binds": True})
            assert "ix_jobs_settled" in plan(str(compiled), ())
            heads = plan(CANDIDATES_SQLITE, (task_id, 0, 3))  # the unique (task_id, index): SQLite's autoindex
            assert "(task_id=? AND index>?)" in heads and "ix_jobs_retried (task_id=?)" in heads, heads
        else:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            compiled = counts.compile(engine, compile_kwargs={"literal_binds": True})
            assert "ix_jobs_settled" in "\n".join(r[0] for r in connection.exec_driver_sql(f"EXPLAIN {compiled}"))
            raw = connection.connection.cursor()
            raw.execute("EXPLAIN " + CANDIDATES.plain, ([task_id], [3]))
            heads = "\n".join(r[0] for r in raw.fetchall())
            assert "uq_jobs_task_index" in heads and "ix_jobs_retried" in heads, heads
        assert settled_counts(session, [task_id]) == {task_id: {}}
        live = state_counts(session, [task_id])[task_id]
        assert sum(live.values()) == 4 and set(live) <= {"starting", "running"}


def test_the_counts_are_one_snapshot_while_jobs_move_between_their_sources(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend], db_url: str) -> None:
    """The counts per state come from three sources (n_queued, live attempts, ix_jobs_settled). A
    commit between their reads (PostgreSQL's READ COMMITTED: a snapshot per statement) would count a
    job in neither source; `task watch` showed counts short of the task's jobs. Here another
    connection kills a queued job before every statement of the read: the counts add up."""
    scheduler, _ = sched
    submit(cli, storage, 8)
    scheduler.cycle()  # 4 running, 4 queued
    with Session(scheduler.ctx.engine) as session:
        task_id = session.execute(select(Task.id)).scalar_one()
        queued = list(session.execute(select(Job.id).where(Job.status == "queued").order_by(Job.index)).scalars())
    # SQLite's transactions are IMMEDIATE (db/engine.py): once the read has begun, a writer waits.
    mover = create_engine(db_url, connect_args={"timeout": 0} if db_url.startswith("sqlite") else {})
    reader = make_engine(db_url)
    moved: list[int] = []
    blocked: list[int] = []

    def kill_one_queued(*_: object) -> None:
        if len(moved) < len(queued):
            job_id = queued[len(moved)]
            try:
                with mover.begin() as connection:
                    connection.execute(update(Job).where(Job.id == job_id).values(status="killed"))
                    connection.execute(update(Task).where(Task.id == task_id).values(n_queued=Task.n_queued - 1))
            except OperationalError:  # SQLite: "database is locked", at once (timeout 0)
                blocked.append(job_id)
                return
            moved.append(job_id)

    event.listen(reader, "before_cursor_execute", kill_one_queued)
    try:
        with Session(reader) as session, session.begin():
            counts = state_counts(session, [task_id])[task_id]
    finally:
        event.remove(reader, "before_cursor_execute", kill_one_queued)
        mover.dispose()
        reader.dispose()
    assert moved and sum(counts.values()) == 8, (moved, blocked, counts)
    assert counts["killed"] + counts.get("queued", 0) == 4 and counts["running"] == 4


def test_migration_0012_goes_down_and_up(cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend],
                                         db_url: str) -> None:
    scheduler, _ = sched
    submit(cli, storage, 6)
    scheduler.cycle()  # 4 running, 2 queued, the cursor at 4
    scheduler.ctx.engine.dispose()
    engine = make_engine(db_url)
    downgrade(engine, "0011")
    assert "ix_jobs_task_status" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert "queue_from" not in {c["name"] for c in inspect(engine).get_columns("tasks")}
    upgrade(engine)
    assert current_revision(engine) == HEAD_REVISION
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert {"ix_jobs_settled", "ix_jobs_retried"} <= indexes and "ix_jobs_task_status" not in indexes
    with Session(engine) as session:
        task_id, queue_from = session.execute(select(Task.id, Task.queue_from)).one()
        assert queue_from == 0  # valid for any task: read from its first job once
        choice = queue_heads(session, [(task_id, 2)])[task_id]
        queued = session.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.index)).all()
        assert choice.ids == queued and choice.next_from == 6
        assert session.scalar(select(Attempt.id).limit(1)) is not None
    engine.dispose()
