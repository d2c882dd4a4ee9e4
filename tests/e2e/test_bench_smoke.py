"""`scripts/bench.py` still runs: the limits and cycle scenarios end to end at small sizes, on both databases.

The README's benchmark table comes from this script; a refactoring that breaks it would only be
found by whoever next measures. Nothing here is timed: the test checks the table's shape, that
every measured cycle dispatched its 1,000 jobs, that the machine's limits are measured in the same
run, and that the judged figure carries its limit, its ratio and a verdict (never which one).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra.backends import containment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_limits_and_cycle_benchmarks_print_their_rows(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--only", "limits,cycle", "--db", kind]
    if kind == "postgresql":  # the tests' server, not a second embedded one
        command += ["--postgres-url", request.getfixturevalue("postgres_url")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| scheduler cycle")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| scheduler cycle, 1,000 queued, 20 users, 1,000 slots end + refill",
        "| scheduler cycle, 10,000 queued, 20 users, 1,000 slots end + refill",
    ]
    for row in rows:
        assert row.split(" | ")[1] == kind
        assert re.search(r"mean of 6 cycles in 2 alternated rounds \(worst \d+ ms\), 1,000 dispatched each; [\d,]+ decisions/s", row), row
        assert re.search(r"peak RSS \d+ MiB", row), row
        assert re.search(r"raw set-based UPDATE of 1,000 of its rows \d+ ms", row), row
        # The write steps' own statements beside raw set-based ones making the same row changes.
        assert re.search(r"write steps, the cycle's statements / raw set-based ones of the same rows: "
                         r"record \d+ ms / \d+ ms \([\d.]+x\), acknowledge \d+ ms / \d+ ms \([\d.]+x\), "
                         r"reconcile \d+ ms / \d+ ms \([\d.]+x\);", row), row
    small, large = (row.split(" | ") for row in rows)
    assert small[3:5] == ["-", "-"], small
    assert re.fullmatch(r"[\d.]+ s, the 1,000 cycle", large[3]), large
    assert re.fullmatch(r"\d+ % \(goal >= 83 %: (meets|misses)\)", large[4]), large
    assert re.search(r"^Goals \(issue 18\), as fractions of limits measured in this run: [012] of 2 met\.$",
                     out.stdout, re.M), out.stdout[-3000:]
    assert re.search(r"^- (meets|misses): scheduler cycle, 10,000 queued.*: <= 1\.2x the 1,000 cycle", out.stdout, re.M)
    assert re.search(r"^- (meets|misses): scheduler cycle, 10,000 queued.*: write steps within 2x of the raw set-based "
                     r"statements of the same rows \(worst: (record|acknowledge|reconcile), [\d.]+x\) "
                     r"\(\d+ % of the limit reached: \d+ ms raw set-based (record|acknowledge|reconcile)\)$",
                     out.stdout, re.M), out.stdout[-3000:]

    limits = {row.split(" | ")[0]: row.split(" | ") for row in out.stdout.splitlines() if row.startswith("| limit: ")}
    contained = "| limit: the local backend's wrapper around `:`, spawned in cgroups of its own, by one launcher thread per core (not judged)"
    assert sorted(set(limits) - {contained}) == [
        "| limit: one minimal commit (one job row changed)",
        "| limit: raw set-based UPDATE of 1,000 job rows (one statement)",
        "| limit: the local backend's wrapper around `:`, spawned by one launcher thread per core",
        "| limit: the local backend's wrapper around `:`, spawned serially",
    ]
    # What containment costs: measured where this host lets us make cgroups (root here), never judged.
    assert (contained in limits) == cgroups_here()
    if contained in limits:
        assert "cgroups prepared, joined and removed per spawn" in limits[contained][5]
        assert limits[contained][3:5] == ["-", "-"]
    for name, row in limits.items():
        assert row[1] == ("-" if "wrapper" in name else kind), row
        assert re.fullmatch(r"[\d.]+ s", row[2]), row
    assert re.match(r"[\d,]+ jobs/s \(50 spawns, each waited for, 1 launcher\)",
                    limits["| limit: the local backend's wrapper around `:`, spawned serially"][5])
    assert re.match(r"[\d,]+\.\d\d ms, mean of 20;", limits["| limit: one minimal commit (one job row changed)"][5])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_throughput_benchmark_prints_its_rows_with_their_spawn_limits(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The throughput rows: a real `orchestra scheduler run` takes the jobs to all done (the task's
    recorded finish, read lock-free), each row beside the spawn limit measured just before it."""
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--only", "throughput", "--db", kind]
    if kind == "postgresql":
        command += ["--postgres-url", request.getfixturevalue("postgres_url")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| 200 trivial jobs")]
    assert [(r[0], r[1]) for r in rows] == [
        ("| 200 trivial jobs at 64 slots, submit -> all done (local backend)", kind),
        ("| 200 trivial jobs at 2 slots, submit -> all done (local backend)", kind),
    ]
    parallel, serial = rows
    assert re.fullmatch(r"[\d,]+ jobs/s spawn, \d+ launcher threads, just before the run", parallel[3]), parallel
    assert re.fullmatch(r"[\d,]+ jobs/s spawn, serially, just before the run", serial[3]), serial
    for row, goal in ((parallel, 50), (serial, 25)):
        assert re.fullmatch(r"[\d.]+ s", row[2]) and float(row[2][:-2]) > 0, row
        assert re.fullmatch(rf"\d+ % \(goal >= {goal} %: (meets|misses)\)", row[4]), row
        assert re.match(r"[\d,]+ jobs/s, first job started [\d.]+ s after create, scheduler CPU [\d.]+ ms/job; "
                        r"a file created beside its storage in \d+ µs and sum\(range\(10,000\)\) in \d+ µs "
                        r"just before it", row[5]), row
    assert re.search(r"^Goals \(issue 18\), as fractions of limits measured in this run: [012] of 2 met\.$",
                     out.stdout, re.M), out.stdout[-3000:]
    # The header names the machine and how fast its CPU ran (the VM's speed drifts).
    assert re.search(r"^Measured \d{4}-\d\d-\d\d on .+ by `python scripts/bench\.py .+`; "
                     r"sum\(range\(10,000\)\) in \d+ µs at its end", out.stdout, re.M), out.stdout[:500]


def cgroups_here() -> bool:
    """Whether this host lets us make cgroups of our own (the probe's groups removed again)."""
    groups = containment.detect("orchestra-bench-probe", f"p{os.getpid()}")
    containment.discard(groups)
    return groups.strong


def test_the_dashboard_bench_times_every_route() -> None:
    """`scripts/bench_web.py` at a tiny size on SQLite: one row per route the app declares plus its
    variants, each answered 200 with a verdict against the 200 ms goal; no route left untimed.
    (Only the table's shape: no timing is asserted.)"""
    command = [sys.executable, str(ROOT / "scripts" / "bench_web.py"), "--jobs", "200", "--users", "10",
               "--repeat", "1", "--history-days", "0.01", "--history-users", "3"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| `")]
    routes = {row[0].removeprefix("| `").removesuffix("`") for row in rows}
    assert {"/", "/queue", "/tasks", "/usage", "/api/status", "/api/queue", "/api/tasks"} <= routes, routes
    assert any(r.startswith("/jobs/") for r in routes) and any(r.startswith("/live/") for r in routes)
    for row in rows:
        assert re.fullmatch(r"[\d.]+", row[1]) and re.fullmatch(r"[\d.]+", row[2]), row
        assert row[4] == "200 ms" and row[5].rstrip(" |") in ("meets", "misses", "misses (worst)"), row
    assert re.search(rf"^\d+ of {len(rows)} routes answer every request in under 200 ms\.$", out.stdout, re.M)
