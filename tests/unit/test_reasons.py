"""Why a job ended is composed once (orchestra.reasons): each fact said once, never "None"."""
from __future__ import annotations

import pytest

from orchestra.reasons import ended, span


@pytest.mark.parametrize("status, code, reason, max_time, expected", [
    ("failed", 3, "exit code 3", None, "exit code 3"),  # was "exit code 3, exit code 3"
    ("failed", 3, None, None, "exit code 3"),
    ("failed", None, "timeout", 7200, "timeout after 2h"),  # was "exit code None, timeout"
    ("failed", 143, "timeout", 90, "timeout after 1m30s"),  # our own stop signal: no exit code
    ("failed", None, "timeout", None, "timeout"),
    ("queued", None, "lost: process gone without an exit status", None, "lost: process gone without an exit status"),
    ("killed", 137, "killed by user", None, "killed by user"),
    ("failed", 137, "killed by signal 9", None, "killed by signal 9"),
    ("failed", 137, "OOMKilled: the job used more than its queue's memory", None,
     "OOMKilled: the job used more than its queue's memory"),  # the exit code has its own field and column
    ("failed", None, None, None, "failed (no exit code)"),
    ("killed", None, None, None, "killed"),
    ("succeeded", 0, None, None, ""),
    ("running", None, None, None, ""),
    ("starting", None, "ImagePullBackOff", None, "ImagePullBackOff"),
])
def test_ended(status: str, code: int | None, reason: str | None, max_time: float | None, expected: str) -> None:
    said = ended(status, code, reason, max_time)
    assert said == expected and "None" not in said


def test_span() -> None:
    assert [span(s) for s in (45, 60, 5400, 7200, 93784, 0)] == ["45s", "1m", "1h30m", "2h", "1d2h3m4s", "0s"]
