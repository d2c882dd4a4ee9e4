"""The kubernetes backend through the official client, over real HTTP, against the simulator."""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestra.backends.base import LaunchSpec, Phase, Tracked
from orchestra.backends.kubernetes import (
    MANAGED_BY, RBAC_RULES, KubernetesBackend, KubernetesUnavailable, connect, cpu_quantity, label_value,
)
from orchestra.backends.registry import make_backend as registry_backend
from orchestra.config import ClusterConfig
from orchestra.errors import OrchestraError
from tests.k8s.conftest import NAMESPACE, k8s_cluster
from tests.k8s_sim import Faults, KubeSim, NodeOptions

Spec = Callable[..., LaunchSpec]
MakeBackend = Callable[..., KubernetesBackend]


def tracked(*specs: LaunchSpec) -> list[Tracked]:
    return [Tracked(s.backend_name, s.log_path) for s in specs]


def wait_phase(backend: KubernetesBackend, specs: list[LaunchSpec], *phases: Phase, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Survey until every spec's attempt is in one of `phases`; return the last survey."""
    deadline = time.monotonic() + timeout
    while True:
        survey = backend.survey(tracked(*specs))
        if all(survey.observations[s.backend_name].phase in phases for s in specs):
            return survey
        assert time.monotonic() < deadline, survey
        time.sleep(0.05)


# ------------------------------------------------------------------------------------ the pod spec
def test_pod_spec_sent_to_the_api(sim: KubeSim, backend: KubernetesBackend, spec: Spec, storage: Path) -> None:
    s = spec("echo %s > out.txt" % "hi", job=3, queue="gpu", max_time=90.5)
    [launched] = backend.launch([s])
    assert launched.error is None
    pod = sim.sent(s.backend_name)
    assert pod is not None
    meta, pspec = pod["metadata"], pod["spec"]
    assert meta["name"] == "orc-7-3-1" and meta["namespace"] == NAMESPACE
    assert meta["labels"] == {
        MANAGED_BY: "orchestra", "orchestra/cluster": "LPS", "orchestra/task": "7", "orchestra/job": "3",
        "orchestra/attempt": "1", "orchestra/user": "alice", "orchestra/queue": "gpu",
    }
    assert "nodeName" not in pspec  # placement is the kube-scheduler's job, never ours
    assert pspec["restartPolicy"] == "Never"
    assert pspec["activeDeadlineSeconds"] == 91
    assert pspec["terminationGracePeriodSeconds"] == 1
    assert pspec["automountServiceAccountToken"] is False and "serviceAccountName" not in pspec
    [container] = pspec["containers"]
    assert container["image"] == "alice/img:1"
    assert container["command"][:2] == ["/bin/sh", "-c"] and "echo hi > out.txt" in container["command"][2]
    wanted = {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}
    assert container["resources"] == {"requests": wanted, "limits": wanted}
    assert container["volumeMounts"] == [{"name": "storage", "mountPath": str(storage)}]
    assert pspec["volumes"] == [{"name": "storage", "hostPath": {"path": str(storage), "type": "Directory"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "ORCHESTRA_TASK": "user.alice.tutorial", "ORCHESTRA_TASK_ID": "7", "ORCHESTRA_JOB": "3",
        "ORCHESTRA_JOB_ID": "1003", "ORCHESTRA_ATTEMPT": "1", "ORCHESTRA_USER": "alice", "ORCHESTRA_QUEUE": "gpu",
        "ORCHESTRA_CLUSTER": "LPS", "ORCHESTRA_OUTPUT": s.output_dir,
    }
    # The command really ran in its output directory, on the shared storage.
    wait_phase(backend, [s], Phase.SUCCEEDED)
    assert (Path(s.output_dir) / "out.txt").read_text() == "hi\n"


def test_pod_spec_options_from_config(sim: KubeSim, make_backend: MakeBackend, spec: Spec, storage: Path) -> None:
    cluster = k8s_cluster(
        storage, storage_host_path=None, storage_pvc="shared-data", node_selector={"pool": "batch"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        image_pull_secrets=["regcred"], service_account="jobs", priority_class="batch-low",
    )
    backend = make_backend(cluster_config=cluster)
    s = spec(cluster_config=cluster, max_time=None)
    assert backend.launch([s])[0].error is None
    pspec = sim.sent(s.backend_name)["spec"]  # type: ignore[index]
    assert pspec["volumes"] == [{"name": "storage", "persistentVolumeClaim": {"claimName": "shared-data"}}]
    assert pspec["nodeSelector"] == {"pool": "batch"}
    assert pspec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pspec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pspec["serviceAccountName"] == "jobs" and "automountServiceAccountToken" not in pspec
    assert pspec["priorityClassName"] == "batch-low"
    assert "activeDeadlineSeconds" not in pspec and "nodeName" not in pspec
    assert pspec["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}


def test_names_and_label_values_are_valid() -> None:
    assert cpu_quantity(1.0) == "1" and cpu_quantity(0.25) == "250m" and cpu_quantity(2.5) == "2500m"
    assert label_value("alice") == "alice"
    odd = label_value("Alice Smith@lab/" + "x" * 80)
    assert len(odd) <= 63 and odd[0].isalnum() and odd[-1].isalnum()
    assert label_value("a@b") != label_value("a#b")  # cleaned values keep a hash of the original


def test_bad_names_and_specs_are_refused_without_a_call(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    too_long = dataclasses.replace(spec(), backend_name="orc-" + "1" * 60)
    upper = dataclasses.replace(spec(job=1), backend_name="Orc-7-1-1")
    no_image = spec(job=2, image=" ")
    results = backend.launch([too_long, upper, no_image])
    assert "at most 63" in (results[0].error or "") and "invalid pod name" in (results[1].error or "")
    assert "no container image" in (results[2].error or "")
    assert sim.count("create") == 0


def test_config_errors_are_one_line(sim: KubeSim, storage: Path) -> None:
    for overrides, words in [
        ({"storage_host_path": None}, "exactly one of storage_pvc"),
        ({"storage_pvc": "pvc"}, "exactly one of storage_pvc"),
        ({"namespace": "Bad_NS"}, "not a valid namespace"),
        ({"tolerations": [{"key": "a", "bogus": 1}]}, "tolerations"),
        ({"request_timeout_seconds": 0}, "request_timeout_seconds"),
    ]:
        with pytest.raises(OrchestraError, match=words):
            KubernetesBackend(k8s_cluster(storage, **overrides), sim.api_client())


# ------------------------------------------------------------------------------------ connection
def test_connect_uses_kubeconfig_and_its_context(sim: KubeSim, tmp_path: Path, storage: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(sim.kubeconfig_path))
    api = connect(k8s_cluster(storage))
    assert api.configuration.host == sim.url and api.configuration.retries is False
    api.close()
    # A second context pointing elsewhere: selected by the config's `context`.
    import json

    config = json.loads(sim.kubeconfig_path.read_text())
    config["clusters"].append({"name": "other", "cluster": {"server": "http://127.0.0.1:9"}})
    config["contexts"].append({"name": "other", "context": {"cluster": "other", "user": "sim"}})
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    api = connect(k8s_cluster(storage, context="other"))
    assert api.configuration.host == "http://127.0.0.1:9"
    api.close()
    with pytest.raises(OrchestraError, match="cannot use kubeconfig"):
        connect(k8s_cluster(storage, context="nope"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(OrchestraError, match="set KUBECONFIG"):
        connect(k8s_cluster(storage))


def test_connect_in_cluster_uses_the_service_account(tmp_path: Path, storage: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    with pytest.raises(OrchestraError, match="service account"):
        connect(k8s_cluster(storage))
    token.write_text("in-cluster-token")
    ca.write_text("not checked until a call is made")
    api = connect(k8s_cluster(storage))
    assert api.configuration.host == "https://10.0.0.1:443"
    assert api.configuration.api_key["BearerToken"] == "bearer in-cluster-token"
    assert api.configuration.refresh_api_key_hook is not None  # a rotated token is read again
    api.close()


def test_registry_makes_a_kubernetes_backend_from_kubeconfig(sim: KubeSim, storage: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(sim.kubeconfig_path))
    backend = registry_backend(k8s_cluster(storage))
    try:
        assert backend.name == "kubernetes"
        assert backend.survey([]).observations == {}
        assert sim.count("list") == 1
    finally:
        backend.close()


# ------------------------------------------------------------------------------------ survey
def test_survey_is_one_list_call_and_saves_logs(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    specs = [spec(f'echo "line of job {i}"; echo "$ORCHESTRA_JOB $ORCHESTRA_USER" >&2; exit {i % 2 * 3}', job=i)
             for i in range(6)]
    assert all(l.error is None for l in backend.launch(specs))
    sim.reset_counters()
    survey = wait_phase(backend, specs, Phase.SUCCEEDED, Phase.FAILED)
    lists = sim.count("list")
    assert sim.count("get", "pods/log") == 6 and sim.count("get") == 0
    assert lists >= 1
    for i, s in enumerate(specs):
        seen = survey.observations[s.backend_name]
        if i % 2:
            assert (seen.phase, seen.exit_code, seen.reason) == (Phase.FAILED, 3, "exit code 3")
        else:
            assert (seen.phase, seen.exit_code, seen.reason) == (Phase.SUCCEEDED, 0, None)
        assert seen.host == "sim-node" and seen.ended_at is not None
        assert Path(s.log_path).read_text() == f"line of job {i}\n{i} alice\n"
    # One more survey: one more list, whatever the number of pods.
    sim.reset_counters()
    backend.survey(tracked(*specs))
    assert sim.count("list") == 1
    backend.release([s.backend_name for s in specs])
    assert sim.pods() == []


def test_vanished_pod_is_missing_and_unknown_pods_are_strangers(sim: KubeSim, backend: KubernetesBackend,
                                                                 spec: Spec) -> None:
    ours, stranger = spec("sleep 30", job=0), spec("sleep 30", job=1)
    backend.launch([ours, stranger])
    sim.store.remove(NAMESPACE, ours.backend_name)  # gone behind our back (e.g. a node lost, an admin)
    gone = spec(job=2)
    survey = backend.survey(tracked(ours, gone))
    assert survey.observations[ours.backend_name].phase == Phase.MISSING
    assert survey.observations[gone.backend_name].phase == Phase.MISSING
    assert survey.strangers == [stranger.backend_name]
    backend.release(survey.strangers + [gone.backend_name])  # a 404 is fine
    sim.wait_for(stranger.backend_name, lambda p: p is None)


def test_pods_of_other_managers_are_invisible(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    sim.store.create(NAMESPACE, {"metadata": {"name": "someone-else", "labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "c", "image": "nginx", "command": ["sleep", "30"]}]}})
    assert backend.survey([]).strangers == []


def test_pending_reasons_image_pull_and_unschedulable(sim: KubeSim, make_backend: MakeBackend, spec: Spec,
                                                      storage: Path) -> None:
    patient = make_backend(cluster_config=k8s_cluster(storage, image_pull_grace_seconds=3600))
    pull = spec(job=0, image="registry.example/doesnotexist:1")
    huge = spec(job=1, queue="huge")
    patient.launch([pull, huge])
    sim.wait_for(pull.backend_name, lambda p: "ImagePullBackOff" in str(p and p["status"]))
    survey = patient.survey(tracked(pull, huge))
    assert survey.observations[pull.backend_name].phase == Phase.PENDING
    assert survey.observations[pull.backend_name].reason == "ImagePullBackOff"
    unschedulable = survey.observations[huge.backend_name]
    assert unschedulable.phase == Phase.PENDING
    assert unschedulable.reason is not None and unschedulable.reason.startswith("Unschedulable: 0/1 nodes")
    assert "Insufficient cpu" in unschedulable.reason
    # Past the grace, an image that does not pull fails the attempt, with the reason and a log note.
    strict = make_backend(cluster_config=k8s_cluster(storage, image_pull_grace_seconds=0))
    seen = strict.survey(tracked(pull)).observations[pull.backend_name]
    assert seen.phase == Phase.FAILED and seen.exit_code is None
    assert seen.reason is not None and seen.reason.startswith("ImagePullBackOff: Back-off pulling image")
    assert "never started: ImagePullBackOff" in Path(pull.log_path).read_text()


def test_oom_evicted_and_deadline_reasons(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    oom = spec("echo start; sleep 30", job=0)
    evicted = spec("echo start; sleep 30", job=1)
    deadline = spec("sleep 30", job=2, max_time=1)
    backend.launch([oom, evicted, deadline])
    for s in (oom, evicted):
        sim.wait_for(s.backend_name, lambda p: bool(p and p["status"]["phase"] == "Running"
                                                    and "start" in _log(sim, s.backend_name)))
    sim.oom_kill(oom.backend_name)
    sim.evict(evicted.backend_name)
    survey = wait_phase(backend, [oom, evicted, deadline], Phase.FAILED)
    seen = survey.observations
    assert (seen[oom.backend_name].exit_code, seen[oom.backend_name].reason) == (137, "OOMKilled")
    assert seen[evicted.backend_name].exit_code == 137
    assert seen[evicted.backend_name].reason == "Evicted: The node was low on resource: memory."
    assert seen[deadline.backend_name].reason is not None
    assert seen[deadline.backend_name].reason.startswith("DeadlineExceeded")
    assert Path(oom.log_path).read_text() == "start\n"


def _log(sim: KubeSim, name: str) -> str:
    path = sim.kubelet.log_of(NAMESPACE, name)
    return path.read_text() if path else ""


# ------------------------------------------------------------------------------------ kill and release
def test_kill_saves_the_log_and_deletes_with_grace(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    s = spec("trap 'echo got TERM; exit 143' TERM; echo started; while :; do sleep 0.05; done")
    backend.launch([s])
    sim.wait_for(s.backend_name, lambda p: "started" in _log(sim, s.backend_name))
    pid = sim.pid(s.backend_name)
    assert pid is not None
    backend.kill(tracked(s))
    sim.wait_for(s.backend_name, lambda p: p is None, timeout=5)
    assert Path(s.log_path).read_text().startswith("started")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    backend.kill(tracked(s))  # killing a gone pod is a no-op
    backend.release([s.backend_name])


def test_kill_grace_is_the_configured_one(sim: KubeSim, make_backend: MakeBackend, spec: Spec,
                                          storage: Path) -> None:
    slow = make_backend(cluster_config=k8s_cluster(storage, kill_grace_seconds=60))
    s = spec("trap '' TERM; echo started; while :; do sleep 0.05; done")  # ignores SIGTERM
    slow.launch([s])
    sim.wait_for(s.backend_name, lambda p: "started" in _log(sim, s.backend_name))
    slow.kill(tracked(s))
    pod = sim.pod(s.backend_name)
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == 60
    assert slow.survey([]).strangers == []  # a terminating pod is not a stranger to remove again
    fast = make_backend(cluster_config=k8s_cluster(storage, kill_grace_seconds=0))
    fast.release([s.backend_name])
    sim.wait_for(s.backend_name, lambda p: p is None, timeout=5)


# ------------------------------------------------------------------------------------ faults
def test_409_adopts_our_pod_and_refuses_a_foreign_one(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    s = spec("sleep 30")
    first = backend.launch([s])[0]
    again = backend.launch([s])[0]  # e.g. a scheduler restarted between create and its record
    assert first.error is None and again.error is None and again.started_at is not None
    assert sim.creates(s.backend_name) == 1 and sim.count("create") == 2 and sim.count("get") == 1
    other = spec("sleep 30", job=5)
    sim.store.create(NAMESPACE, {"metadata": {"name": other.backend_name, "labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "c", "image": "nginx", "command": ["sleep", "30"]}]}})
    [refused] = backend.launch([other])
    assert refused.error is not None and "is not this attempt's" in refused.error


def test_a_terminating_pod_of_ours_is_waited_for_not_adopted(sim: KubeSim, make_backend: MakeBackend, spec: Spec,
                                                              storage: Path) -> None:
    # An uncertain create the scheduler released, relaunched while the old pod still terminates:
    # adopting it would report a run that is being deleted. The launch is the cluster's to retry.
    slow = make_backend(cluster_config=k8s_cluster(storage, kill_grace_seconds=60))
    s = spec("trap '' TERM; echo started; while :; do sleep 0.05; done")
    slow.launch([s])
    sim.wait_for(s.backend_name, lambda p: "started" in _log(sim, s.backend_name))
    slow.release([s.backend_name])
    sim.wait_for(s.backend_name, lambda p: p is not None and p["metadata"].get("deletionTimestamp") is not None)
    [again] = slow.launch([s])
    assert again.infra and again.error is not None and "still terminating" in again.error
    assert sim.creates(s.backend_name) == 1
    fast = make_backend(cluster_config=k8s_cluster(storage, kill_grace_seconds=0))
    fast.release([s.backend_name])
    sim.wait_for(s.backend_name, lambda p: p is None, timeout=5)


@pytest.mark.parametrize("kind", ["error", "hang", "drop", "gateway"])
def test_transient_faults_are_retried_never_duplicated(make_sim: Callable[..., KubeSim], make_backend: MakeBackend,
                                                       spec: Spec, kind: str) -> None:
    # Every call fails twice in a row before it gets through; "hang" outlasts the client's timeout.
    faulty = make_sim(faults=Faults(rate=1.0, kinds=(kind,), max_per_key=2, hang_seconds=1.0))
    backend = make_backend(on=faulty, request_timeout=0.3)
    specs = [spec("echo once", job=i) for i in range(3)]
    launched = backend.launch(specs)
    assert [l.error for l in launched] == [None] * 3
    assert all(faulty.creates(s.backend_name) == 1 for s in specs)
    wait_phase(backend, specs, Phase.SUCCEEDED)
    assert all(Path(s.log_path).read_text() == "once\n" for s in specs)
    backend.release([s.backend_name for s in specs])
    assert faulty.pods() == []
    assert faulty.faults_injected[kind] > 0


def test_a_dead_api_is_reported_not_guessed(make_sim: Callable[..., KubeSim], make_backend: MakeBackend,
                                            spec: Spec, storage: Path) -> None:
    dead = make_sim(faults=Faults(rate=1.0, kinds=("error",), max_per_key=1000))
    backend = make_backend(on=dead, tries=3, cluster_config=k8s_cluster(storage, create_concurrency=1))
    specs = [spec(job=i) for i in range(4)]
    launched = backend.launch(specs)
    # The cluster's failure, not the jobs': each comes back `infra` (the scheduler queues it again
    # uncharged and holds the queue), with the reason; none is "started" to be found lost later.
    assert [l.infra for l in launched] == [True] * 4 and dead.pods() == []
    assert all(l.error and "create pods in namespace orchestra failed 3 times" in l.error for l in launched)
    assert [l.final for l in launched] == [False] * 4
    assert dead.count("create") == 3  # once the API proved unavailable, the rest were not tried
    with pytest.raises(KubernetesUnavailable, match="list pods in namespace orchestra failed 3 times"):
        backend.survey(tracked(*specs))
    backend.release([s.backend_name for s in specs])  # logged, left to a later cycle


@pytest.mark.parametrize("kind", ["hang", "drop", "gateway"])
def test_a_create_that_may_have_happened_is_left_to_the_survey(make_sim: Callable[..., KubeSim],
                                                               make_backend: MakeBackend, spec: Spec,
                                                               kind: str) -> None:
    # Every call is carried out but its answer is lost: putting the job back could start it twice,
    # so the launch counts as started and the survey finds the pod (adopted, not lost).
    lossy = make_sim(faults=Faults(rate=1.0, kinds=(kind,), max_per_key=1000, hang_seconds=0.5))
    backend = make_backend(on=lossy, tries=2, request_timeout=0.2)
    s = spec("echo once")
    [launched] = backend.launch([s])
    assert launched.error is None and not launched.infra
    assert lossy.creates(s.backend_name) == 1  # the second try met the first one's pod (409) and lost the read
    lossy.faults.rate = 0.0
    wait_phase(backend, [s], Phase.SUCCEEDED)
    assert Path(s.log_path).read_text() == "once\n"
    backend.release([s.backend_name])


@pytest.mark.parametrize(("verb", "resource", "code"), [
    ("create", "pods", 403), ("list", "pods", 403), ("get", "pods/log", 403), ("delete", "pods", 403),
    ("list", "pods", 401),
])
def test_denials_name_the_missing_permission(sim: KubeSim, backend: KubernetesBackend, spec: Spec,
                                             verb: str, resource: str, code: int) -> None:
    s = spec()
    if verb != "create":
        backend.launch([s])
        sim.wait_phase(s.backend_name, "Succeeded")
    sim.deny(verb, resource, code)
    calls = {
        "create": lambda: backend.launch([spec(job=1)]),
        "list": lambda: backend.survey(tracked(s)),
        "get": lambda: backend.survey(tracked(s)),
        "delete": lambda: backend.kill(tracked(s)),
    }
    if verb == "delete":
        sim.allow_all()
        sim.deny("delete", "pods", code)
        backend._save_log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    if verb == "create":  # the queue is held with the message (scheduler/holds.py), the job put back
        [launched] = calls[verb]()
        assert launched.infra and launched.error
        message = launched.error
    else:
        with pytest.raises(OrchestraError) as caught:
            calls[verb]()
        message = str(caught.value)
    if code == 401:
        assert "401 Unauthorized" in message and "credentials" in message
    else:
        assert f"forbids Orchestra to {verb} {resource} in namespace {NAMESPACE}" in message
        assert f"grant the verb '{verb}' on '{resource}'" in message
    assert "\n" not in message


def test_rbac_rules_cover_every_call_of_the_backend(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    s, sleeper = spec("echo x"), spec("sleep 30", job=1)
    backend.set_wakeup(lambda: None)  # as the service loop does: the watch starts with the launch
    backend.launch([s, sleeper])
    backend.launch([s])  # 409: adopt (get)
    wait_phase(backend, [s], Phase.SUCCEEDED)  # list, log
    backend.kill(tracked(sleeper))  # log, delete
    backend.release([s.backend_name])  # delete
    deadline = time.monotonic() + 10
    while not backend.watch_healthy:  # watch
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sim.verbs_seen == set(RBAC_RULES)


# ------------------------------------------------------------------------------------ throughput
def test_launch_is_concurrent_and_bounded(make_sim: Callable[..., KubeSim], make_backend: MakeBackend,
                                          spec: Spec, storage: Path) -> None:
    """8 create threads: the simulator holds each call until 8 are in it at once (counted, not
    timed), and with 20 ms of latency a ninth thread would have shown as a ninth call in flight."""
    slow = make_sim(node=NodeOptions(enabled=False), latency=0.02, gate=8)
    backend = make_backend(on=slow, cluster_config=k8s_cluster(storage, create_concurrency=8))
    specs = [spec(job=i) for i in range(80)]
    launched = backend.launch(specs)
    assert [l.backend_name for l in launched] == [s.backend_name for s in specs]
    assert all(l.error is None for l in launched) and len(slow.pods()) == 80
    assert slow.max_in_flight == 8, f"{slow.max_in_flight} calls at once, with create_concurrency=8"


def test_the_gate_counts_a_serial_client_as_one(make_sim: Callable[..., KubeSim], make_backend: MakeBackend,
                                                spec: Spec, storage: Path) -> None:
    """The counter the test above relies on: one create thread is one call in flight."""
    slow = make_sim(node=NodeOptions(enabled=False), latency=0.005)
    backend = make_backend(on=slow, cluster_config=k8s_cluster(storage, create_concurrency=1))
    launched = backend.launch([spec(job=i) for i in range(5)])
    assert all(l.error is None for l in launched) and slow.max_in_flight == 1


def test_cluster_config_defaults_are_backward_compatible(storage: Path) -> None:
    cluster = ClusterConfig("X", "kubernetes", storage, {}, "cpu", True)
    assert cluster.kubernetes.request_timeout_seconds == 30.0 and cluster.kubernetes.create_concurrency == 32
