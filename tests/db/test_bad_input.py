"""Every refusal: non-zero exit, one line on stderr naming problem and fix, no traceback, and the
database exactly as it was (every table compared before and after)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from orchestra.db.engine import make_engine
from tests.helpers import Cli

GOOD = ('-c user.alice.cfg -d user.alice.data -t user.alice.{name} --containerImage alice/img '
        '--exec "run %DATA %IN %OUT"')


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (the table names in one catalog query: a full reflection costs
    ~0.3 s on PostgreSQL, twice per case)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        names = inspect(conn).get_table_names()
        data = {name: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{name}"')).all()), key=repr)
                for name in names}
    engine.dispose()
    assert {"tasks", "jobs", "datasets", "attempts"} <= set(data), sorted(data)
    return data


@pytest.fixture
def world(cli: Cli, storage: Path, tmp_path: Path) -> Path:
    (storage / "cfg").mkdir()
    for i in range(3):
        (storage / "cfg" / f"c{i}").write_text("x")
    (storage / "data").write_text("d")
    (storage / "empty").mkdir()
    (storage / "latin1").mkdir()  # a name that is not UTF-8: made through a bytes path
    os.close(os.open(os.fsencode(storage / "latin1") + b"/bad\xff.cfg", os.O_CREAT | os.O_WRONLY, 0o644))
    (storage / "latin1" / "good.cfg").write_text("x")
    (storage / "loop" / "a").mkdir(parents=True)
    (storage / "loop" / "a" / "f").write_text("x")
    (storage / "loop" / "a" / "up").symlink_to("..")
    (storage / "other").mkdir()
    (storage / "other" / "o").write_text("o")
    cli.ok(f"orchestra_registry -d user.alice.cfg -p {storage / 'cfg'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.elsewhere -p {storage / 'other'} --cluster OTHER")
    cli.ok(f"orchestra_registry -d user.bob.cfg -p {storage / 'cfg'}", user="bob")
    cli.ok("maestro task create " + GOOD.format(name="taken"))
    cli.ok("maestro task create " + GOOD.replace("alice", "bob").replace("user.bob.data", "user.alice.data")
           .format(name="bobs"), user="bob")
    (tmp_path / "unreadable.toml").write_text("[scheduler\n")
    return storage


CASES = [
    ("maestro job why 99999999999999999999999", "does not exist"),  # SQLite overflowed: a traceback
    ("maestro job logs 99999999999999999999999", "does not exist"),
    ("orchestra_registry -d jodafons.x -p data", "user.<owner>.<name>"),
    ("orchestra_registry -d user.bob.x -p data", "belongs to user 'bob'"),
    ("orchestra_registry -d user.alice.x -p does/not/exist", "does not exist"),
    ("orchestra_registry -d user.alice.x -p empty", "has no files"),
    ("orchestra_registry -d user.alice.x -p data --cluster NOPE", "unknown cluster 'NOPE'"),
    ("orchestra_registry -d user.alice.cfg -p data", "already exists"),
    ("orchestra_registry -p data", "Missing option"),
    ("maestro task create " + GOOD.format(name="t").replace("%OUT", ""), "missing %OUT"),
    ("maestro task create " + GOOD.format(name="t").replace(" %DATA", ""), "missing %DATA"),
    ("maestro task create " + GOOD.format(name="t").replace("user.alice.t", "alice.t"), "user.<owner>.<name>"),
    ("maestro task create " + GOOD.format(name="t").replace("-t user.alice", "-t user.bob"), "belongs to user 'bob'"),
    ("maestro task create " + GOOD.format(name="taken"), "already exists"),
    ("maestro task create " + GOOD.format(name="t").replace("user.alice.cfg", "user.alice.nope"), "does not exist"),
    ("maestro task create " + GOOD.format(name="t").replace("user.alice.data", "user.alice.elsewhere"),
     "on the same cluster"),
    ("maestro task create " + GOOD.format(name="t") + " --queue tpu", "queue 'tpu' does not exist"),
    ("maestro task create " + GOOD.format(name="t") + " --max-time 2hours", "not a duration"),
    ("maestro task create " + GOOD.format(name="t").replace("alice/img", "Alice/IMG"), "not a valid image"),
    ("maestro task create " + GOOD.format(name="t") + " --priority 1000", "out of range"),
    ("maestro task create " + GOOD.format(name="t") + " --max-retries -1", "out of range"),
    ("maestro task delete -t user.bob.bobs --yes", "only its owner or an admin"),
    ("maestro task kill -t user.bob.bobs", "only its owner or an admin"),
    ("maestro task retry -t user.bob.bobs", "only its owner or an admin"),
    ("maestro task delete -t user.alice.nothing --yes", "does not exist"),
    ("maestro task delete -t user.alice.taken", "pass --yes"),
    ("maestro task list --status sleepy", "unknown"),
    ("maestro dataset delete -d user.bob.cfg --yes", "only its owner or an admin"),
    ("maestro job logs 999", "does not exist"),
    ("maestro task frobnicate", "No such command"),
    ("orchestra user set alice --share 2", "only admins"),
    ("orchestra_registry -d user.alice.x -p latin1", r"file name b'%s/latin1/bad\xff.cfg' is not valid UTF-8"),
    ("orchestra_registry -d user.alice.x -p latin1/bad\udcff.cfg", "rename it to a UTF-8 name"),
    ("orchestra_registry -d user.alice.x -p 'no\nsuch'", r"(resolved to '%s/no\nsuch')"),
    ("orchestra_registry -d user.alice.x -p loop", "cannot list %s/loop/a/up: a symbolic link to a directory above it"),
    ("orchestra_registry -d 'user.alice.x\n' -p data", "user.<owner>.<name>"),
    (f"orchestra_registry -d user.{'a' * 64}.x -p data", "owner of 64 characters"),
    ("maestro task create " + GOOD.format(name="t").replace("-t user.alice.t", f"-t user.{'b' * 70}.t"),
     "at most 63"),
]


@pytest.mark.parametrize("line,message", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_refusal(cli: Cli, world: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                 line: str, message: str) -> None:
    monkeypatch.chdir(world)
    before = snapshot(env["ORCHESTRA_DATABASE_URL"])
    result = cli(line)
    assert result.code != 0
    assert (message % world if "%s" in message else message) in result.err, result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err + result.out
    assert snapshot(env["ORCHESTRA_DATABASE_URL"]) == before


# Refusals that depend on the environment: (variables to set, None = unset; command; message).
# Unsetting ORCHESTRA_USER runs the command as the admin, who may act for any owner.
ENV_CASES = [
    ({"ORCHESTRA_USER": "a" * 64}, "maestro task list", "at most 63 characters"),
    ({"ORCHESTRA_USER": "bob\n"}, "maestro task list", "'bob\\n' is not a valid user name"),
    ({"ORCHESTRA_USER": None}, f"orchestra_registry -d user.{'a' * 64}.x -p data", "at most 63"),
    ({"ORCHESTRA_USER": None},
     "maestro task create " + GOOD.format(name="t").replace("user.alice.t", f"user.{'c' * 99}.t"),
     "owner of 99 characters"),
    ({"ORCHESTRA_DATABASE_URL": "sqlite:////proc/orchestra.db"}, "maestro task list",
     "cannot use /proc/orchestra.db as a database file: it is on the kernel's proc pseudo-filesystem"),
    ({"ORCHESTRA_DATABASE_URL": "sqlite:////proc/self/status"}, "maestro task list", "choose a path on a writable"),
    ({"ORCHESTRA_DATABASE_URL": "sqlite:////sys/orchestra.db"}, "maestro task list", "as a database file"),
    ({"ORCHESTRA_DATABASE_URL": "sqlite:////dev/null"}, "maestro task list",
     "cannot use /dev/null as a database file: it is a character device, not a regular file; choose a path"),
    ({"ORCHESTRA_DATABASE_URL": "sqlite:///%s"}, "maestro task list", "it is a directory, not a regular file"),
    ({"ORCHESTRA_DATABASE_URL": "sqlite:///%s/data/orchestra.db"}, "maestro task list", "as a database file"),
]


@pytest.mark.parametrize("variables,line,message", ENV_CASES, ids=[f"env{i:02d}" for i in range(len(ENV_CASES))])
def test_refusal_in_environment(cli: Cli, world: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                variables: dict[str, str | None], line: str, message: str) -> None:
    """As test_refusal; a file given as the database (a directory, a device) keeps its mode: as root,
    `sqlite:////dev/null` used to chmod /dev/null to 0600, and a directory such as /tmp likewise."""
    monkeypatch.chdir(world)
    world.chmod(0o755)  # group/other bits: what the SQLite check used to "tighten" to 0600
    before = snapshot(env["ORCHESTRA_DATABASE_URL"])
    modes = {p: os.stat(p).st_mode for p in ("/dev/null", world, world / "data")}
    for name, value in variables.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value % world if "%s" in value else value)
    result = cli(line)
    assert result.code != 0
    assert message in result.err, result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err + result.out
    assert snapshot(env["ORCHESTRA_DATABASE_URL"]) == before
    assert {p: os.stat(p).st_mode for p in modes} == modes


def test_unreadable_config_and_unreachable_database(cli: Cli, world: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_CONFIG", str(tmp_path / "unreadable.toml"))
    result = cli("maestro task list")
    assert result.code == 1 and "is not valid TOML" in result.err and result.err.count("\n") == 1
    monkeypatch.setenv("ORCHESTRA_CONFIG", str(tmp_path / "missing.toml"))
    assert "cannot read config file" in cli("maestro task list").err
    monkeypatch.delenv("ORCHESTRA_CONFIG")
    monkeypatch.setenv("ORCHESTRA_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = cli("maestro task list")
    assert result.code == 1 and "cannot reach the database" in result.err and result.err.count("\n") == 1
    monkeypatch.setenv("ORCHESTRA_DATABASE_URL", "nonsense")
    assert "malformed" in cli("maestro task list").err
    if os.geteuid() != 0:  # root reads anything
        secret = tmp_path / "secret.toml"
        secret.write_text("")
        secret.chmod(0)
        monkeypatch.setenv("ORCHESTRA_CONFIG", str(secret))
        assert "cannot read config file" in cli("maestro task list").err
