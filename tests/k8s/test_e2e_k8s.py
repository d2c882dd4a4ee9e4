"""The seed workflow and its failure modes end to end on the kubernetes backend, on SQLite and PostgreSQL.

The CLIs run in this process; the scheduler runs as `orchestra scheduler run` in a subprocess (or
in-process where a test steers it cycle by cycle) and finds the simulated API server through
KUBECONFIG, like any kubernetes client; the simulated node runs the pods as local processes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from orchestra.backends.kubernetes import RBAC_RULES
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import ORCHESTRA, cycles_until, make_inputs, run_scheduler, task_status
from tests.helpers import Cli, nonzero
from tests.k8s_sim import Faults, KubeSim, NodeOptions

K8sEnv = Callable[..., KubeSim]
FAST = ("--until-idle", "--interval", "0.2")


def register(cli: Cli, storage: Path, n: int, name: str = "in") -> None:
    configs, data = make_inputs(storage / name, n)
    cli.ok(f"orchestra_registry.py -d user.alice.{name}-data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry.py -d user.alice.{name}-configs -p {configs}/ --cluster LPS")


def create(cli: Cli, task: str, command: str, extra: str = "", image: str = "alice/img", inputs: str = "in") -> None:
    cli.ok(f"maestro.py task create -c user.alice.{inputs}-configs -d user.alice.{inputs}-data -t user.alice.{task} "
           f"--containerImage {image} --exec '{command}' {extra}")


def jobs_of(cli: Cli, task: str) -> list[dict]:
    return json.loads(cli.ok(f"maestro job list -t user.alice.{task} --json").out)


def ledger_lines(ledger: Path) -> Counter[str]:
    return Counter(ledger.read_text().split()) if ledger.exists() else Counter()


def assert_clean(sim: KubeSim) -> None:
    """Every pod created once, none left behind, and no call outside what the Role grants."""
    assert sim.store.creates and set(sim.store.creates.values()) == {1}, sim.store.creates
    assert sim.pods() == []
    assert sim.verbs_seen <= RBAC_RULES, sim.verbs_seen - RBAC_RULES


def test_seed_workflow_on_kubernetes(cli: Cli, storage: Path, k8s_env: K8sEnv) -> None:
    sim = k8s_env()
    register(cli, storage, 6)
    create(cli, "tutorial", 'cat %DATA %IN > %OUT/result.txt && echo done %IN "$ORCHESTRA_USER"')
    result = run_scheduler(*FAST)
    assert result.returncode == 0, result.stderr
    assert "idle" in result.stderr
    rows = json.loads(cli.ok("maestro.py task list -u alice --json").out)
    assert rows[0]["status"] == "completed" and nonzero(rows[0]["counts"]) == {"succeeded": 6}
    for i in range(6):
        out = storage / "alice" / "user.alice.tutorial" / f"job_{i:06d}" / "result.txt"
        assert out.read_text() == f"the data\nconfig {i}\n"
    jobs = jobs_of(cli, "tutorial")
    assert [j["status"] for j in jobs] == ["succeeded"] * 6 and all(j["exit_code"] == 0 for j in jobs)
    assert {j["attempts"] for j in jobs} == {1}
    log = cli.ok(f"maestro job logs {jobs[2]['id']}").out
    assert log == f"done {storage / 'in' / 'configs' / 'c0002.cfg'} alice\n"
    assert sim.count("list") >= 2 and sim.count("create") == 6
    assert_clean(sim)


def test_api_faults_every_job_runs_exactly_once(cli: Cli, storage: Path, tmp_path: Path, k8s_env: K8sEnv) -> None:
    # 20% of all calls fail: half answer 500, half do the work and never answer (client timeout 0.5 s).
    sim = k8s_env(faults=Faults(rate=0.2, kinds=("error", "hang"), hang_seconds=1.0, seed=5), timeout=0.5)
    ledger = tmp_path / "ledger.txt"
    register(cli, storage, 12)
    create(cli, "faulty", f"echo %IN >> {ledger}; test -n %DATA%OUT", "--bypass")
    result = run_scheduler(*FAST)
    assert result.returncode == 0, result.stderr
    jobs = jobs_of(cli, "faulty")
    # No attempt charged for the API's faults: a create that failed is put back (the queue held
    # meanwhile), one that hung but went through is adopted on the next try of the same attempt.
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * 12
    seen = ledger_lines(ledger)
    assert set(seen) == {str(storage / "in" / "configs" / f"c{i:04d}.cfg") for i in range(12)}
    assert set(seen.values()) == {1}, seen  # a job that ran twice would show two lines
    assert sim.faults_injected["error"] > 0 and sim.faults_injected["hang"] > 0, sim.faults_injected
    assert_clean(sim)


def test_scheduler_killed_while_pods_run_adopts_them(cli: Cli, storage: Path, tmp_path: Path,
                                                     k8s_env: K8sEnv) -> None:
    sim = k8s_env()
    ledger = tmp_path / "ledger.txt"
    register(cli, storage, 6)
    create(cli, "long", f"sleep 1; echo %IN >> {ledger}; test -n %DATA%OUT", "--bypass")
    first = subprocess.Popen([ORCHESTRA, "scheduler", "run", *FAST], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while sum(p["status"]["phase"] == "Running" for p in sim.pods()) < 6:
            assert time.monotonic() < deadline, sim.pods()
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert len(ledger_lines(ledger)) < 6  # the pods outlive the scheduler: some still run
    result = run_scheduler(*FAST)
    assert result.returncode == 0, result.stderr
    jobs = jobs_of(cli, "long")
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * 6  # adopted, not lost
    seen = ledger_lines(ledger)
    assert len(seen) == 6 and set(seen.values()) == {1}
    assert len(sim.store.creates) == 6
    assert_clean(sim)


def test_forbidden_create_holds_the_queue_with_the_fix_then_recovers(cli: Cli, storage: Path,
                                                                      k8s_env: K8sEnv) -> None:
    """RBAC that forbids creating pods is the cluster's failure, not the jobs': the queue is held
    with the grant to make (as `maestro queue` and the idle line say), nothing is charged, and the
    service keeps running (its other clusters too) until the admin fixes the Role."""
    from tests.e2e.test_holds import hold_row, next_probe_in

    sim = k8s_env()
    sim.deny("create")
    register(cli, storage, 2)
    create(cli, "denied", "echo %DATA %IN %OUT", "--bypass")
    result = run_scheduler(*FAST)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    idle = [line for line in result.stderr.splitlines() if " idle: " in line][-1]
    assert "2 queued job(s) in LPS/cpu, held: kubernetes forbids Orchestra to create pods in namespace orchestra (403" in idle
    assert "grant the verb 'create' on 'pods'" in idle
    ctx = Context.from_env()
    assert hold_row(ctx) is not None
    # The tests' backoff is short: a probe falling due while the CLI is read (slow on a busy
    # machine) would change what `maestro queue` says. Far away while looking, back to now after.
    next_probe_in(ctx, 3600)
    jobs = jobs_of(cli, "denied")
    assert [(j["status"], j["attempts"]) for j in jobs] == [("queued", 0)] * 2
    reasons = [r["reason"] for r in json.loads(cli.ok("maestro queue --json").out)["rows"] if r["state"] == "queued"]
    assert reasons and all("kubernetes forbids Orchestra to create pods" in r for r in reasons), reasons
    sim.allow_all()  # the admin fixes the Role
    next_probe_in(ctx, 0)
    ctx.engine.dispose()
    result = run_scheduler(*FAST)
    assert result.returncode == 0, result.stderr
    jobs = jobs_of(cli, "denied")
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * 2  # uncharged while held
    assert_clean(sim)


def test_pod_failure_reasons_reach_the_jobs(cli: Cli, storage: Path, env: dict[str, str], k8s_env: K8sEnv) -> None:
    sim = k8s_env()
    register(cli, storage, 1)
    common = "--bypass --max-retries 0"
    create(cli, "oom", "echo %DATA %IN %OUT; sleep 5", common, image="alice/oomkill:1")
    create(cli, "evicted", "echo %DATA %IN %OUT; sleep 5", common, image="alice/evictme:1")
    create(cli, "pull", "echo %DATA %IN %OUT", common, image="registry.example/doesnotexist:1")
    create(cli, "exit", "echo %DATA %IN %OUT; exit 4", common)
    ctx = Context.from_env()
    tasks = ("oom", "evicted", "pull", "exit")
    scheduler = cycles_until(ctx, lambda: all(task_status(ctx, f"user.alice.{t}") == "partial" for t in tasks),
                             timeout=30)
    try:
        found = {t: jobs_of(cli, t)[0] for t in tasks}
    finally:
        scheduler.lease.release()
        scheduler.close()
        ctx.engine.dispose()
    assert (found["oom"]["exit_code"], found["oom"]["reason"]) == (137, "OOMKilled")
    assert found["evicted"]["exit_code"] == 137
    assert found["evicted"]["reason"] == "Evicted: The node was low on resource: memory."
    assert found["pull"]["exit_code"] is None
    # The kubelet says ErrImagePull, then ImagePullBackOff between retries: which one the grace ends
    # on depends on how busy the machine is. Either is the image's failure, with its message.
    assert found["pull"]["reason"].startswith(('ImagePullBackOff: Back-off pulling image "registry.example/',
                                               'ErrImagePull: failed to pull and unpack image "registry.example/'))
    assert (found["exit"]["exit_code"], found["exit"]["reason"]) == (4, "exit code 4")
    assert all(j["status"] == "failed" for j in found.values())
    note = cli.ok(f"maestro job logs {found['pull']['id']}").out
    assert "never started: ImagePullBackOff" in note or "never started: ErrImagePull" in note
    assert_clean(sim)


def test_kill_deletes_the_running_pods(cli: Cli, storage: Path, env: dict[str, str], k8s_env: K8sEnv) -> None:
    sim = k8s_env()
    register(cli, storage, 3)
    create(cli, "victim", "echo started; sleep 60; echo %DATA %IN %OUT", "--bypass")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: sum(p["status"]["phase"] == "Running" for p in sim.pods()) == 3)
    try:
        pids = [sim.pid(p["metadata"]["name"]) for p in sim.pods()]
        assert all(pids)
        assert "running jobs stop" in cli.ok("maestro task kill -t user.alice.victim").out
        # Asynchronous: the pods are deleted with their grace; the jobs end killed once they are gone.
        cycles_until(ctx, lambda: set(j["status"] for j in jobs_of(cli, "victim")) == {"killed"}, scheduler=scheduler)
        sim.wait_for(sim.pods()[0]["metadata"]["name"] if sim.pods() else "none", lambda p: p is None, timeout=5)
        deadline = time.monotonic() + 5
        while sim.pods() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.pods() == []
        for pid in pids:
            assert pid is not None
            try:
                os.kill(pid, 0)
                raise AssertionError(f"process {pid} of a killed pod still runs")
            except ProcessLookupError:
                pass
        job = jobs_of(cli, "victim")[0]
        assert cli.ok(f"maestro job logs {job['id']}").out.startswith("started")
    finally:
        scheduler.lease.release()
        scheduler.close()
        ctx.engine.dispose()
    assert_clean(sim)


def test_a_pod_the_cluster_cannot_place_stays_starting_and_says_why(cli: Cli, storage: Path, env: dict[str, str],
                                                                    k8s_env: K8sEnv) -> None:
    sim = k8s_env(node=NodeOptions(capacity={"cpu": "16", "memory": "64Gi"}))  # a node without GPUs
    register(cli, storage, 2)
    create(cli, "gpujob", "echo %DATA %IN %OUT", "--bypass --queue gpu")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: len(sim.pods()) == 2)
    try:
        scheduler.cycle()  # the survey sees them Pending, Unschedulable
        jobs = jobs_of(cli, "gpujob")
        assert {j["status"] for j in jobs} == {"starting"}  # dispatched, holding their slots, not running
        why = cli.ok(f"maestro job why {jobs[0]['id']}").out
        assert "waiting in the cluster: Unschedulable: 0/1 nodes" in why and "nvidia.com/gpu" in why
        queue = json.loads(cli.ok("maestro queue --json").out)
        rows = [r for r in queue["rows"] if r["state"] == "starting"]
        assert [(r["task"], r["pending"]) for r in rows] == [("user.alice.gpujob", 2)]
        assert "Unschedulable" in rows[0]["reason"]
        scheduler.cycle()  # unchanged reasons: nothing to write, still starting
        assert {j["status"] for j in jobs_of(cli, "gpujob")} == {"starting"}
        cli.ok("maestro task kill -t user.alice.gpujob")
        cycles_until(ctx, lambda: {j["status"] for j in jobs_of(cli, "gpujob")} == {"killed"}, scheduler=scheduler)
    finally:
        scheduler.lease.release()
        scheduler.close()
        ctx.engine.dispose()
