"""Helpers shared by the tests: run the CLIs in-process as a user types them, write configs."""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestra.cli import admin, common, maestro, registry

CONFIG = """
[scheduler]
run_jobs_as = "scheduler"      # the tests' users (alice, bob) are made-up names with no OS account
scouts = 3
max_retries = 1
poll_interval = 0.2
lease_ttl = 10

[clusters.LPS]
backend = "local"
storage = "{storage}"
default_queue = "cpu"

[clusters.LPS.queues.cpu]
slots = 4
cpu = 1
memory = "1Gi"

[clusters.LPS.queues.gpu]
slots = 1
cpu = 4
memory = "8Gi"
gpu = 1

[clusters.OTHER]
backend = "local"
storage = "{storage}/other"
"""


def write_config(path: Path, storage: Path, extra: str = "") -> Path:
    path.write_text(CONFIG.format(storage=storage) + extra)
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str


ADMIN = "<admin>"


class Cli:
    """Runs `maestro ...`, `orchestra_registry ...` and `orchestra ...` in this process."""

    APPS = {"maestro": maestro.app, "orchestra_registry": registry.app, "orchestra": admin.app}

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, line: str, user: str | None = None) -> Result:
        """Run `line` as `user` (ORCHESTRA_USER), or as the fixture's user; user=ADMIN runs it as
        yourself, the admin: the database's own role on PostgreSQL, the file's owner on SQLite."""
        words = shlex.split(line)
        program = words[0].removesuffix(".py")
        saved = os.environ.get("ORCHESTRA_USER")
        if user == ADMIN:
            os.environ.pop("ORCHESTRA_USER", None)
        elif user:
            os.environ["ORCHESTRA_USER"] = user
        common.reset_context()
        self.capsys.readouterr()
        try:
            common.run(self.APPS[program], words[1:], prog_name=program)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            if user:
                if saved is None:
                    os.environ.pop("ORCHESTRA_USER", None)
                else:
                    os.environ["ORCHESTRA_USER"] = saved
            common.reset_context()
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, line: str, user: str | None = None) -> Result:
        result = self(line, user)
        assert result.code == 0, f"{line!r} failed ({result.code}): {result.err}{result.out}"
        return result

    def close(self) -> None:
        common.reset_context()


def intact(victim: Path) -> bool:
    """The `victim` fixture's directory exactly as it was made."""
    return ((victim / "precious.txt").read_text() == "keep me\n"
            and (victim / "inner" / "deep.txt").read_text() == "keep me too\n"
            and sorted(p.name for p in victim.iterdir()) == ["inner", "precious.txt"])


JOB_STATES = ("held", "queued", "starting", "running", "succeeded", "failed", "killed")


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    """A task's job counts as `task list --json` gives them (every state, zeros included: checked),
    reduced to the states that have jobs, for short expectations."""
    assert list(counts) == list(JOB_STATES), counts
    return {state: n for state, n in counts.items() if n}
