"""The database is the wall (PostgreSQL): users connect as their own password-authenticated roles
(tests/conftest.py trusts only the superuser) and every route around the CLI is refused by the
server itself, leaving the database exactly as it was.

Roles: alice and bob (orchestra_users), carol (orchestra_admins), sched (orchestra_scheduler).
The setup runs as those roles: alice and bob register datasets and create tasks (the services
the CLI calls), and the scheduler's expansion, connected as `sched`, expands them. The attack table
shares one such database per worker (it must stay unchanged); tests that change it get their own.
"""
from __future__ import annotations

import io
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from orchestra.config import load_settings
from orchestra.db.engine import connect
from orchestra.db.models import AuditEntry, Task
from orchestra.scheduler.cycle import CycleReport, Scheduler
from orchestra.services import datasets, tasks
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import make_inputs, run_scheduler
from tests.conftest import TEMPLATE
from tests.helpers import ADMIN, Cli, Result, write_config

# Roles exist only on PostgreSQL; SQLite's single-user mode is tests/db/test_sqlite_single_user.py.
POSTGRES_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

ROLES = {"alice": (False, False), "bob": (False, False), "carol": (True, False), "sched": (False, True)}
TABLES = ("users", "datasets", "dataset_files", "tasks", "jobs", "attempts", "scheduler_lease",
          "change_counter", "audit_log", "alembic_version")


def role_url(db_url: str, role: str, password: str | None = None) -> str:
    return make_url(db_url).set(username=role, password=password or f"pw-{role}").render_as_string(
        hide_password=False)


@dataclass
class Frozen:
    """A populated database that no test may change (the attack table checks it stays as it was)."""

    db_url: str
    owner: Engine
    ids: dict[str, int]

    def snapshot(self) -> dict[str, list[Any]]:
        with self.owner.connect() as conn:
            return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))] for t in TABLES}


@dataclass
class World(Frozen):
    """A populated database of this test's own, with the CLI to run as any of the roles."""

    cli: Cli = None  # type: ignore[assignment]
    monkeypatch: pytest.MonkeyPatch = None  # type: ignore[assignment]

    def run(self, role: str, line: str, acting_for: str | None = None) -> Result:
        """A CLI command as `role` connects: its own URL, ORCHESTRA_USER only if given."""
        self.monkeypatch.setenv("ORCHESTRA_DATABASE_URL", role_url(self.db_url, role))
        try:
            return self.cli(line, user=acting_for or ADMIN)
        finally:
            self.monkeypatch.delenv("ORCHESTRA_DATABASE_URL")

    def ok(self, role: str, line: str, acting_for: str | None = None) -> Result:
        result = self.run(role, line, acting_for)
        assert result.code == 0, f"{role}: {line!r} failed: {result.err}{result.out}"
        return result

    def context(self, role: str) -> Context:
        return role_context(self.db_url, role, Path(os.environ["ORCHESTRA_CONFIG"]), Path(os.environ["ORCHESTRA_HOME"]))


def role_context(db_url: str, role: str, config: Path, home: Path) -> Context:
    """The services as `role` connects (no ORCHESTRA_USER: the identity is the role)."""
    settings = load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": str(home),
                              "ORCHESTRA_DATABASE_URL": role_url(db_url, role)})
    return Context(settings, connect(settings.database_url))


