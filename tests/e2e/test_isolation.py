"""Job isolation end to end (issue 13): real scheduler cycles, real processes, both databases.

Each test runs scheduler cycles in this process (as tests/e2e/test_workflow.py does) against the
local backend: every attempt under its `/bin/sh` supervisor, in its own cgroups, its state and
log in `<storage>/.orchestra/<installation>/<attempt>/`.

- run as the owner: two real OS users (useradd), `run_jobs_as = "owner"`; each job is its owner,
  cannot read the other's outputs, gets a clean environment; the log is the owner's (0600), the
  state files are root's; a user with no OS account fails at dispatch with the reason, once;
- containment: `setsid`, double fork and `nohup` do not escape a kill or a timeout; `max_job_pids`
  limits one job, not its neighbours; a job that ignores SIGTERM does not stall the cycle;
- exactly once: the state removed under running jobs, the supervisor SIGKILLed, a new database
  over an old storage: no job runs twice, none is recorded from another database's files;
- bounded logs: a 50 MiB writer keeps a log of about `max_log_bytes`, its tail, with a cut note.

Every test gets an installation id of its own (the test databases are copies of one migrated
template and would otherwise share one, hence the same attempt and cgroup names in tests running
side by side), and removes the cgroups, processes and OS users it made.
"""
from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from orchestra.backends.containment import Containment, ProcessGroup, detect
from orchestra.backends.local import process_start_time
from orchestra.db.engine import connect, make_engine, upgrade
from orchestra.db.models import Attempt, Installation, Job, Task
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import make_inputs
from tests.helpers import CONFIG, Cli

pytestmark = pytest.mark.slow

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = {tool: shutil.which(tool, path=SBIN_PATH) for tool in ("useradd", "userdel", "runuser", "setpriv", "setsid")}
FINAL_TASK = ("completed", "partial", "broken", "killed", "gone")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: jobs run as other OS users (setpriv), "
                                                          "cgroups are made and OS users added (useradd)")


# ------------------------------------------------------------------------------------------ harness
def config_text(storage: Path, run_as: str = "scheduler", **scheduler: object) -> str:
    """tests/helpers.py's CONFIG with `run_jobs_as` and more `[scheduler]` keys."""
    text_ = CONFIG.format(storage=storage).replace('run_jobs_as = "scheduler"', f'run_jobs_as = "{run_as}"', 1)
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in scheduler.items())
    return text_.replace("[scheduler]\n", "[scheduler]\n" + extra, 1)


def alive(pid: int, start: int | None) -> bool:
    """The process `pid` that had start time `start` still exists and is not a zombie."""
    if process_start_time(pid) != start:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 20, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_pids(out: Path, names: list[str]) -> dict[str, tuple[int, int | None]]:
    """pid (and its start time, read now) from each file a job wrote in its output directory."""
    found = {}
    for name in names:
        pid = int((out / name).read_text())
        found[name] = (pid, process_start_time(pid))
    return found


