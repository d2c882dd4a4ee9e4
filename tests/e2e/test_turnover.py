"""Event-driven turnover: with the service running, a job's end refills its slot in a short pass.

The scheduler runs as the admin runs it (`orchestra scheduler run`, 300 s interval), so the only
way 200 jobs finish in seconds is the event path: the task's NOTIFY / counter change starts the
first cycle, each child's SIGCHLD a short pass. Each job writes a `start` and an `end` line with
its own clock reading to a ledger; from those we check every job ran exactly once and that at no
instant more jobs ran than the queue's 4 slots (a slot is held from dispatch to recorded end,
which contains the job's own start-to-end interval, so an overbooked slot shows as overlap).
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.e2e.scheduler_helpers import Service, check_turnover_ledger, make_inputs, wait_task_done
from tests.helpers import Cli

N_JOBS = 200
CRASH_JOBS = 40  # the kill -9 cases: the crash is in the first short passes; the rest only has to finish
SLOTS = 4  # the cpu queue of tests/helpers.CONFIG


def submit(cli: Cli, storage: Path, ledger: Path, n: int = N_JOBS) -> None:
    configs, data = make_inputs(storage / "turn", n)
    cli.ok(f"orchestra_registry -d user.alice.turn-data -p {data}")
    cli.ok(f"orchestra_registry -d user.alice.turn-configs -p {configs}")
    cli.ok("maestro task create -c user.alice.turn-configs -d user.alice.turn-data -t user.alice.turn "
           "--containerImage alice/img --bypass "
           f"--exec 'echo start %IN $(date +%s%N) >> {ledger}; sleep 0.02; "
           f"echo end %IN $(date +%s%N) >> {ledger}; test -n %DATA%OUT'")


def wait_done(cli: Cli, service: Service, timeout: float = 90) -> str:
    return wait_task_done(cli, service, "user.alice.turn", timeout)


def check_ledger(ledger: Path, storage: Path, n: int = N_JOBS) -> None:
    check_turnover_ledger(ledger, {str(storage / "turn" / "configs" / f"c{i:04d}.cfg") for i in range(n)}, SLOTS)


def test_short_passes_turn_200_jobs_over_exactly_once(cli: Cli, storage: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    scheduler = Service()
    scheduler.wait_idle()
    submit(cli, storage, ledger)
    assert wait_done(cli, scheduler) == "completed"
    out = scheduler.stop()
    check_ledger(ledger, storage)
    # The work was done by short passes, not by 300 s cycles.
    assert "short pass(es)" in out, out
    jobs = json.loads(cli.ok("maestro job list -t user.alice.turn --json").out)
    assert len(jobs) == N_JOBS and {j["attempts"] for j in jobs} == {1}


@pytest.mark.parametrize("point", ["after-end-observed", "after-dispatch-recorded", "after-launch"])
def test_kill9_in_a_short_pass_loses_and_duplicates_nothing(cli: Cli, storage: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            point: str) -> None:
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("ORCHESTRA_CRASHPOINT", f"{point}@short")
    crashing = Service()
    crashing.wait_idle()
    submit(cli, storage, ledger, CRASH_JOBS)
    assert crashing.wait_exit() == -signal.SIGKILL, crashing.log
    monkeypatch.delenv("ORCHESTRA_CRASHPOINT")
    scheduler = Service()  # adopts what the dead one left running, then carries on
    assert wait_done(cli, scheduler) == "completed"
    scheduler.stop()
    check_ledger(ledger, storage, CRASH_JOBS)
    jobs = json.loads(cli.ok("maestro job list -t user.alice.turn --json").out)
    assert len(jobs) == CRASH_JOBS and all(j["status"] == "succeeded" for j in jobs)


def test_max_time_is_enforced_between_full_cycles(cli: Cli, storage: Path) -> None:
    """No event announces a deadline: the service wakes itself for the earliest --max-time end."""
    configs, data = make_inputs(storage / "slow", 2)
    cli.ok(f"orchestra_registry -d user.alice.slow-data -p {data}")
    cli.ok(f"orchestra_registry -d user.alice.slow-configs -p {configs}")
    scheduler = Service()
    scheduler.wait_idle()
    cli.ok("maestro task create -c user.alice.slow-configs -d user.alice.slow-data -t user.alice.slow "
           "--containerImage alice/img --bypass --max-retries 0 --max-time 1s --exec 'sleep 60; echo %DATA %IN %OUT'")
    assert wait_task_done(cli, scheduler, "user.alice.slow", timeout=20) == "partial"  # 300 s interval: not a cycle
    scheduler.stop()
    jobs = json.loads(cli.ok("maestro job list -t user.alice.slow --json").out)
    assert [(j["status"], j["reason"]) for j in jobs] == [("failed", "timeout after 1s")] * 2