def populate(db_url: str, owner: Engine, storage: Path, config: Path, home: Path) -> dict[str, int]:
    """The roles; alice's and bob's datasets and tasks, each made as that user's role; the tasks
    expanded by a scheduler connected as `sched` (jobs queued, none started)."""
    with owner.begin() as conn:
        for role, (admin, scheduler) in ROLES.items():
            conn.execute(text("SELECT orchestra_add_user(:r, :a, :s, :p)"),
                         {"r": role, "a": admin, "s": scheduler, "p": f"pw-{role}"})
    for user in ("alice", "bob"):
        configs, data = make_inputs(storage / user, 3)
        ctx = role_context(db_url, user, config, home)
        datasets.register(ctx, f"user.{user}.cfg", str(configs), "LPS")
        datasets.register(ctx, f"user.{user}.data", str(data), "LPS")
        tasks.create(ctx, tasks.TaskRequest(f"user.{user}.t", f"user.{user}.cfg", f"user.{user}.data", "busybox",
                                            "echo %IN %DATA %OUT", bypass=True))
        ctx.engine.dispose()
    ctx = role_context(db_url, "sched", config, home)
    scheduler = Scheduler(ctx)
    assert scheduler.lease.try_acquire()
    scheduler.expand(CycleReport())  # jobs queued, none started: kill and delete act at once
    scheduler.lease.release()
    ctx.engine.dispose()
    ids: dict[str, int] = {}
    with owner.connect() as conn:
        for user in ("alice", "bob"):
            ids[f"{user}_uid"] = conn.execute(text("SELECT id FROM users WHERE name = :u"), {"u": user}).scalar_one()
            ids[f"{user}_task"] = conn.execute(
                text("SELECT id FROM tasks WHERE name = :t"), {"t": f"user.{user}.t"}).scalar_one()
            ids[f"{user}_ds"] = conn.execute(
                text("SELECT id FROM datasets WHERE name = :d"), {"d": f"user.{user}.cfg"}).scalar_one()
            ids[f"{user}_job"] = conn.execute(
                text("SELECT min(id) FROM jobs WHERE task_id = :t"), {"t": ids[f"{user}_task"]}).scalar_one()
    assert ids["alice_job"] is not None, "the scheduler (as role sched) expanded the tasks"
    return ids