def files_written(out: Path, names: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return all((out / n).read_text().strip().isdigit() for n in names)
        except OSError:
            return False
    return check


def cleanup_installation(installation: str) -> None:
    """SIGKILL whatever is left in this installation's cgroups, then remove them."""
    containment = detect(installation=installation)
    if isinstance(containment, ProcessGroup):
        return
    bases = list(getattr(containment, "bases", {}).values())
    names = {entry.name for base in bases if os.path.isdir(base) for entry in os.scandir(base) if entry.is_dir()}
    for name in names:
        containment.kill(name)
        wait_for(lambda: not containment.pids(name), 10, f"the processes of cgroup {name} to end")
        containment.remove(name)
    for base in bases:
        try:
            os.rmdir(base)
        except OSError:
            pass


class Orc:
    """One test's Orchestra: its config, a fresh installation id, scheduler cycles in this process."""

    def __init__(self, cli: Cli, storage: Path, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cli, self.storage, self.db_url, self.tmp_path, self.monkeypatch = cli, storage, db_url, tmp_path, monkeypatch
        self.installations: list[str] = []
        self.schedulers: list[Scheduler] = []
        self.contexts: list[Context] = []
        self.installation = self.new_installation(db_url)
        self._scheduler: Scheduler | None = None

    def new_installation(self, url: str) -> str:
        """Give the database `url` an installation id of its own (see the module's docstring)."""
        new = uuid.uuid4().hex[:12]
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE installation SET id = :id"), {"id": new})
        finally:
            engine.dispose()
        self.installations.append(new)
        return new

    def configure(self, storage: Path | None = None, run_as: str = "scheduler", **scheduler: object) -> None:
        path = self.tmp_path / f"orchestra-{len(self.installations)}.toml"
        path.write_text(config_text(storage or self.storage, run_as, **scheduler))
        self.monkeypatch.setenv("ORCHESTRA_CONFIG", str(path))
        self._scheduler = None

    @property
    def ctx(self) -> Context:
        return self.scheduler.ctx

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            ctx = Context.from_env()
            self.contexts.append(ctx)
            self._scheduler = Scheduler(ctx)
            self.schedulers.append(self._scheduler)
            assert self._scheduler.installation == self.installations[-1]
        return self._scheduler

    def cycles_until(self, done: Callable[[], bool], timeout: float = 30, what: str = "the scheduler") -> None:
        scheduler = self.scheduler
        assert scheduler.lease.try_acquire()
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            scheduler.cycle()
            time.sleep(0.05)

    def restart(self) -> None:
        """A new scheduler, as after the service died: the old one's children reaped (by init, for real)."""
        old = self.scheduler
        old.lease.release()
        for backend in old.backends.values():
            for child in getattr(backend, "_children", {}).values():
                child.wait(timeout=10)
        self._scheduler = None
        assert self.scheduler.lease.try_acquire()

    def register(self, user: str, n: int = 1) -> None:
        configs, data = make_inputs(self.storage / f"in-{user}", n)
        self.cli.ok(f"orchestra_registry.py -d user.{user}.data -p {data} --cluster LPS", user=user)
        self.cli.ok(f"orchestra_registry.py -d user.{user}.configs -p {configs}/ --cluster LPS", user=user)

    def create(self, user: str, name: str, command: str, extra: str = "--bypass") -> str:
        task = f"user.{user}.{name}"
        self.cli.ok(f"maestro task create -c user.{user}.configs -d user.{user}.data -t {task} "
                    f"--containerImage {user}/img --exec {shlex.quote(command)} {extra}", user=user)
        return task

    def out(self, task: str, index: int = 0) -> Path:
        user = task.split(".")[1]
        return self.storage / user / task / f"job_{index:06d}"

    def task_status(self, task: str) -> str:
        with self.ctx.transaction() as session:
            return session.scalar(select(Task.status).where(Task.name == task)) or "gone"

    def jobs(self, task: str) -> dict[int, str]:
        with self.ctx.transaction() as session:
            return dict(session.execute(select(Job.index, Job.status).join(Task).where(Task.name == task)).all())

    def attempts(self, task: str) -> list:  # type: ignore[type-arg]
        with self.ctx.transaction() as session:
            return session.execute(
                select(Job.index, Attempt.number, Attempt.backend_name, Attempt.pid, Attempt.status,
                       Attempt.reason, Attempt.stopping, Attempt.log_path)
                .join(Job, Job.id == Attempt.job_id).join(Task, Task.id == Job.task_id)
                .where(Task.name == task).order_by(Job.index, Attempt.number)).all()

    def job_rows(self, task: str, user: str) -> list[dict]:  # type: ignore[type-arg]
        return json.loads(self.cli.ok(f"maestro job list -t {task} --json", user=user).out)

    def done(self, *tasks: str) -> Callable[[], bool]:
        return lambda: all(self.task_status(t) in FINAL_TASK for t in tasks)

    def close(self) -> None:
        for scheduler in self.schedulers:
            try:
                scheduler.lease.release()
            except Exception:  # noqa: BLE001 - a lease another scheduler took over: nothing to release
                pass
        for installation in self.installations:
            cleanup_installation(installation)
        for scheduler in self.schedulers:  # the supervisors are our children: reap them
            for backend in scheduler.backends.values():
                for child in getattr(backend, "_children", {}).values():
                    try:
                        child.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
            scheduler.close()
        for ctx in self.contexts:
            ctx.engine.dispose()


@pytest.fixture
def orc(cli: Cli, storage: Path, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orc]:
    harness = Orc(cli, storage, db_url, tmp_path, monkeypatch)
    harness.configure()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def contained(orc: Orc) -> Orc:
    """`orc`, where attempts are contained by cgroups (else the test is skipped, with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups are created for each attempt")
    containment: Containment = detect(installation=orc.installation)
    if not containment.strong:
        pytest.skip(f"needs writable cgroups (v1 pids + freezer, or v2 with pids and memory); found {containment.kind}")
    return orc


# ------------------------------------------------------------------------------------------ 1. as the owner
def add_os_user(name: str, home: Path) -> None:
    made = subprocess.run([TOOLS["useradd"] or "useradd", "--user-group", "--no-create-home", "--home-dir", str(home),
                           "--shell", "/bin/sh", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd {name} failed: {made.stderr.strip()}")


def del_os_user(name: str) -> None:
    if subprocess.run([TOOLS["userdel"] or "userdel", name], capture_output=True).returncode != 0:
        subprocess.run([TOOLS["userdel"] or "userdel", "--force", name], capture_output=True)


@pytest.fixture
def two_users() -> Iterator[tuple[Path, dict[str, Path]]]:
    """Two real OS users (name -> home) and a storage directory they can both traverse."""
    if os.geteuid() != 0:
        pytest.skip("needs root: run_jobs_as = \"owner\" starts each job as its owner (setpriv), and the test "
                    "adds OS users (useradd)")
    missing = [tool for tool in ("useradd", "userdel", "runuser", "setpriv") if not TOOLS[tool]]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on {SBIN_PATH}")
    base = Path(tempfile.mkdtemp(prefix="orci-"))  # pytest's tmp dirs are 0700: not for other users
    users: dict[str, Path] = {}
    try:
        base.chmod(0o755)
        (base / "storage").mkdir(mode=0o755)
        (base / "home").mkdir(mode=0o755)
        tag = uuid.uuid4().hex[:6]
        for who in ("a", "b"):
            name = f"orci-{who}-{tag}"
            home = base / "home" / name
            add_os_user(name, home)
            users[name] = home
            home.mkdir(mode=0o700)
            shutil.chown(home, name, name)
        yield base / "storage", users
    finally:
        for name in users:
            del_os_user(name)
        shutil.rmtree(base, ignore_errors=True)


JOB_ENV = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "PWD", "OLDPWD", "SHLVL", "_",
           *(f"ORCHESTRA_{k}" for k in ("OUTPUT", "COMMAND", "TASK", "JOB", "ATTEMPT", "USER"))}


def as_user(user: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOLS["runuser"] or "runuser", "-u", user, "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=30, env={"PATH": SBIN_PATH})


@needs_root
def test_jobs_run_as_their_owners_in_a_clean_environment(
        orc: Orc, two_users: tuple[Path, dict[str, Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    storage, users = two_users
    orc.storage = storage
    orc.configure(storage, run_as="owner")
    monkeypatch.setenv("PGAPPNAME", "leaked-from-the-scheduler")  # libpq's variables: never for a job
    monkeypatch.setenv("PGPASSWORD", "leaked-from-the-scheduler")
    a, b = users
    tasks = {}
    for me, other in ((a, b), (b, a)):
        orc.register(me)
        theirs = storage / other
        # Wait (bounded) until the scheduler made the other's directory, then try to read into it.
        tasks[me] = orc.create(me, "t", (
            f"id -un > %OUT/whoami; i=0; while [ ! -e {theirs} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
            f"cat {theirs}/user.{other}.t/job_000000/whoami > %OUT/peek 2>&1; ls {theirs} >> %OUT/peek 2>&1; "
            "env > %OUT/env; echo %IN %DATA"))
    orc.cycles_until(orc.done(*tasks.values()))
    for me, other in ((a, b), (b, a)):
        task = tasks[me]
        assert orc.task_status(task) == "completed", orc.attempts(task)
        out = orc.out(task)
        uid = pwd.getpwnam(me).pw_uid
        assert (out / "whoami").read_text().strip() == me
        assert os.stat(out).st_uid == uid and stat.S_IMODE(os.stat(out).st_mode) == 0o750  # umask 027
        assert stat.S_IMODE(os.stat(storage / me).st_mode) == 0o750
        peek = (out / "peek").read_text()
        assert peek.count("Permission denied") == 2 and "No such file" not in peek, peek
        assert other not in peek.splitlines(), peek  # the other's whoami was never read
        env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
        assert env["HOME"] == str(users[me]) and env["USER"] == me and env["LOGNAME"] == me, env
        assert not [k for k in env if k.startswith("PG") or k in ("ORCHESTRA_DATABASE_URL", "ORCHESTRA_CONFIG",
                                                                   "ORCHESTRA_HOME")], env
        assert set(env) <= JOB_ENV and env["ORCHESTRA_USER"] == me, sorted(set(env) - JOB_ENV)
        # The log is the owner's, 0600; the state beside it is the scheduler's, out of the job's reach.
        [attempt] = orc.attempts(task)
        log = Path(attempt.log_path)
        assert log.parent == storage / ".orchestra" / orc.installation / attempt.backend_name
        assert os.stat(log).st_uid == uid and stat.S_IMODE(os.stat(log).st_mode) == 0o600
        assert log.read_text().startswith(str(storage / f"in-{me}" / "configs"))
        for part in ("lock", "exit", "pid"):
            info = os.stat(log.parent / part)
            assert info.st_uid == 0 and info.st_mode & 0o022 == 0, (part, oct(info.st_mode))
        tried = as_user(me, f"echo 0 > {log.parent}/exit; echo x >> {log.parent}/lock; touch {log.parent}/new")
        assert tried.stderr.count("Permission denied") == 3, tried
        assert (log.parent / "exit").read_text().strip() == "0"


@needs_root
def test_a_user_without_os_account_fails_at_dispatch_with_the_reason(orc: Orc) -> None:
    orc.configure(run_as="owner")
    orc.register("nosuchuser1")
    task = orc.create("nosuchuser1", "t", "echo %IN %DATA %OUT")
    orc.cycles_until(orc.done(task))
    [job] = orc.job_rows(task, "nosuchuser1")
    assert job["status"] == "failed", job
    assert "nosuchuser1" in job["reason"] and "no OS account" in job["reason"], job
    assert job["attempts"] == 1, job  # the task's fault, not the attempt's: not retried (max_retries is 1)
    shown = orc.cli.ok(f"maestro task show -t {task}", user="nosuchuser1").out
    assert "no OS account on this host" in shown, shown
    state = orc.storage / ".orchestra" / orc.installation
    assert not state.exists() or not list(state.iterdir())  # refused before anything was made


# ------------------------------------------------------------------------------------------ 2. containment
ESCAPES = ("setsid sh -c 'echo $$ > p1; exec sleep 600' & "
           "(sh -c 'sh -c \"echo \\$\\$ > p2; exec sleep 600\" &' &); "
           "nohup sh -c 'echo $$ > p3; exec sleep 600' > /dev/null 2>&1 & "
           "echo $$ > p0; sleep 600; echo %IN %DATA %OUT")
ESCAPED = ["p0", "p1", "p2", "p3"]


def test_kill_stops_every_process_of_the_job(contained: Orc) -> None:
    orc = contained
    orc.register("alice")
    task = orc.create("alice", "escape", ESCAPES)
    orc.cycles_until(files_written(orc.out(task), ESCAPED), what="the job's processes to start")
    pids = read_pids(orc.out(task), ESCAPED)
    assert all(alive(*p) for p in pids.values()), pids
    sessions = {name: os.getsid(pid) for name, (pid, _) in pids.items()}
    assert sessions["p1"] != sessions["p0"]  # setsid really left the job's session
    assert "running jobs stop" in orc.cli.ok(f"maestro task kill -t {task}").out
    orc.cycles_until(lambda: orc.jobs(task) == {0: "killed"}, what="the job to end killed")
    assert not [name for name, p in pids.items() if alive(*p)], pids
    [attempt] = orc.attempts(task)
    assert attempt.status == "killed" and attempt.reason == "killed by user", attempt


def test_timeout_stops_every_process_of_the_job(contained: Orc) -> None:
    orc = contained
    orc.register("alice")
    task = orc.create("alice", "slow", ESCAPES, "--bypass --max-time 2s --max-retries 0")
    orc.cycles_until(files_written(orc.out(task), ESCAPED), what="the job's processes to start")
    pids = read_pids(orc.out(task), ESCAPED)
    orc.cycles_until(lambda: orc.jobs(task) == {0: "failed"}, what="the job to time out")
    assert not [name for name, p in pids.items() if alive(*p)], pids
    [job] = orc.job_rows(task, "alice")
    assert job["reason"] == "timeout after 2s", job


def test_max_job_pids_limits_one_job_not_its_neighbours(contained: Orc) -> None:
    orc = contained
    orc.configure(max_job_pids=50)
    orc.register("alice")
    orc.register("bob")
    # `sleep 4`, not 60: the supervisor waits for every process of the job before it ends.
    bomb = orc.create("alice", "bomb", "n=0; for i in $(seq 1000); do sleep 4 & n=$((n+1)); echo $n > count; done; "
                                       "wait; echo %IN %DATA %OUT", "--bypass --max-retries 0")
    calm = orc.create("bob", "calm", "echo ok %IN %DATA %OUT")
    orc.cycles_until(orc.done(bomb, calm))
    assert orc.task_status(calm) == "completed"
    [job] = orc.job_rows(bomb, "alice")
    assert job["status"] == "failed", job
    started = int((orc.out(bomb) / "count").read_text())
    assert 0 < started < 50, started
    log = Path(orc.attempts(bomb)[0].log_path).read_text()
    assert "Cannot fork" in log or "Resource temporarily unavailable" in log, log


def test_a_job_ignoring_sigterm_does_not_hold_up_the_cycle(contained: Orc) -> None:
    orc = contained
    orc.configure(kill_grace_seconds=120)
    orc.register("alice")
    stubborn = orc.create("alice", "stubborn", "trap '' TERM; echo $$ > p0; sleep 600; echo %IN %DATA %OUT")
    out = orc.out(stubborn)
    orc.cycles_until(files_written(out, ["p0"]), what="the stubborn job to start")
    shell = read_pids(out, ["p0"])["p0"]
    orc.cli.ok(f"maestro task kill -t {stubborn}")
    after = orc.create("alice", "after", "echo ok %IN %DATA %OUT")
    orc.cycles_until(orc.done(after), what="another task to run while the stubborn job is being stopped")
    assert orc.task_status(after) == "completed"
    [attempt] = orc.attempts(stubborn)
    assert attempt.status == "running" and attempt.stopping == "killed by user", attempt
    assert alive(*shell)  # SIGTERM ignored, SIGKILL only after the 120 s grace
    # End it now (the grace is not waited out): SIGKILL its cgroup, as the grace's end would.
    containment = detect(installation=orc.installation)
    containment.kill(attempt.backend_name)
    orc.cycles_until(lambda: orc.jobs(stubborn) == {0: "killed"}, what="the stubborn job to end killed")
    assert not alive(*shell)
    assert orc.attempts(stubborn)[0].status == "killed"


# ------------------------------------------------------------------------------------------ 3. exactly once
def counted(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


def test_removing_the_attempt_state_under_running_jobs_runs_none_twice(orc: Orc, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    orc.register("alice", 3)
    task = orc.create("alice", "once", f"echo $ORCHESTRA_JOB >> {counter}; sleep 3; echo %IN %DATA %OUT")
    orc.cycles_until(lambda: len(counted(counter)) == 3, what="the three jobs to start")
    shutil.rmtree(orc.storage / ".orchestra")
    orc.cycles_until(orc.done(task))
    assert sorted(counted(counter)) == ["0", "1", "2"]
    assert orc.jobs(task) == {0: "succeeded", 1: "succeeded", 2: "succeeded"}, orc.attempts(task)
    assert [a.number for a in orc.attempts(task)] == [1, 1, 1]
    for a in orc.attempts(task):  # the supervisors wrote their status back into a new state directory
        assert (orc.storage / ".orchestra" / orc.installation / a.backend_name / "exit").read_text().strip() == "0"


def test_a_killed_supervisor_stops_its_job(contained: Orc, tmp_path: Path) -> None:
    orc = contained
    counter = tmp_path / "runs"
    orc.register("alice")
    # dd holds 256 MiB (it blocks writing to a pipe nobody reads): its exit, after a SIGKILL, takes a
    # few milliseconds, during which the attempt's cgroup is still populated.
    task = orc.create("alice", "orphan", f"echo $ORCHESTRA_JOB >> {counter}; echo $$ > p0; "
                                         "dd if=/dev/zero bs=256M count=1 2>/dev/null | sleep 600 & echo $! > p1; "
                                         "wait; echo %IN %DATA %OUT", "--bypass --max-retries 0")
    out = orc.out(task)
    orc.cycles_until(files_written(out, ["p0", "p1"]), what="the job to start")
    pids = read_pids(out, ["p0", "p1"])
    [attempt] = orc.attempts(task)
    state = orc.storage / ".orchestra" / orc.installation / attempt.backend_name
    assert attempt.pid == int((state / "pid").read_text())
    os.kill(attempt.pid, signal.SIGKILL)
    crashes: list[str] = []
    deadline = time.monotonic() + 30
    # As the service would: a cycle that raises ends the scheduler, which is then started again.
    while orc.jobs(task)[0] not in ("succeeded", "failed", "killed") and len(counted(counter)) < 2:
        assert time.monotonic() < deadline, "timed out waiting for the job to end"
        try:
            orc.scheduler.cycle()
        except OSError as exc:
            crashes.append(str(exc))
            orc.restart()
        time.sleep(0.05)
    assert counted(counter) == ["0"], (crashes, orc.attempts(task))
    assert not crashes
    wait_for(lambda: not any(alive(*p) for p in pids.values()), 10, "the job's processes to end")
    [attempt] = orc.attempts(task)
    assert orc.jobs(task) == {0: "failed"} and attempt.status == "failed" and "supervisor" in attempt.reason, attempt


def fresh_database(orc: Orc, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database migrated from scratch (never a copy of the template: that would copy its id)."""
    if orc.db_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'b.db'}"
        connect(url).dispose()
        return url
    server = request.getfixturevalue("postgres_url")
    name = f"t_b_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()

    def drop() -> None:
        engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()
    request.addfinalizer(drop)
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def test_a_new_database_over_an_old_storage_runs_its_jobs(
        orc: Orc, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    orc.register("alice")
    task = orc.create("alice", "again", f"echo $ORCHESTRA_JOB >> {tmp_path}/runs-a; echo %IN %DATA %OUT")
    orc.cycles_until(orc.done(task))
    first = orc.installation
    [old] = orc.attempts(task)
    assert (orc.storage / ".orchestra" / first / old.backend_name / "exit").read_text().strip() == "0"

    url = fresh_database(orc, request, tmp_path)
    engine = make_engine(url)
    with engine.connect() as conn:
        second = conn.scalar(select(Installation.id))
    engine.dispose()
    assert second and second != first
    orc.installations.append(second)
    monkeypatch.setenv("ORCHESTRA_DATABASE_URL", url)
    orc.configure()
    orc.register("alice")
    # The old database's outputs are still on the storage: `task create` refuses to mix them with a
    # new task's of the same name (issue 15), so the user removes them first, as its refusal says.
    # The attempt state under .orchestra/<installation> stays: what this test is about.
    shutil.rmtree(orc.out(task).parent)
    orc.create("alice", "again", f"echo $ORCHESTRA_JOB >> {tmp_path}/runs-b; echo %IN %DATA %OUT")
    orc.cycles_until(orc.done(task))
    assert orc.scheduler.installation == second
    [new] = orc.attempts(task)
    assert orc.task_status(task) == "completed"
    assert counted(tmp_path / "runs-b") == ["0"] and counted(tmp_path / "runs-a") == ["0"]
    assert Path(new.log_path).parent == orc.storage / ".orchestra" / second / new.backend_name
    assert (orc.storage / ".orchestra" / second / new.backend_name / "exit").read_text().strip() == "0"


# ------------------------------------------------------------------------------------------ 4. bounded logs
def test_a_huge_log_keeps_its_tail_under_the_cap(orc: Orc) -> None:
    cap = 1048576
    orc.configure(max_log_bytes=cap)
    orc.register("alice")
    task = orc.create("alice", "chatty", ": %IN %DATA %OUT; head -c 52428800 /dev/zero | tr '\\0' 'x'; echo; echo END")
    orc.cycles_until(orc.done(task))
    assert orc.task_status(task) == "completed"
    [attempt] = orc.attempts(task)
    log = Path(attempt.log_path)
    size = os.stat(log).st_size
    assert size <= cap + os.stat(log).st_blksize, size
    with open(log, "rb") as handle:
        handle.seek(max(0, size - 64))
        assert handle.read().endswith(b"x\nEND\n")
    [job] = orc.job_rows(task, "alice")
    shown = orc.cli.ok(f"maestro job logs {job['id']}").out
    lines = shown.splitlines()
    assert lines[0].startswith("[orchestra: the first ") and "were cut to keep it under its cap of 1 MiB" in lines[0]
    assert lines[-1] == "END" and len(lines) == 3, lines[:1] + lines[-2:]
