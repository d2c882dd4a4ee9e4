"""`scripts/bench.py` still runs: the cycle scenario end to end at small sizes, on both databases.

The README's benchmark table comes from this script; a refactoring that breaks it would only be
found by whoever next measures. Nothing here is timed: the test checks the table's shape and
that every measured cycle dispatched its 1,000 jobs.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_cycle_benchmark_prints_its_rows(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--only", "cycle", "--db", kind]
    if kind == "postgresql":  # the tests' server, not a second embedded one
        command += ["--postgres-url", request.getfixturevalue("postgres_url")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| scheduler cycle")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| scheduler cycle, 1,000 queued, 100 users, 1,000 slots end + refill",
        "| scheduler cycle, 10,000 queued, 100 users, 1,000 slots end + refill",
    ]
    for row in rows:
        assert row.split(" | ")[1] == kind
        assert re.search(r"mean of 10 cycles \(worst \d+ ms\), 1,000 dispatched each; [\d,]+ decisions/s", row), row
        assert re.search(r"peak RSS \d+ MiB", row), row