@pytest.fixture
def world(db_url: str, env: dict[str, str], cli: Cli, home: Path, storage: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    owner = create_engine(db_url)
    ids = populate(db_url, owner, storage, Path(env["ORCHESTRA_CONFIG"]), home)
    monkeypatch.delenv("ORCHESTRA_DATABASE_URL")
    yield World(db_url, owner, ids, cli, monkeypatch)
    owner.dispose()


@pytest.fixture(scope="module")
def frozen(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frozen]:
    """One populated database for every read-only test of this module (built once per worker)."""
    name = f"t_frozen_{uuid.uuid4().hex[:8]}"
    server = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    base = tmp_path_factory.mktemp("frozen")
    (base / "storage").mkdir()
    (base / "home").mkdir()
    owner = create_engine(url)
    ids = populate(url, owner, base / "storage", write_config(base / "orchestra.toml", base / "storage"), base / "home")
    with owner.begin() as conn:  # a heartbeat, as a running service leaves it: not the users' to forge
        conn.execute(text("INSERT INTO change_counter (name, value) VALUES ('heartbeat', 1)"))
    yield Frozen(url, owner, ids)
    owner.dispose()
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    server.dispose()


def new_task(column: str = "", value: str = "", name: str = "user.bob.x", owner: str = "{bob_uid}") -> str:
    """SQL inserting a task the way `task create` may (plus one more column, if given)."""
    extra_col, extra_val = (f", {column}", f", {value}") if column else ("", "")
    return ("INSERT INTO tasks (name, owner_id, cluster, queue, image, command, priority, max_retries, bypass, "
            f"n_jobs, n_scouts{extra_col}) VALUES ('{name}', {owner}, 'LPS', 'cpu', 'busybox', 'echo', 0, 1, true, "
            f"1, 0{extra_val})")


# (what bob tries, the SQL); each must fail, or (RLS filtering a DELETE) change nothing.
ATTACKS = [
    ("kill alice's task by UPDATE", "UPDATE tasks SET status = 'killed' WHERE id = {alice_task}"),
    ("point alice's output root at a victim and ask for a purge",
     "UPDATE tasks SET output_root = '/etc', request = 'purge' WHERE id = {alice_task}"),
    ("delete alice's task", "DELETE FROM tasks WHERE id = {alice_task}"),
    ("delete alice's dataset", "DELETE FROM datasets WHERE id = {alice_ds}"),
    ("delete alice's dataset files", "DELETE FROM dataset_files WHERE dataset_id = {alice_ds}"),
    ("add a file to alice's dataset",
     "INSERT INTO dataset_files (dataset_id, position, path, size) VALUES ({alice_ds}, 99, '/etc/shadow', 1)"),
    ("register a dataset in alice's name",
     "INSERT INTO datasets (name, owner_id, cluster, path, is_dir, n_files, total_size, created_at) "
     "VALUES ('user.alice.fake', {alice_uid}, 'LPS', '/etc', true, 1, 1, 0)"),
    ("create a task in alice's name", new_task(name="user.alice.x", owner="{alice_uid}")),
    ("create a task already running", new_task("status", "'running'")),
    ("create a task with its own output root", new_task("output_root", "'/etc'")),
    ("backdate a task for age priority", new_task("created_at", "0")),
    ("create a task with a queue counter", new_task("n_queued", "100")),
    ("create a task with a priority out of range", new_task().replace("'echo', 0, 1", "'echo', 1000, 1")),
    ("raise one's own share", "UPDATE users SET share = 1000 WHERE id = {bob_uid}"),
    ("lift one's own cap", "UPDATE users SET max_running = NULL WHERE id = {bob_uid}"),
    ("cap alice", "UPDATE users SET max_running = 1 WHERE id = {alice_uid}"),
    ("forget one's own usage", "UPDATE users SET usage = 0 WHERE id = {bob_uid}"),
    ("create a user row", "INSERT INTO users (name, share, usage, usage_at, created_at) VALUES ('eve', 9, 0, 0, 0)"),
    ("inflate one's own task's queue counter", "UPDATE tasks SET n_queued = 1000 WHERE id = {bob_task}"),
    ("change one's own task's status", "UPDATE tasks SET status = 'running' WHERE id = {bob_task}"),
    ("move one's own task's queue cursor", "UPDATE tasks SET queue_from = 1000 WHERE id = {bob_task}"),
    ("create a task with its queue cursor set", new_task("queue_from", "1000")),
    ("re-queue one's own finished job", "UPDATE jobs SET status = 'queued' WHERE id = {bob_job}"),
    ("insert a job", "INSERT INTO jobs (task_id, index, config_path, output_dir, command, status, is_scout, attempts, "
                     "failures, queued_at) VALUES ({bob_task}, 99, '/x', '/x', 'echo', 'queued', false, 0, 0, 0)"),
    ("insert an attempt", "INSERT INTO attempts (job_id, number, backend_name, cluster, status, weight, created_at) "
                          "VALUES ({bob_job}, 9, 'x', 'LPS', 'running', 1, 0)"),
    ("take the scheduler lease", "UPDATE scheduler_lease SET holder = 'bob', expires_at = 1e12"),
    ("insert a second lease", "INSERT INTO scheduler_lease (name, holder, expires_at) VALUES ('x', 'bob', 1e12)"),
    ("call kill for alice's task", "SELECT orchestra_task_kill({alice_task}, 'bob')"),
    ("call retry for alice's task", "SELECT orchestra_task_retry({alice_task}, 'bob')"),
    ("request a purge of alice's task", "SELECT orchestra_task_delete({alice_task}, true, 'bob')"),
    ("kill one's own task in alice's name", "SELECT orchestra_task_kill({bob_task}, 'alice')"),
    ("create another user's row", "SELECT orchestra_ensure_user('mallory')"),
    ("make oneself an admin", "SELECT orchestra_add_user('bob', true, true, NULL)"),
    ("remove alice", "SELECT orchestra_remove_user('alice')"),
    ("call the owner's internal check", "SELECT orchestra_owned_task({alice_task}, 'bob')"),
    ("call job kill for alice's job", "SELECT orchestra_job_kill({alice_job}, 'bob')"),
    ("call job retry for alice's job", "SELECT orchestra_job_retry({alice_job}, 'bob')"),
    ("kill one's own job in alice's name", "SELECT orchestra_job_kill({bob_job}, 'alice')"),
    ("retry alice's job in her name", "SELECT orchestra_job_retry({alice_job}, 'alice')"),
    ("re-queue one's own queued job through retry", "SELECT orchestra_job_retry({bob_job}, 'bob')"),
    ("mark alice's attempts stopping", "UPDATE attempts SET stopping = 'killed by bob'"),
    ("read alice's password hash", "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'"),
    ("forge an audit entry", "INSERT INTO audit_log (at, actor, acted_for, action, target) "
                             "VALUES (0, 'alice', 'alice', 'task kill', 'user.alice.t')"),
    ("grant oneself the admin group", "GRANT orchestra_admins TO bob"),
    ("become alice", "SET ROLE alice"),
    ("switch row-level security off", "ALTER TABLE tasks DISABLE ROW LEVEL SECURITY"),
    ("plant a function in the schema", "CREATE FUNCTION public.orchestra_uid() RETURNS bigint LANGUAGE sql AS 'SELECT 1'"),
    ("empty the tasks table", "TRUNCATE tasks CASCADE"),
    ("rename the wake-up counter", "UPDATE change_counter SET name = 'x'"),
    ("forge the scheduler's heartbeat", "UPDATE change_counter SET value = 99999999999999 WHERE name <> 'cli'"),
    ("rewrite the schema version", "UPDATE alembic_version SET version_num = '0001'"),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_as_a_plain_user_is_refused_by_postgresql(frozen: Frozen, attack: tuple[str, str]) -> None:
    what, sql = attack
    before = frozen.snapshot()
    bob = create_engine(role_url(frozen.db_url, "bob"))
    refused = False
    try:
        with bob.begin() as conn:
            result = conn.execute(text(sql.format(**frozen.ids)))
            changed = result.rowcount if result.returns_rows is False else len(result.fetchall())
    except DBAPIError:
        refused = True
    finally:
        bob.dispose()
    assert refused or changed == 0, f"{what}: PostgreSQL allowed it"
    assert frozen.snapshot() == before, f"{what}: the database changed"


def test_the_same_inserts_within_the_rules_succeed(frozen: Frozen) -> None:
    """The control for the table above: bob's own task with only `task create`'s columns, and his
    own dataset, are accepted (so each refusal above is about the one thing that differs).
    Rolled back: the shared database stays as it was."""
    before = frozen.snapshot()
    bob = create_engine(role_url(frozen.db_url, "bob"))
    with bob.connect() as conn:
        conn.execute(text(new_task().format(**frozen.ids)))
        conn.execute(text("INSERT INTO datasets (name, owner_id, cluster, path, is_dir, n_files, total_size, "
                          "created_at) VALUES ('user.bob.more', {bob_uid}, 'LPS', '/tmp', true, 0, 0, 0)"
                          .format(**frozen.ids)))
        status, root, created = conn.execute(text(
            "SELECT status, output_root, created_at FROM tasks WHERE name = 'user.bob.x'")).one()
        conn.rollback()
    bob.dispose()
    assert (status, root) == ("registered", "") and created > 1e9  # the server's values, not the client's
    assert frozen.snapshot() == before


@POSTGRES_ONLY
def test_identity_cannot_be_forged(world: World) -> None:
    """A role without its password gets nothing; ORCHESTRA_USER does not make bob alice."""
    result = world.run("bob", "maestro task list")
    assert result.code == 0
    world.monkeypatch.setenv("ORCHESTRA_DATABASE_URL", role_url(world.db_url, "alice", password="guess"))
    result = world.cli("maestro task list", user=ADMIN)
    world.monkeypatch.delenv("ORCHESTRA_DATABASE_URL")
    assert result.code == 1 and "password authentication failed" in result.err and len(result.err.splitlines()) == 1
    before = world.snapshot()
    result = world.run("bob", "maestro task kill -t user.alice.t", acting_for="alice")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "ORCHESTRA_USER=alice is refused" in result.err and "'bob'" in result.err
    assert world.snapshot() == before


@POSTGRES_ONLY
def test_the_cli_refuses_another_users_task_in_one_line(world: World) -> None:
    before = world.snapshot()
    for line in ("maestro task kill -t user.alice.t", "maestro task retry -t user.alice.t",
                 "maestro task delete -t user.alice.t --purge --yes", "maestro dataset delete -d user.alice.data",
                 "orchestra user set bob --share 50", "orchestra user add eve", "orchestra user remove alice",
                 "orchestra_registry.py -d user.alice.mine -p /etc/hostname"):
        result = world.run("bob", line)
        assert result.code == 1, line
        assert result.err.count("\n") == 1 and "Traceback" not in result.err, (line, result.err)
    assert world.snapshot() == before


@POSTGRES_ONLY
def test_owner_kills_retries_and_deletes_own_task_through_the_owners_functions(world: World) -> None:
    world.ok("bob", "maestro task kill -t user.bob.t")
    with world.owner.connect() as conn:
        status, reason = conn.execute(text("SELECT status, reason FROM tasks WHERE name = 'user.bob.t'")).one()
    assert (status, reason) == ("killed", "killed by bob")
    assert "re-queued" in world.ok("bob", "maestro task retry -t user.bob.t").out
    world.ok("bob", "maestro task kill -t user.bob.t")
    world.ok("bob", "maestro task delete -t user.bob.t --yes")
    with world.owner.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE name = 'user.bob.t'")).scalar() in (0, 1)
        actions = conn.execute(text("SELECT actor, acted_for, action FROM audit_log WHERE target = 'user.bob.t' "
                                    "ORDER BY id")).all()
    assert [a[2] for a in actions] == ["task create", "task kill", "task retry", "task kill", "task delete"]
    assert {(a[0], a[1]) for a in actions} == {("bob", "bob")}


@POSTGRES_ONLY
def test_an_admin_acting_for_a_user_is_recorded_as_both(world: World) -> None:
    world.ok("carol", "maestro task kill -t user.alice.t", acting_for="alice")
    ctx = world.context("alice")
    with ctx.transaction() as session:
        entry = session.execute(select(AuditEntry.actor, AuditEntry.acted_for, AuditEntry.action)
                                .order_by(AuditEntry.id.desc()).limit(1)).one()
        reason = session.scalar(select(Task.reason).where(Task.name == "user.alice.t"))
    ctx.engine.dispose()
    assert tuple(entry) == ("carol", "alice", "task kill")
    assert reason == "killed by alice"
    # Acting for alice gives alice's powers, not carol's: alice may not touch bob's task.
    result = world.run("carol", "maestro task kill -t user.bob.t", acting_for="alice")
    assert result.code == 1 and "belongs to 'bob'" in result.err
    # As herself, carol is an admin.
    world.ok("carol", "orchestra user set bob --share 3")
    world.ok("carol", "maestro task kill -t user.bob.t")


@POSTGRES_ONLY
def test_only_the_scheduler_role_may_schedule(world: World) -> None:
    for role in ("bob", "carol"):
        result = run_scheduler("--once", env={"ORCHESTRA_DATABASE_URL": role_url(world.db_url, role),
                                              "ORCHESTRA_USER": ""})
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "may not run the scheduler" in result.stderr
    result = run_scheduler("--until-idle", env={"ORCHESTRA_DATABASE_URL": role_url(world.db_url, "sched"),
                                                "ORCHESTRA_USER": ""})
    assert result.returncode == 0, result.stderr
    with world.owner.connect() as conn:
        statuses = dict(conn.execute(text("SELECT name, status FROM tasks")).all())
        logs = conn.execute(text("SELECT log_path FROM attempts")).scalars().all()
    assert statuses == {"user.alice.t": "completed", "user.bob.t": "completed"}
    assert len(logs) == 6


@POSTGRES_ONLY
def test_a_job_never_sees_the_schedulers_database_url(world: World) -> None:
    world.ok("alice", "maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.env "
                      "--containerImage busybox --exec 'env; echo %IN %DATA %OUT' --bypass")
    result = run_scheduler("--until-idle", env={"ORCHESTRA_DATABASE_URL": role_url(world.db_url, "sched"),
                                                "ORCHESTRA_USER": "", "PGPASSWORD": "pw-sched"})
    assert result.returncode == 0, result.stderr
    assert "pw-sched" not in result.stderr  # nor in the service's own log lines
    with world.owner.connect() as conn:
        logs = conn.execute(text("SELECT a.log_path FROM attempts a JOIN jobs j ON j.id = a.job_id "
                                 "JOIN tasks t ON t.id = j.task_id WHERE t.name = 'user.alice.env'")).scalars().all()
    assert len(logs) == 3
    for log in logs:
        printed = Path(log).read_text()
        assert "PATH=" in printed and "ORCHESTRA_TASK=user.alice.env" in printed  # the job's env was printed
        assert "pw-sched" not in printed and "ORCHESTRA_DATABASE_URL" not in printed and "ORCHESTRA_CONFIG" not in printed


@POSTGRES_ONLY
def test_user_add_list_remove(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret-dave\n"))
    out = world.ok("carol", "orchestra user add dave --password-stdin").out
    assert "dave" in out and "s3cret" not in out
    listed = world.ok("carol", "orchestra user list --json").out
    assert '"name": "dave"' in listed and '"login": true' in listed
    dave = create_engine(role_url(world.db_url, "dave", "s3cret-dave"))
    with dave.connect() as conn:
        assert conn.execute(text("SELECT session_user")).scalar() == "dave"
    dave.dispose()
    assert "removed the login role dave" in world.ok("carol", "orchestra user remove dave").out
    result = world.run("carol", "orchestra user add postgres")
    assert result.code == 1 and "exists and is not an Orchestra user" in result.err


@POSTGRES_ONLY
def test_job_kill_and_retry_go_through_the_owners_functions(world: World) -> None:
    """alice kills and retries her own jobs as her own role (orchestra_job_kill / orchestra_job_retry,
    migration 0007); an admin may act for her; bob, by the CLI or by calling the functions
    himself, changes nothing of hers."""
    with world.owner.connect() as conn:
        first, second = conn.execute(text("SELECT id FROM jobs WHERE task_id = :t ORDER BY id LIMIT 2"),
                                     {"t": world.ids["alice_task"]}).scalars().all()
    assert world.ok("alice", f"maestro job kill {first}").out.startswith(f"killed job {first} ")
    world.ok("carol", f"maestro job kill {second}", acting_for="alice")
    before = world.snapshot()
    for line in (f"maestro job retry {first}", f"maestro job kill {first + 2}"):
        result = world.run("bob", line)
        assert result.code == 1 and result.err.count("\n") == 1 and "belongs to 'alice'" in result.err, result.err
    bob = create_engine(role_url(world.db_url, "bob"))
    for sql in (f"SELECT orchestra_job_retry({first}, 'bob')", f"SELECT orchestra_job_retry({first}, 'alice')",
                f"SELECT orchestra_job_kill({first + 2}, 'bob')"):
        with pytest.raises(DBAPIError, match="belongs to alice, not to bob"):
            with bob.begin() as conn:
                conn.execute(text(sql))
    bob.dispose()
    assert world.snapshot() == before
    assert world.ok("alice", f"maestro job retry {first}").out.startswith(f"re-queued job {first} ")
    with world.owner.connect() as conn:
        states = conn.execute(text("SELECT status, reason FROM jobs WHERE id IN (:a, :b) ORDER BY id"),
                              {"a": first, "b": second}).all()
        n_queued = conn.execute(text("SELECT n_queued FROM tasks WHERE id = :t"), {"t": world.ids["alice_task"]}).scalar()
        actions = conn.execute(text("SELECT actor, acted_for, action FROM audit_log WHERE action LIKE 'job %' "
                                    "ORDER BY id")).all()
    assert [tuple(r) for r in states] == [("queued", None), ("killed", "killed by alice")]
    assert n_queued == 2  # 3 queued, 1 killed for good
    assert [tuple(a) for a in actions] == [("alice", "alice", "job kill"), ("carol", "alice", "job kill"),
                                           ("alice", "alice", "job retry")]
