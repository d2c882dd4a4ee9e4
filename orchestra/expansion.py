"""Task -> job commands: substitute %DATA, %IN and %OUT. Pure.

%IN is one config file, %DATA the data dataset's path (a file, or a directory), %OUT the job's
own output directory, `<storage>/<owner>/<task>/job_<index>`. Substituted paths are shell-quoted,
so spaces and metacharacters in file names are safe.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from orchestra.errors import OrchestraError

TAGS = ("%DATA", "%IN", "%OUT")


def check_template(template: str) -> None:
    """Every tag is mandatory: a command that ignores one is almost always a mistake."""
    missing = [tag for tag in TAGS if tag not in template]
    if missing:
        raise OrchestraError(
            f"--exec is missing {', '.join(missing)}; the command must use %DATA, %IN and %OUT, "
            'e.g. "python3 /job.py -d %DATA -c %IN -o %OUT"'
        )


def output_root(storage: str, owner: str, task_name: str) -> str:
    return str(PurePosixPath(storage) / owner / task_name)


def output_dir(root: str, index: int) -> str:
    return f"{root}/job_{index:06d}"


@dataclass(frozen=True)
class ExpandedJob:
    index: int
    config_path: str
    output_dir: str
    command: str


_TAG = re.compile(r"(%DATA|%IN|%OUT)")


def _compile(template: str) -> list[str]:
    """Split once into literal text and tags (odd positions), so each job is a cheap join."""
    return _TAG.split(template)


def _fill(parts: list[str], values: dict[str, str]) -> str:
    return "".join(values[p] if i % 2 else p for i, p in enumerate(parts))


def expand_command(template: str, data_path: str, config_path: str, out_dir: str) -> str:
    """One command; a path that itself contains "%OUT" stays literal (a single pass)."""
    values = {"%DATA": shlex.quote(data_path), "%IN": shlex.quote(config_path), "%OUT": shlex.quote(out_dir)}
    return _fill(_compile(template), values)


def expand(template: str, data_path: str, config_paths: Sequence[str], root: str) -> Iterator[ExpandedJob]:
    """One job per config file, in the given (sorted, recorded) order."""
    check_template(template)
    parts = _compile(template)
    data = shlex.quote(data_path)
    for index, config_path in enumerate(config_paths):
        out = output_dir(root, index)
        command = _fill(parts, {"%DATA": data, "%IN": shlex.quote(config_path), "%OUT": shlex.quote(out)})
        yield ExpandedJob(index, config_path, out, command)
