#!/usr/bin/env python3
"""Pod-creation throughput of the kubernetes backend against the API simulator (goal: >= 200 pods/s).

What is measured is the API path only: `KubernetesBackend.launch()` building each pod and creating
it through the official kubernetes client, over real HTTP, against tests/k8s_sim. The simulated
node is off (`NodeOptions(enabled=False)`), so no pod process competes for the CPU and every pod
stays Pending, as on a real cluster where the kubelets are other machines.

    python scripts/bench_k8s.py [--pods 2000] [--concurrency 1,8,32] [--latency 0]

`--latency` adds that many seconds to every API call on the server side (a real API server's etcd
round trip is a few milliseconds): with it, the gain from concurrent creates shows.

scripts/bench.py imports `bench_pod_creation` from here.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestra.backends.base import LaunchSpec  # noqa: E402
from orchestra.backends.kubernetes import KubernetesBackend  # noqa: E402
from orchestra.config import ClusterConfig, KubernetesConfig, QueueConfig  # noqa: E402
from orchestra.security.accounts import OwnerAccount  # noqa: E402
from tests.k8s_sim import KubeSim, NodeOptions  # noqa: E402

NAMESPACE = "orchestra"
GOAL = 200.0  # pods/s


def _specs(cluster: ClusterConfig, storage: Path, pods: int) -> list[LaunchSpec]:
    """What the scheduler would hand the backend for `pods` first attempts of one task."""
    queue = cluster.queues["cpu"]
    root = storage / "alice" / "user.alice.bench"
    return [
        LaunchSpec(
            backend_name=f"orc-1-{job}-1", task_id=1, task_name="user.alice.bench", job_id=1 + job, job_index=job,
            attempt=1, user="alice", queue=queue, image="alice/img:1", command=f"echo job {job} > out.txt",
            output_dir=str(root / f"job_{job:06d}"), log_path=str(root / ".attempts" / f"orc-1-{job}-1" / "log"),
            max_time=3600.0, cluster=cluster,
        )
        for job in range(pods)
    ]


def bench_pod_creation(pods: int = 2000, concurrency: int = 32, latency: float = 0.0) -> dict:
    """Create `pods` pods with one `launch()` call (at most `concurrency` creates in flight).

    Returns {"pods", "seconds", "pods_per_s", "concurrency", "latency_s", "errors"}; a fresh
    simulator is started and stopped around the measurement.
    """
    with tempfile.TemporaryDirectory(prefix="bench-k8s-") as tmp:
        storage = Path(tmp)
        cluster = ClusterConfig(
            "LPS", "kubernetes", storage, {"cpu": QueueConfig("cpu", slots=pods, cpu=0.5, memory="256Mi")}, "cpu",
            True, KubernetesConfig(namespace=NAMESPACE, storage_host_path=str(storage),
                                   create_concurrency=concurrency),
        )
        *specs, warm_up = _specs(cluster, storage, pods + 1)
        with KubeSim(namespace=NAMESPACE, node=NodeOptions(enabled=False), latency=latency) as sim:
            # the made-up user "alice" runs as uid/gid 1001 (what [users.alice] uid, gid would say)
            alice = OwnerAccount("alice", 1001, 1001, (1001,), "/")
            backend = KubernetesBackend(cluster, sim.api_client(), accounts=lambda user: alice)
            try:
                backend.launch([warm_up])  # the first connection, lazy imports: not part of the measure
                started = time.perf_counter()
                launched = backend.launch(specs)
                seconds = time.perf_counter() - started
            finally:
                backend.close()
            created = len(sim.pods()) - 1
    errors = sum(1 for result in launched if result.error is not None)
    if created != pods or errors:
        raise RuntimeError(f"bench: {created} of {pods} pods created, {errors} refused")
    return {"pods": pods, "seconds": seconds, "pods_per_s": pods / seconds, "concurrency": concurrency,
            "latency_s": latency, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated create_concurrency values")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of simulated API latency per call")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    print(f"pod creation against the simulator: {args.pods} pods, API latency {args.latency * 1000:g} ms, "
          f"goal >= {GOAL:g} pods/s")
    print("| concurrency | pods | seconds | pods/s | goal |")
    print("|---:|---:|---:|---:|:---|")
    for level in levels:
        r = bench_pod_creation(args.pods, concurrency=level, latency=args.latency)
        verdict = "met" if r["pods_per_s"] >= GOAL else "missed"
        print(f"| {level} | {r['pods']} | {r['seconds']:.2f} | {r['pods_per_s']:,.0f} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
