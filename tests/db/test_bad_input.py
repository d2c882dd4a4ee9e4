"""Every refusal: non-zero exit, one line on stderr naming problem and fix, no traceback, and the
database exactly as it was (every table compared before and after)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from orchestra.db.engine import make_engine
from tests.helpers import Cli

GOOD = ('-c user.alice.cfg -d user.alice.data -t user.alice.{name} --containerImage alice/img '
        '--exec "run %DATA %IN %OUT"')


def snapshot(url: str) -> dict[str, list[tuple]]:
    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        data = {t.name: sorted(map(tuple, conn.execute(select(t)).all()), key=repr) for t in meta.sorted_tables}
    engine.dispose()
    return data


@pytest.fixture
def world(cli: Cli, storage: Path, tmp_path: Path) -> Path:
    (storage / "cfg").mkdir()
    for i in range(3):
        (storage / "cfg" / f"c{i}").write_text("x")
    (storage / "data").write_text("d")
    (storage / "empty").mkdir()
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
]


@pytest.mark.parametrize("line,message", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_refusal(cli: Cli, world: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                 line: str, message: str) -> None:
    monkeypatch.chdir(world)
    before = snapshot(env["ORCHESTRA_DATABASE_URL"])
    result = cli(line)
    assert result.code != 0
    assert message in result.err, result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err + result.out
    assert snapshot(env["ORCHESTRA_DATABASE_URL"]) == before


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
