"""`jsonout.plain`'s fast path (exact-type dispatch, field lists cached per dataclass type) gives
exactly what the plain recursive rules give, for every kind of value a report holds: the `--json`
documents and the /api/ routes must not change by a byte."""
from __future__ import annotations

import dataclasses
import enum
import json
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import pytest

from orchestra.cli import jsonout


def reference(obj: Any) -> Any:
    """The rules as first written (one isinstance chain per value), the yardstick."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _ref_value(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _ref_value(str(k), v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [reference(v) for v in obj]
    return obj


def _ref_value(key: str, value: Any) -> Any:
    if (key.endswith("_at") or key == "now") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return jsonout.iso(float(value))
    return reference(value)


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Inner:
    name: str
    started_at: float | None
    counts: dict[str, int]


@dataclasses.dataclass
class Outer:
    now: float
    rows: list[Inner]
    pair: tuple[int, str]
    flag_at: bool  # a bool is never a time
    level_at: Level  # an int subclass under a time name is one
    color: Color
    extra: Any = None


class NotData:
    def __str__(self) -> str:
        return "not data"


@dataclasses.dataclass
class Child(Inner):
    ended_at: int = 0


VALUES: list[Any] = [
    None, True, 0, 1.5, "x", float("nan"), [], {}, (),
    Outer(1_700_000_000.5, [Inner("a", 1_700_000_001.0, {"queued": 3}), Inner("b", None, {})], (1, "two"),
          True, Level.HIGH, Color.RED, extra={"made_at": 1_700_000_002, "nested": [{"now": 5.0}], 3: "int key"}),
    {"now": np.float64(1_700_000_000.0), "n": np.int64(4), "when_at": "already text", "x_at": True,
     "obj": NotData(), "cls": Inner, "c": Counter({"a": 1}), "o": OrderedDict(b_at=7)},
    [Child("c", 2.0, {"held": 1}, 1_700_000_003), (Inner("d", 0.0, {}),)],
    {"deep": [[{"last_at": 10}]], "later_at": 10**20},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_plain_is_the_reference_conversion(value: Any) -> None:
    got, want = jsonout.plain(value), reference(value)
    assert json.dumps(got, default=str, indent=2) == json.dumps(want, default=str, indent=2)
    assert got == want or json.dumps(got, default=str) == json.dumps(want, default=str)  # NaN != NaN
