"""Event-driven turnover on the kubernetes backend: the pod watch refills a freed slot at once.

`orchestra scheduler run` runs as the admin runs it (300 s interval), against the simulator, so
only events can drive 40 jobs through 4 slots in seconds: the task's NOTIFY / counter change
starts the first cycle, then each pod's end reaches the scheduler through the watch and a short
pass refills the slot. With the watch disabled the same work is driven by polling every
`poll_seconds`. Either way every job runs exactly once and the slots are never exceeded (the
ledger check of tests/e2e/test_turnover.py).

The simulator's event log times each change, so the turnover latency (a pod's end, as the node
reports it, to the next pod's create) is measured as well and printed (`pytest -s`).
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from orchestra.scheduler.cycle import backend_name
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import Service, check_turnover_ledger, installation, make_inputs, wait_task_done
from tests.helpers import Cli
from tests.k8s.test_e2e_k8s import assert_clean
from tests.k8s_sim import KubeSim

K8sEnv = Callable[..., KubeSim]
N_JOBS = 40
SLOTS = 4
TASK = "user.alice.kturn"


def submit(cli: Cli, storage: Path, ledger: Path) -> None:
    configs, data = make_inputs(storage / "kturn", N_JOBS)
    cli.ok(f"orchestra_registry -d user.alice.kturn-data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.kturn-configs -p {configs}/ --cluster LPS")
    cli.ok(f"maestro task create -c user.alice.kturn-configs -d user.alice.kturn-data -t {TASK} "
           "--containerImage alice/img --bypass "
           f"--exec 'echo start %IN $(date +%s%N) >> {ledger}; sleep 0.05; "
           f"echo end %IN $(date +%s%N) >> {ledger}; test -n %DATA%OUT'")


def turnover_latencies(sim: KubeSim) -> list[float]:
    """Seconds from each pod's end (its first event in phase Succeeded or Failed) to the first
    create after it that no earlier end claimed: how long a freed slot stayed empty."""
    ended: dict[str, float] = {}
    creates = []
    for e in sim.store.events:
        if e.type == "ADDED":
            creates.append(e.at)
        elif e.pod["status"]["phase"] in ("Succeeded", "Failed"):
            ended.setdefault(e.pod["metadata"]["name"], e.at)
    out, i = [], 0
    for end in sorted(ended.values()):
        while i < len(creates) and creates[i] < end:
            i += 1
        if i == len(creates):
            break
        out.append(creates[i] - end)
        i += 1
    return out


def run_turnover(cli: Cli, storage: Path, tmp_path: Path, sim: KubeSim) -> tuple[str, list[float]]:
    ledger = tmp_path / "ledger.txt"
    scheduler = Service()
    scheduler.wait_idle()
    submit(cli, storage, ledger)
    assert wait_task_done(cli, scheduler, TASK, timeout=60) == "completed"
    log = scheduler.stop()
    check_turnover_ledger(ledger, {str(storage / "kturn" / "configs" / f"c{i:04d}.cfg") for i in range(N_JOBS)},
                          SLOTS)
    jobs = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
    assert len(jobs) == N_JOBS and {(j["status"], j["attempts"]) for j in jobs} == {("succeeded", 1)}
    assert "short pass(es)" in log, log  # the work was done by short passes, not by 300 s cycles
    latencies = turnover_latencies(sim)
    assert len(latencies) >= N_JOBS - SLOTS - 1, latencies
    return log, latencies


def summary(latencies: list[float]) -> str:
    ms = sorted(1000 * x for x in latencies)
    return (f"{len(ms)} turnovers: median {statistics.median(ms):.0f} ms, "
            f"p90 {ms[int(0.9 * (len(ms) - 1))]:.0f} ms, max {ms[-1]:.0f} ms")


def test_watch_turns_40_pods_over_exactly_once(cli: Cli, storage: Path, tmp_path: Path, k8s_env: K8sEnv) -> None:
    # poll_seconds 60: were the watch not doing the work, 10 rounds of 4 would take 10 minutes.
    sim = k8s_env(slots=SLOTS, kubernetes="poll_seconds = 60")
    _, latencies = run_turnover(cli, storage, tmp_path, sim)
    print(f"\nwatch: {summary(latencies)}")
    assert sim.count("watch") >= 1
    assert statistics.median(latencies) < 5.0, summary(latencies)  # a poll would be >= 60 s; typically ~30 ms
    assert_clean(sim)


def test_without_the_watch_polling_turns_them_over(cli: Cli, storage: Path, tmp_path: Path,
                                                   k8s_env: K8sEnv) -> None:
    sim = k8s_env(slots=SLOTS, kubernetes="watch = false\npoll_seconds = 0.5")
    _, latencies = run_turnover(cli, storage, tmp_path, sim)
    print(f"\npoll every 0.5 s: {summary(latencies)}")
    assert sim.count("watch") == 0
    assert_clean(sim)


def test_an_api_outage_interrupts_cycles_but_not_the_service(cli: Cli, storage: Path, tmp_path: Path,
                                                              k8s_env: K8sEnv) -> None:
    """The API goes away while pods run: the service logs the interrupted cycles, backs off, and
    once the API is back finishes the work, every job exactly once."""
    sim = k8s_env(slots=SLOTS, kubernetes="poll_seconds = 0.3", timeout=0.5)
    ledger = tmp_path / "ledger.txt"
    configs, data = make_inputs(storage / "kturn", 8)
    cli.ok(f"orchestra_registry -d user.alice.kturn-data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.kturn-configs -p {configs}/ --cluster LPS")
    scheduler = Service()
    scheduler.wait_idle()
    cli.ok(f"maestro task create -c user.alice.kturn-configs -d user.alice.kturn-data -t {TASK} "
           f"--containerImage alice/img --bypass --exec 'echo start %IN $(date +%s%N) >> {ledger}; sleep 0.5; "
           f"echo end %IN $(date +%s%N) >> {ledger}; test -n %DATA%OUT'")
    first = backend_name(1, 0, 1, installation(Context.from_env()))
    sim.wait_for(first, lambda p: p is not None and p["status"]["phase"] == "Running", timeout=20)
    sim.api_down()
    deadline = time.monotonic() + 20
    while "cycle interrupted" not in scheduler.log:
        assert scheduler.proc.poll() is None and time.monotonic() < deadline, scheduler.log
        time.sleep(0.1)
    sim.api_up()
    assert wait_task_done(cli, scheduler, TASK, timeout=60) == "completed"
    log = scheduler.stop()
    assert "kubernetes" in log.split("cycle interrupted:", 1)[1].splitlines()[0], log
    check_turnover_ledger(ledger, {str(storage / "kturn" / "configs" / f"c{i:04d}.cfg") for i in range(8)}, SLOTS)
