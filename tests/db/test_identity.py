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


@pytest.mark.parametrize("name", ["bob", "bob_smith", "_svc", "a-b", "x" * 63, "Bob", "Bob Smith", "bob!",
                                  "1bob", "-bob", "x" * 64, "", "bob\n", "böb"])
def test_one_policy_for_user_names_and_the_owners_of_names(name: str) -> None:
    """A user name is valid exactly when it can own `user.<name>.x`: every suggestion of the form
    `user.<you>.<name>` in an error is then a name that the user may create."""
    from orchestra.errors import OrchestraError
    from orchestra.naming import owner_of
    from orchestra.security.identity import check_user_name

    def accepted(check) -> bool:  # type: ignore[no-untyped-def]
        try:
            check()
            return True
        except OrchestraError:
            return False

    as_user = accepted(lambda: check_user_name(name, "ORCHESTRA_USER"))
    as_owner = accepted(lambda: owner_of(f"user.{name}.x"))
    assert as_user == as_owner == (name in {"bob", "bob_smith", "_svc", "a-b", "x" * 63})


def test_a_login_that_is_not_a_valid_user_name_is_refused_in_one_line(
        cli: Cli, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: the OS login is the user; PostgreSQL: the role you connect as. Either, if it could not
    own a dataset name, is refused before anything is written, saying what to do instead."""
    before = snapshot(db_url)
    if db_url.startswith("sqlite"):
        monkeypatch.setenv("LOGNAME", "Bob Smith")  # what getpass.getuser() reads first
        result = cli("maestro task list", user=ADMIN)
        assert "your login 'Bob Smith' is not a valid user name" in result.err
        assert "set ORCHESTRA_USER" in result.err
        assert cli("maestro task list", user="bob").code == 0  # playing a valid user still works
    else:
        from sqlalchemy.engine import make_url

        owner = create_engine(db_url, isolation_level="AUTOCOMMIT")
        with owner.connect() as conn:
            conn.execute(text('CREATE ROLE "Bob Smith" LOGIN PASSWORD \'pw-bob\' IN ROLE orchestra_users'))
        owner.dispose()
        before = snapshot(db_url)
        url = make_url(db_url).set(username="Bob Smith", password="pw-bob").render_as_string(hide_password=False)
        monkeypatch.setenv("ORCHESTRA_DATABASE_URL", url)
        result = cli("maestro task list", user=ADMIN)
        assert "your database role 'Bob Smith' is not a valid user name" in result.err
        assert "orchestra user add NAME" in result.err
    assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "user.Bob Smith" not in result.err
    assert snapshot(db_url) == before


@pytest.mark.parametrize("name", ["user.Bob Smith.data", "user.Alice.data", "user.bob.smith.data"])
def test_a_dataset_name_whose_owner_is_not_a_user_name_is_refused(
        cli: Cli, db_url: str, storage: Path, name: str) -> None:
    (storage / "data").write_text("d")
    before = snapshot(db_url)
    result = cli(f"orchestra_registry -d '{name}' -p {storage / 'data'}", user=ADMIN)
    if name == "user.bob.smith.data":  # owner bob, dataset smith.data: valid, an admin may register it
        assert result.code == 0, result.err
        return
    assert result.code == 1 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "is not a valid user name" in result.err and "user.<your login>.<name>" in result.err
    assert snapshot(db_url) == before
