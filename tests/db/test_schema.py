"""The migrations produce exactly the declared models, on both databases (`alembic check`)."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from orchestra.db.engine import HEAD_REVISION, MIGRATIONS, connect, current_revision, make_engine
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
    assert "ix_jobs_task_status" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
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
