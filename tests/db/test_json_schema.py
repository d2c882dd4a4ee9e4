"""docs/json.md is the schema of every `--json` output: each documented field is printed with its
type, and each printed field is documented (SQLite and PostgreSQL, a world with failed, killed,
running, queued and held jobs, so that every array has elements to check)."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from tests.db.listing_world import World, listing_world  # noqa: F401 - the fixture
from tests.helpers import ADMIN

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def documented() -> dict[str, list[tuple[str, str]]]:
    """command -> [(path, type)] from the tables of docs/json.md."""
    out: dict[str, list[tuple[str, str]]] = {}
    command = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## `(.+) --json`$", line)
        if heading:
            command = heading.group(1)
            out[command] = []
            continue
        if line.startswith("## "):  # a section of another kind (an /api/ route): not a command's fields
            command = None
            continue
        row = re.match(r"\| `([^`]+)` \| ([^|]+?(?:\\\|[^|]+?)*) \|", line)
        if row and command:
            out[command].append((row.group(1), row.group(2).replace("\\|", "|").strip()))
    return out


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parsed = dt.datetime.fromisoformat(value)
    return parsed.tzinfo is not None and parsed.utcoffset() == dt.timedelta(0)


CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list), "time": _is_time,
    "any": lambda v: True,
}


def resolve(doc: Any, path: str) -> list[tuple[str, Any]] | None:
    """Every value at `path` ([] every element, * every key), with where it is; None when a step
    is missing from an object."""
    found: list[tuple[str, Any]] = [("", doc)]
    for step in re.findall(r"\[\]|[^.\[\]]+", path):
        nxt: list[tuple[str, Any]] = []
        for where, value in found:
            if value is None:
                continue  # under a null parent: nothing to check
            if step == "[]":
                assert isinstance(value, list), f"{where or 'the document'} is not an array"
                nxt += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            elif step == "*":
                assert isinstance(value, dict), f"{where} is not an object"
                nxt += [(f"{where}.{k}", v) for k, v in value.items()]
            else:
                assert isinstance(value, dict), f"{where} is not an object"
                if step not in value:
                    return None
                nxt.append((f"{where}.{step}", value[step]))
        found = nxt
    return found


def printed_paths(doc: Any, prefix: str = "") -> set[str]:
    """Every field path printed, in the documentation's notation (array elements as [])."""
    out = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= printed_paths(value, path)
    elif isinstance(doc, list):
        for value in doc:
            out |= printed_paths(value, f"{prefix}[]")
    return out


def covers(pattern: str, path: str) -> bool:
    regex = re.escape(pattern).replace(r"\*", r"[^.\[\]]+").replace(r"\[\]", r"\[\]")
    return re.fullmatch(regex, path) is not None or (pattern.endswith(".*") and path.startswith(pattern[:-2] + "."))


COMMANDS = {  # documented command -> the line the test runs (with the world's ids)
    "maestro task list": "maestro task list --json",
    "maestro task show": "maestro task show -t {failing} --json",
    "maestro job list": "maestro job list -t {failing} --json --limit 0",
    "maestro job show": "maestro job show {failed_job} --json",
    "maestro job why": "maestro job why {queued_job} --json",
    "maestro queue": "maestro queue --jobs --json",
    "maestro usage": "maestro usage --json",
    "maestro dataset list": "maestro dataset list --json",
    "maestro dataset show": "maestro dataset show -d user.alice.configs --json",
    "orchestra status": "orchestra status --json",
    "orchestra user list": "orchestra user list --json",
    "orchestra config show": "orchestra config show --json",
}


def test_every_listing_with_json_is_documented() -> None:
    assert set(documented()) == set(COMMANDS)


def test_json_output_matches_docs(listing_world: World) -> None:
    w = listing_world
    for command, fields in documented().items():
        line = COMMANDS[command].format(**w.ids)
        doc = json.loads(w.cli.ok(line, user=ADMIN if command.startswith("orchestra user") else None).out)
        for path, kind in fields:
            optional = kind.endswith(", optional")
            kind = kind.removesuffix(", optional")
            values = resolve(doc, path)
            if values is None:
                assert optional, f"{line}: {path} is documented but not printed"
                continue
            nullable = kind.endswith("|null")
            check = CHECKS[kind.removesuffix("|null")]
            for where, value in values:
                assert (value is None and nullable) or (value is not None and check(value)), \
                    f"{line}: {where} = {value!r} is not {kind}"
        undocumented = [p for p in printed_paths(doc) if not any(covers(pattern, p) for pattern, _ in fields)]
        assert not undocumented, f"{line} prints fields docs/json.md does not list: {sorted(undocumented)}"
    # the world has something under every array that matters, so the types above were checked
    detail = json.loads(w.cli.ok(f"maestro task show -t {w.ids['failing']} --json").out)
    assert detail["failed"] and all(f["job_id"] for f in detail["failed"])
    assert json.loads(w.cli.ok("maestro queue --jobs --json").out)["rows"][0]["factors"] is not None

