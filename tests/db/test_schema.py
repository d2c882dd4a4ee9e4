"""The migrations produce exactly the declared models, on both databases (`alembic check`)."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from orchestra.db.engine import HEAD_REVISION, MIGRATIONS, connect, current_revision, make_engine, upgrade
from orchestra.errors import OrchestraError
from orchestra.db.models import Base


def test_head_revision_constant_matches_scripts() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


def test_migrations_match_models(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_sqlite_pragmas_and_revision(db_url: str) -> None:
    engine = connect(db_url)
    assert current_revision(engine) == HEAD_REVISION
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert {"ix_jobs_settled", "ix_jobs_retried"} <= indexes and "ix_jobs_task_status" not in indexes
    engine.dispose()


def test_a_fresh_sqlite_file_is_created_and_migrated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'new' / 'o.db'}")
    assert current_revision(engine) == HEAD_REVISION
    engine.dispose()


def test_rewritten_tables_leave_room_for_hot_updates(db_url: str) -> None:
    """tasks.n_queued and users.usage change every cycle: on PostgreSQL their pages keep room
    for in-place updates (migration 0002); SQLite has no such setting."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no fillfactor")
    engine = connect(db_url)
    with engine.connect() as conn:
        options = dict(conn.execute(text(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN ('tasks', 'users', 'jobs')")).all())
    engine.dispose()
    assert options == {"tasks": ["fillfactor=50"], "users": ["fillfactor=50"], "jobs": None}


def test_an_install_at_0001_with_data_upgrades_to_head(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Migrations 0002+ on a database that holds rows: PostgreSQL refuses to run until `orchestra db
    upgrade` (one line saying so), SQLite upgrades itself; the rows survive either way."""
    admin = None
    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{tmp_path / 'old.db'}"
    else:  # an empty database on the same server
        url = make_url(db_url)
        name = f"old_{url.database}"
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        db_url = url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, share, usage, usage_at, created_at) VALUES ('ann', 1, 5, 0, 0)"))
    if engine.dialect.name == "postgresql":
        with pytest.raises(OrchestraError, match=r"schema is at revision 0001, this Orchestra needs "
                                                 rf"{HEAD_REVISION}; "
                                                 r"run `orchestra db upgrade`"):
            connect(db_url)
        upgrade(engine)
    connect(db_url).dispose()
    assert current_revision(engine) == HEAD_REVISION
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, usage FROM users")).all() == [("ann", 5.0)]
    engine.dispose()
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
