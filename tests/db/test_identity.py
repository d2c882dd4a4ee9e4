"""Who is asking, through the CLI, on both databases, with the tests' usual connection: the
database's owner (the PostgreSQL superuser; the SQLite file's owner) playing users with
ORCHESTRA_USER. On PostgreSQL that is an admin acting for a user (allowed, recorded as both); on
SQLite it is the personal mode's demo switch. Plain roles are in tests/db/test_security.py."""
from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.db.test_bad_input import snapshot
from tests.helpers import ADMIN, Cli


@pytest.fixture
def owner_name(db_url: str) -> str:
    if db_url.startswith("sqlite"):
        return getpass.getuser()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        name = conn.execute(text("SELECT session_user")).scalar_one()
    engine.dispose()
    return name


@pytest.mark.parametrize("value", ["Bob Smith", "root;drop", "Alice", "x" * 64, "-bob"])
def test_an_invalid_orchestra_user_is_refused_in_one_line(cli: Cli, db_url: str, value: str) -> None:
    before = snapshot(db_url)
    result = cli("maestro task list", user=value)
    assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "ORCHESTRA_USER" in result.err and "not a valid user name" in result.err
    assert snapshot(db_url) == before


def test_playing_a_user_gives_that_users_powers_not_the_admins(cli: Cli, db_url: str) -> None:
    before = snapshot(db_url)
    result = cli("orchestra user set bob --share 5", user="alice")
    assert result.code == 1 and "only admins may change users; 'alice' is not one" in result.err
    assert snapshot(db_url) == before
    assert "bob: share 5" in cli.ok("orchestra user set bob --share 5", user=ADMIN).out


def test_every_write_records_who_asked_and_for_whom(cli: Cli, db_url: str, storage: Path, owner_name: str) -> None:
    (storage / "data").write_text("d")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'}")
    cli.ok(f"orchestra_registry -d user.alice.cfg -p {storage / 'data'}")
    cli.ok("maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.t --containerImage a/b "
           "--exec 'run %IN %DATA %OUT'")
    cli.ok("maestro task kill -t user.alice.t")
    cli.ok("orchestra user set alice --max-running 3", user=ADMIN)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT actor, acted_for, action, target FROM audit_log ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        (owner_name, "alice", "dataset register", "user.alice.data"),
        (owner_name, "alice", "dataset register", "user.alice.cfg"),
        (owner_name, "alice", "task create", "user.alice.t"),
        (owner_name, "alice", "task kill", "user.alice.t"),
        (owner_name, owner_name, "user set max_running=3", "alice"),
    ]


def test_user_commands_by_mode(cli: Cli, db_url: str, owner_name: str) -> None:
    cli.ok("orchestra user set carol --share 2", user=ADMIN)
    listed = cli.ok("orchestra user list --json", user=ADMIN).out
    assert '"name": "carol"' in listed
    result = cli("orchestra user add dave", user=ADMIN)
    if db_url.startswith("sqlite"):
        assert result.code == 1 and "single-user SQLite database" in result.err and result.err.count("\n") == 1
    else:
        assert result.code == 0, result.err
        assert "dave may now use Orchestra" in result.out
        assert "removed the login role dave" in cli.ok("orchestra user remove dave", user=ADMIN).out
    result = cli("orchestra user add eve", user="alice")
    assert result.code == 1 and result.err.count("\n") == 1
