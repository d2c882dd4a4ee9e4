"""Every command and every option of the three CLIs says what it is for in --help (issue 15):
a new user learns the CLI from --help, not from the source."""
from __future__ import annotations

from typing import Any

import pytest
from typer.main import get_command

from orchestra.cli import admin, maestro, registry


def undocumented(command: Any, path: list[str]) -> list[str]:
    """`maestro job why --json`-style paths of the commands and options with no help text."""
    missing = [" ".join(path)] if not (command.help or "").strip() else []
    for param in command.params:
        if param.name != "help" and not (getattr(param, "help", None) or "").strip():
            missing.append(" ".join([*path, param.opts[0] if param.opts else param.name]))
    for name, sub in (getattr(command, "commands", None) or {}).items():
        missing += undocumented(sub, [*path, name])
    return missing


@pytest.mark.parametrize(("program", "app"), [("maestro", maestro.app), ("orchestra", admin.app),
                                              ("orchestra_registry", registry.app)])
def test_every_command_and_option_has_help(program: str, app: Any) -> None:
    command = get_command(app)
    assert undocumented(command, [program]) == []
    if program != "orchestra_registry":  # a group: its commands are walked, so the walk is not empty
        assert len(getattr(command, "commands", {})) >= 3


def test_a_process_builds_each_command_tree_once(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`common.run` reuses the click command it built (the tests run thousands of command lines in
    one process); the completion switch typer reads while building gives a tree of its own."""
    from orchestra.cli import common

    first = common.command_of(maestro.app)
    for _ in range(2):
        common.run(maestro.app, ["--help"], prog_name="maestro")
        assert "Usage: maestro" in capsys.readouterr().out
    assert common.command_of(maestro.app) is first and common.command_of(admin.app) is not first
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    switched = common.command_of(maestro.app)
    assert switched is not first and common.command_of(maestro.app) is switched
