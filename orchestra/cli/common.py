"""What the three CLIs share: one-line errors, the service context, and rendering helpers."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from sqlalchemy.exc import DBAPIError

from orchestra.db import faults
from orchestra.errors import OrchestraError
from orchestra.services.context import Context

def _new_console(stderr: bool = False) -> Console:
    """A console for this run, made from the environment as it is now: rich honours COLUMNS (the
    width), TTY_COMPATIBLE / FORCE_COLOR (a terminal even when piped) and NO_COLOR. Piped without
    COLUMNS, 200 columns: the few rich tables left (simulate) are not squashed to 80."""
    made = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not made.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        made.width = 200
    return made


class _Current:
    """`console` and `err_console` stand for the current run's consoles (made again by `run`, so a
    test or a caller that changes COLUMNS or TTY_COMPATIBLE between runs is heard)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def renew(self) -> None:
        self._console = _new_console(self._stderr)

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            self.renew()
        return getattr(self._console, name)


console: Console = _Current(stderr=False)  # type: ignore[assignment]
err_console: Console = _Current(stderr=True)  # type: ignore[assignment]


def version_line() -> str:
    from orchestra.services.status import version

    return f"orchestra {version()}"


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_line() + "\n")
        raise typer.Exit()


VersionOption = Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                             help="print `orchestra <version>` and exit")]


def new_app(help_text: str, root: bool = False) -> typer.Typer:
    """A typer app with Orchestra's conventions; `root`: a command line's top app, which gets
    typer's shell completion (--install-completion / --show-completion: bash, zsh, fish)."""
    return typer.Typer(
        help=help_text, add_completion=root, no_args_is_help=True, pretty_exceptions_enable=False,
        rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
    )


def add_version(app: typer.Typer) -> None:
    """`--version` on an app with subcommands (a callback on its top level)."""

    @app.callback()
    def _top(version: VersionOption = False) -> None:  # noqa: ARG001 - handled by its callback
        pass


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit non-zero: the only way a refusal reaches the user."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


_COMMANDS: dict[tuple[typer.Typer, str | None], Any] = {}
# The one variable typer reads while building: it makes --show-completion take the shell as a value.
_COMPLETION_SWITCH = "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"


def command_of(app: typer.Typer) -> Any:
    """The click command a typer app builds, built once per process. Building it reads every
    command's signature and evaluates its annotations (~60 ms for maestro's tree); `Typer.__call__`
    builds it anew at each call, which a process that runs several command lines (the tests run
    thousands in-process, ~40 % of their CPU) paid each time. Apps are built with
    `pretty_exceptions_enable=False`, so skipping `Typer.__call__`'s exception hook changes nothing."""
    key = (app, os.environ.get(_COMPLETION_SWITCH))
    command = _COMMANDS.get(key)
    if command is None:
        command = _COMMANDS[key] = typer.main.get_command(app)
    return command


def run(app: typer.Typer, args: Sequence[str] | None = None, prog_name: str | None = None) -> None:
    """Run a typer app with Orchestra's error discipline: one line, non-zero exit, no traceback."""
    from typer import Abort
    from typer._click.exceptions import ClickException  # typer vendors click (no public alias)

    if prog_name is None:  # `maestro.py` is the seed's spelling of `maestro`: one name for usage and completion
        prog_name = os.path.basename(sys.argv[0]).removesuffix(".py") or None
    console.renew()  # type: ignore[attr-defined]
    err_console.renew()  # type: ignore[attr-defined]
    try:
        result = command_of(app).main(args=list(args) if args is not None else None, prog_name=prog_name,
                                      standalone_mode=False)
    except ClickException as exc:
        fail(f"{exc.format_message()} (see --help)", exc.exit_code)
    except OrchestraError as exc:
        fail(str(exc))
    except DBAPIError as exc:  # a lock held too long, a server gone, a full disk: one line, no traceback
        fail(faults.describe(exc))
    except OverflowError:  # e.g. `maestro job why 99999999999999999999999` on SQLite (64-bit integers)
        fail("a number given is too large; use a value that fits in 64 bits (see --help)")
    except Abort:
        fail("aborted")
    except KeyboardInterrupt:
        fail("interrupted", 130)
    if isinstance(result, int) and result:
        raise SystemExit(result)


_context: Context | None = None


def context() -> Context:
    """The service context for this process (settings from the environment, a current schema)."""
    global _context
    if _context is None:
        _context = Context.from_env()
        _ = _context.identity  # who is asking is settled (or refused) before any command runs
    return _context


def reset_context() -> None:
    global _context
    if _context is not None:
        _context.engine.dispose()
    _context = None


def print_json(data: Any) -> None:
    def default(obj: Any) -> Any:
        if is_dataclass(obj) and not isinstance(obj, type):
            return asdict(obj)
        return str(obj)

    sys.stdout.write(json.dumps(data, default=default, indent=2) + "\n")


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} needs confirmation; pass --yes to confirm non-interactively")
    if not typer.confirm(question):
        fail("aborted, nothing changed")


Handler = Callable[..., Any]
