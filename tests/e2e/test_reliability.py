"""Crash safety: kill -9 the scheduler at several points of a cycle, restart it, run to idle.

Each job appends one line to a shared file; every job's line must appear exactly once per
successful attempt (never twice, never missing), on SQLite and PostgreSQL.
"""
from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from orchestra.scheduler.crashpoints import POINTS
from tests.e2e.scheduler_helpers import ORCHESTRA, make_inputs, run_scheduler
from tests.helpers import Cli

N_JOBS = 10


def submit(cli: Cli, storage: Path, ledger: Path, name: str = "crash", n: int = N_JOBS) -> None:
    configs, data = make_inputs(storage / name, n)
    cli.ok(f"orchestra_registry -d user.alice.{name}-data -p {data}")
    cli.ok(f"orchestra_registry -d user.alice.{name}-configs -p {configs}")
    # The line is written by the job itself; `sleep` widens the window in which a crash meets a live job.
    cli.ok(f"maestro task create -c user.alice.{name}-configs -d user.alice.{name}-data -t user.alice.{name} "
           f"--containerImage alice/img --bypass "
           f"--exec 'sleep 0.2; echo %IN >> {ledger}; test -n %DATA%OUT'")


def lines(ledger: Path) -> Counter[str]:
    return Counter(ledger.read_text().split()) if ledger.exists() else Counter()


@pytest.mark.parametrize("point", POINTS)
def test_kill9_at_crashpoint_then_restart(cli: Cli, storage: Path, tmp_path: Path, point: str) -> None:
    ledger = tmp_path / "ledger.txt"
    submit(cli, storage, ledger)
    crashed = run_scheduler("--until-idle", env={"ORCHESTRA_CRASHPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    done = run_scheduler("--until-idle")
    assert done.returncode == 0, done.stderr
    jobs = json.loads(cli.ok("maestro job list -t user.alice.crash --json").out)
    assert [j["status"] for j in jobs] == ["succeeded"] * N_JOBS
    seen = lines(ledger)
    assert set(seen) == {str(storage / "crash" / "configs" / f"c{i:04d}.cfg") for i in range(N_JOBS)}
    # Exactly once per successful attempt: a job that ran twice would show two lines.
    assert all(n == 1 for n in seen.values()), seen
    assert all(j["attempts"] >= 1 for j in jobs)


def test_two_schedulers_at_once_dispatch_nothing_twice(cli: Cli, storage: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    submit(cli, storage, ledger, n=20)
    procs = [subprocess.Popen([ORCHESTRA, "scheduler", "run", "--until-idle"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert any("another scheduler" in err for _, err in outputs), outputs
    seen = lines(ledger)
    assert len(seen) == 20 and set(seen.values()) == {1}
    jobs = json.loads(cli.ok("maestro job list -t user.alice.crash --json").out)
    assert {j["attempts"] for j in jobs} == {1}
