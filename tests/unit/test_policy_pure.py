"""Pure policy: names, expansion, states, input parsers, configuration. No database."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from orchestra import expansion
from orchestra.config import load_settings
from orchestra.errors import OrchestraError, PermissionDenied
from orchestra.naming import check_ownership, owner_of
from orchestra.scheduler.expand import scout_indices
from orchestra.services.validation import check_image, parse_duration
from orchestra.states import TaskStatus, can_move, final_task_status, scout_verdict


@pytest.mark.parametrize("name,owner", [("user.jodafons.my_data_file.pic", "jodafons"), ("user.a_b.x-1", "a_b")])
def test_owner_of(name: str, owner: str) -> None:
    assert owner_of(name) == owner


@pytest.mark.parametrize("name", ["jodafons.x", "user.jodafons", "user..x", "user.jo dafons.x", "USER", "user.x.", ""])
def test_bad_names(name: str) -> None:
    with pytest.raises(OrchestraError, match="user.<owner>.<name>"):
        owner_of(name)


def test_ownership() -> None:
    assert check_ownership("user.bob.x", "alice", "task", admin=True) == "bob"
    with pytest.raises(PermissionDenied, match="belongs to user 'bob'"):
        check_ownership("user.bob.x", "alice", "task")


def test_template_needs_every_tag() -> None:
    expansion.check_template("run %DATA %IN %OUT")
    with pytest.raises(OrchestraError, match="missing %OUT"):
        expansion.check_template("run %DATA %IN")
    with pytest.raises(OrchestraError, match="%DATA, %IN"):
        expansion.check_template("run")


def test_expansion_quotes_paths_and_numbers_outputs(tmp_path: Path) -> None:
    evil = "/s/my configs/$(touch pwned);'x'.txt"
    jobs = list(expansion.expand("echo %DATA %IN > %OUT/o", "/s/data file", ["/s/a", evil], "/out/alice/t"))
    assert [j.index for j in jobs] == [0, 1]
    assert jobs[0].output_dir == "/out/alice/t/job_000000"
    assert jobs[1].command == f"echo {shlex.quote('/s/data file')} {shlex.quote(evil)} > /out/alice/t/job_000001/o"
    # The shell sees the hostile path as one literal word.
    out = subprocess.run(["/bin/sh", "-c", jobs[1].command.replace("> /out/alice/t/job_000001/o", "")],
                         capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.strip() == f"/s/data file {evil}"
    assert not (tmp_path / "pwned").exists()


def test_expansion_is_single_pass() -> None:
    cmd = expansion.expand_command("%IN %OUT", "/d", "/c/%OUT", "/o")
    assert cmd == "/c/%OUT /o"


@pytest.mark.parametrize("text,seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("3600", 3600),
                                          ("1d", 86400), (None, None)])
def test_durations(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 hours", "h", "-5", "0", "1.5h", "2x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(OrchestraError, match="--max-time"):
        parse_duration(text)


@pytest.mark.parametrize("image", ["jodafons/my_orchestra_tutorial", "python:3.11-slim", "ghcr.io/org/img:v1.2",
                                   "localhost:5000/a/b", "img@sha256:" + "a" * 64])
def test_good_images(image: str) -> None:
    check_image(image)


@pytest.mark.parametrize("image", ["", "Upper/Case", "a b", "img:", "-img", "img:tag:tag"])
def test_bad_images(image: str) -> None:
    with pytest.raises(OrchestraError, match="containerImage"):
        check_image(image)


def test_scout_verdicts() -> None:
    assert scout_verdict(8, 0, 10, 0.8) == TaskStatus.RUNNING
    assert scout_verdict(7, 2, 10, 0.8) is None
    assert scout_verdict(7, 3, 10, 0.8) == TaskStatus.BROKEN
    assert scout_verdict(1, 0, 1, 0.8) == TaskStatus.RUNNING
    assert scout_verdict(0, 1, 1, 0.8) == TaskStatus.BROKEN
    assert scout_verdict(2, 0, 3, 0.5) == TaskStatus.RUNNING


def test_transitions_and_final_status() -> None:
    assert can_move(TaskStatus.SCOUTING, TaskStatus.BROKEN)
    assert not can_move(TaskStatus.COMPLETED, TaskStatus.BROKEN)
    assert final_task_status(10, 0, 0) == TaskStatus.COMPLETED
    assert final_task_status(9, 1, 0) == TaskStatus.PARTIAL


def test_scouts_spread_over_the_task() -> None:
    assert scout_indices(100, 5) == {0, 25, 50, 74, 99}
    assert scout_indices(3, 10) == {0, 1, 2}
    assert scout_indices(10, 0) == set()


def test_defaults_need_no_config_file(tmp_path: Path) -> None:
    settings = load_settings({"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_USER": "u"})
    assert settings.database_url == f"sqlite:///{tmp_path / 'orchestra.db'}"
    assert list(settings.clusters) == ["LPS"]
    assert settings.clusters["LPS"].backend == "local"
    assert settings.scheduler.interval == 300 and settings.scheduler.scouts == 10
    assert settings.sources["database_url"] == "default"


def test_config_file_and_env_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('database_url = "sqlite:////x.db"\n[scheduler]\nscouts = 4\n'
                      '[clusters.GPU]\nbackend = "kubernetes"\n[clusters.GPU.queues.gpu]\nslots = 8\ngpu = 1\n')
    env = {"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_CONFIG": str(config), "ORCHESTRA_USER": "u"}
    settings = load_settings(env)
    assert settings.scheduler.scouts == 4 and settings.sources["scheduler.scouts"].startswith("file")
    assert settings.database_url == "sqlite:////x.db"
    assert settings.clusters["GPU"].queues["gpu"].gpu == 1 and settings.clusters["GPU"].restrict_to_storage
    env["ORCHESTRA_DATABASE_URL"] = "sqlite:////y.db"
    assert load_settings(env).sources["database_url"] == "env ORCHESTRA_DATABASE_URL"


@pytest.mark.parametrize("text,message", [
    ("[scheduler\n", "not valid TOML"),
    ("[scheduler]\nscout = 3\n", "unknown keys"),
    ("[clusters.X]\nbackend = 'slurm'\n", "use 'local' or 'kubernetes'"),
    ("[clusters.X.queues.cpu]\nslots = 'many'\n", "slots and gpu are integers"),
])
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(OrchestraError, match=message):
        load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": str(tmp_path)})
