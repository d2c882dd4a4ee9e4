"""Fixtures of the kubernetes backend tests: a simulated API server + node, clusters and configs for it.

The simulator (tests/k8s_sim) speaks the real pods REST protocol over HTTP on 127.0.0.1, so the
official kubernetes client is exercised for real; its node runs each pod's command as a local
process, and hostPath storage is just the local filesystem (expansion paths are real paths).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra.backends.base import LaunchSpec
from orchestra.backends.kubernetes import KubernetesBackend
from orchestra.config import ClusterConfig, KubernetesConfig, QueueConfig, UserAccountConfig, load_settings
from orchestra.security.accounts import OwnerAccount, owner_account
from tests.k8s_sim import Faults, KubeSim, NodeOptions

NAMESPACE = "orchestra"
# The made-up users of these tests have no OS account: the config gives theirs (README "The pods").
ALICE = UserAccountConfig(uid=1001, gid=1001, groups=(2000,), home="/home/alice")

K8S_CONFIG = """
[scheduler]
scouts = 3
max_retries = 1
poll_interval = 0.1
lease_ttl = 10

[users.alice]
uid = 1001
gid = 1001
groups = [2000]
home = "/home/alice"

[clusters.LPS]
backend = "kubernetes"
storage = "{storage}"
default_queue = "cpu"

[clusters.LPS.queues.cpu]
slots = {slots}
cpu = 0.5
memory = "256Mi"

[clusters.LPS.queues.gpu]
slots = 2
cpu = 1
memory = "1Gi"
gpu = 1

[clusters.LPS.kubernetes]
namespace = "{namespace}"
storage_host_path = "{storage}"
kill_grace_seconds = 1
image_pull_grace_seconds = 1
request_timeout_seconds = {timeout}
retry_backoff_seconds = 0.05
create_concurrency = 8
{kubernetes}
"""


@pytest.fixture
def make_sim() -> Iterator[Callable[..., KubeSim]]:
    """Start simulators (`make_sim(faults=..., node=...)`); all are stopped after the test."""
    sims: list[KubeSim] = []

    def make(**kwargs: Any) -> KubeSim:
        kwargs.setdefault("namespace", NAMESPACE)
        sim = KubeSim(**kwargs).start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., KubeSim]) -> KubeSim:
    return make_sim()


def k8s_cluster(storage: Path, **overrides: Any) -> ClusterConfig:
    """A cluster on the kubernetes backend whose storage is `storage`, mounted by hostPath."""
    queues = {
        "cpu": QueueConfig("cpu", slots=8, cpu=0.5, memory="256Mi"),
        "gpu": QueueConfig("gpu", slots=2, cpu=2, memory="1Gi", gpu=1),
        "huge": QueueConfig("huge", slots=1, cpu=64, memory="1Ti"),
    }
    settings: dict[str, Any] = {"namespace": NAMESPACE, "storage_host_path": str(storage), "kill_grace_seconds": 1,
                                "image_pull_grace_seconds": 1, "create_concurrency": 8}
    settings.update(overrides)
    return ClusterConfig("LPS", "kubernetes", storage, queues, "cpu", True, KubernetesConfig(**settings))


@pytest.fixture
def cluster(storage: Path) -> ClusterConfig:
    return k8s_cluster(storage)


def accounts_of_tests(tmp_path: Path) -> Callable[[str], OwnerAccount]:
    """`owner_account` over settings whose config gives alice an account (and nobody else one)."""
    settings = load_settings({"ORCHESTRA_HOME": str(tmp_path / "home"), "ORCHESTRA_USER": "alice"})
    return functools.partial(owner_account, dataclasses.replace(settings, user_accounts={"alice": ALICE}))


@pytest.fixture
def make_backend(sim: KubeSim, cluster: ClusterConfig, tmp_path: Path) -> Iterator[Callable[..., KubernetesBackend]]:
    """Backends on the official client, talking to `sim` over HTTP (short timeouts and backoff);
    their pods run as the accounts of `accounts_of_tests`."""
    backends: list[KubernetesBackend] = []

    def make(on: KubeSim | None = None, cluster_config: ClusterConfig | None = None, **kwargs: Any) -> KubernetesBackend:
        kwargs.setdefault("backoff", 0.01)
        kwargs.setdefault("request_timeout", 5.0)
        kwargs.setdefault("accounts", accounts_of_tests(tmp_path))
        backend = KubernetesBackend(cluster_config or cluster, (on or sim).api_client(), **kwargs)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[..., KubernetesBackend]) -> KubernetesBackend:
    return make_backend()


@pytest.fixture
def spec(storage: Path, cluster: ClusterConfig) -> Callable[..., LaunchSpec]:
    """`spec(command, job=0, ...)`: the LaunchSpec the scheduler would build for one attempt."""

    def make(command: str = "echo hello", job: int = 0, attempt: int = 1, task: int = 7, queue: str = "cpu",
             image: str = "alice/img:1", max_time: float | None = 600.0, user: str = "alice",
             cluster_config: ClusterConfig | None = None) -> LaunchSpec:
        config = cluster_config or cluster
        name = f"orc-{task}-{job}-{attempt}"
        root = storage / user / "user.alice.tutorial"
        return LaunchSpec(
            backend_name=name, task_id=task, task_name="user.alice.tutorial", job_id=1000 + job, job_index=job,
            attempt=attempt, user=user, queue=config.queues[queue], image=image, command=command,
            output_dir=str(root / f"job_{job:06d}"), log_path=str(root / ".attempts" / name / "log"),
            max_time=max_time, cluster=config,
        )

    return make


@pytest.fixture
def k8s_env(env: dict[str, str], make_sim: Callable[..., KubeSim], storage: Path,
            monkeypatch: pytest.MonkeyPatch) -> Callable[..., KubeSim]:
    """`k8s_env(faults=..., timeout=..., slots=..., kubernetes=...)`: cluster LPS on the kubernetes
    backend (`slots` in its cpu queue, `kubernetes`: more lines of its kubernetes table), against a
    fresh simulator found through KUBECONFIG (so a scheduler subprocess finds it too); returns the sim."""

    def make(faults: Faults | None = None, node: NodeOptions | None = None, timeout: float = 5.0, slots: int = 8,
             kubernetes: str = "") -> KubeSim:
        sim = make_sim(faults=faults, node=node)
        Path(env["ORCHESTRA_CONFIG"]).write_text(K8S_CONFIG.format(
            storage=storage, namespace=NAMESPACE, timeout=timeout, slots=slots, kubernetes=kubernetes))
        monkeypatch.setenv("KUBECONFIG", str(sim.kubeconfig_path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return sim

    return make
