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
