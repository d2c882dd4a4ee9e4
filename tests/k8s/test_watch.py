"""The pod watch that wakes the scheduler, and the simulator's watch protocol, over real HTTP.

The watch only wakes (the survey decides), so what matters is: a pod's end wakes at once; a 410
(version compacted away) relists and still reports an end it missed; an API restart, 500s or a
refused verb never kill it, and it says "unhealthy" (so the backend polls) until it is back;
`close()` stops it at once; and no thread starts unless the service loop asked for wake-ups.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, watch

from orchestra.backends.base import LaunchSpec, Phase, Tracked
from orchestra.backends.kubernetes import KubernetesBackend, pod_ended
from orchestra.errors import OrchestraError
from tests.k8s.conftest import NAMESPACE, k8s_cluster
from tests.k8s_sim import Faults, KubeSim
from tests.k8s_sim.store import ApiError

Spec = Callable[..., LaunchSpec]
MakeBackend = Callable[..., KubernetesBackend]


class Wakes:
    """A wake-up callback that counts its calls, called from the watch's thread."""

    def __init__(self) -> None:
        self.count = 0
        self.at: list[float] = []
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self.at.append(time.monotonic())
            self._cond.notify_all()

    def wait(self, more_than: int, timeout: float = 10.0) -> int:
        with self._cond:
            assert self._cond.wait_for(lambda: self.count > more_than, timeout), f"no wake-up after {more_than}"
            return self.count


def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def watching(make_backend: MakeBackend, **kwargs: object) -> tuple[KubernetesBackend, Wakes]:
    backend = make_backend(**kwargs)
    wakes = Wakes()
    backend.set_wakeup(wakes)
    return backend, wakes


def gated_pod_under_watch(make_backend: MakeBackend, spec: Spec, tmp_path: Path
                          ) -> tuple[KubernetesBackend, Wakes, Gate, LaunchSpec]:
    """A pod that runs until its gate opens, launched by a backend whose watch is healthy."""
    backend, wakes = watching(make_backend)
    gate = Gate(tmp_path / "gate")
    s = spec(gate.command)
    backend.launch([s])
    until(lambda: backend.watch_healthy, what="the watch")
    return backend, wakes, gate, s


def tracked(*specs: LaunchSpec) -> list[Tracked]:
    return [Tracked(s.backend_name, s.log_path) for s in specs]


class Gate:
    """A pod command that ends when the test says so (`open()`), not when a timer does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.command = f"while [ ! -e {path} ]; do sleep 0.01; done"

    def open(self) -> None:
        self.path.touch()


# ------------------------------------------------------------------------------------ the simulator
def test_sim_watch_speaks_the_protocol(sim: KubeSim, backend: KubernetesBackend, spec: Spec,
                                      tmp_path: Path) -> None:
    api = client.CoreV1Api(backend.api_client)
    gate = Gate(tmp_path / "gate")
    backend.launch([spec(gate.command)])
    start = api.list_namespaced_pod(NAMESPACE).metadata.resource_version
    assert start is not None and int(start) >= 1  # the create, at least
    gate.open()
    sim.wait_phase("orc-7-0-1", "Succeeded")
    # The raw wire: 200, chunked, one JSON event per line, a resourceVersion on every object; the
    # stream ends (terminating chunk) after timeoutSeconds.
    conn = http.client.HTTPConnection(sim.url.removeprefix("http://"), timeout=10)
    began = time.monotonic()
    conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?watch=true&resourceVersion={start}&timeoutSeconds=1",
                 headers={"Authorization": f"Bearer {sim.token}"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    lines = response.read().decode().splitlines()
    assert time.monotonic() - began >= 0.9  # read() returned: the stream ended, and not before its timeout
    conn.close()
    events = [json.loads(line) for line in lines]
    assert events and {e["type"] for e in events} == {"MODIFIED"}  # the changes after `start`, no more
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] == int(start) + 1
    assert events[-1]["object"]["status"]["phase"] == "Succeeded"
    # Through the official client: from "" the current pods come first, as ADDED.
    seen = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        api.list_namespaced_pod, NAMESPACE, timeout_seconds=1)]
    assert seen == [("ADDED", "orc-7-0-1")]
    # A version compacted away is an ERROR event holding a 410 Status; the client raises it.
    sim.store.compact()
    with pytest.raises(client.ApiException) as gone:
        list(watch.Watch().stream(api.list_namespaced_pod, NAMESPACE, resource_version=start, timeout_seconds=1))
    assert gone.value.status == 410 and "too old resource version" in str(gone.value.reason)
    assert sim.count("watch") == 3


def test_sim_bookmark_carries_the_version_at_the_end_of_a_stream(sim: KubeSim, backend: KubernetesBackend,
                                                                 spec: Spec) -> None:
    backend.launch([spec("true")])
    sim.wait_phase("orc-7-0-1", "Succeeded")
    api = client.CoreV1Api(backend.api_client)
    version = sim.store.version
    events = list(watch.Watch(return_type="object").stream(
        api.list_namespaced_pod, NAMESPACE, label_selector="nobody=here", resource_version="1",
        allow_watch_bookmarks=True, timeout_seconds=1))
    assert [e["type"] for e in events] == ["BOOKMARK"]
    assert events[0]["raw_object"]["metadata"]["resourceVersion"] == str(version)


# ------------------------------------------------------------------------------------ waking
def test_a_pod_end_wakes_at_once_without_a_survey(sim: KubeSim, make_backend: MakeBackend, spec: Spec,
                                                 tmp_path: Path) -> None:
    backend, wakes, gate, s = gated_pod_under_watch(make_backend, spec, tmp_path)
    assert backend.poll_after() is None  # a healthy watch: no polling
    lists = sim.count("list")
    assert wakes.count == 0
    gate.open()
    wakes.wait(0)
    assert sim.count("list") == lists  # the watch listed once, before: the wake needed no survey
    survey = backend.survey(tracked(s))
    assert survey.observations[s.backend_name].phase == Phase.SUCCEEDED
    backend.release([s.backend_name])
    sim.wait_for(s.backend_name, lambda p: p is None)
    time.sleep(0.2)
    assert wakes.count == 1  # our own release of an ended pod wakes nobody
    assert backend.poll_after() is None


def test_a_pod_deleted_behind_our_back_wakes(sim: KubeSim, make_backend: MakeBackend, spec: Spec) -> None:
    backend, wakes = watching(make_backend)
    s = spec("sleep 30")
    backend.launch([s])
    sim.wait_phase(s.backend_name, "Running")
    until(lambda: backend.watch_healthy, what="the watch")
    sim.kubelet.delete(NAMESPACE, s.backend_name, 0)
    wakes.wait(0)


def test_pod_ended_matches_what_the_survey_records() -> None:
    def pod(phase: str, waiting: str | None = None) -> dict:
        state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
        return {"status": {"phase": phase, "containerStatuses": [{"name": "main", "state": state}]}}

    assert pod_ended(pod("Succeeded")) and pod_ended(pod("Failed"))
    assert pod_ended(pod("Pending", "InvalidImageName"))  # the survey fails it at once
    assert not pod_ended(pod("Pending", "ImagePullBackOff"))  # only after its grace: the full cycle's job
    assert not pod_ended(pod("Running")) and not pod_ended({})


# ------------------------------------------------------------------------------------ trouble
def test_410_relists_and_reports_the_end_it_missed(sim: KubeSim, make_backend: MakeBackend, spec: Spec,
                                                  tmp_path: Path) -> None:
    backend, wakes, gate, s = gated_pod_under_watch(make_backend, spec, tmp_path)
    sim.api_down()  # the stream is cut; meanwhile the pod ends and the log is compacted
    gate.open()
    sim.wait_phase(s.backend_name, "Succeeded")
    sim.store.compact()
    assert wakes.count == 0
    lists = sim.count("list")
    sim.api_up()
    wakes.wait(0)  # the resumed watch met 410, listed again, and saw the end
    assert sim.count("list") == lists + 1
    until(lambda: backend.watch_healthy, what="the watch again")
    assert backend._watch is not None and backend._watch.streams >= 3  # first, the 410, the new one


def test_api_restart_the_watch_resumes_and_replays(sim: KubeSim, make_backend: MakeBackend, spec: Spec,
                                                   tmp_path: Path) -> None:
    backend, wakes, gate, s = gated_pod_under_watch(make_backend, spec, tmp_path)
    lists = sim.count("list")
    sim.api_down()
    gate.open()
    sim.wait_phase(s.backend_name, "Succeeded")
    until(lambda: not backend.watch_healthy, what="the watch to notice")
    assert backend.poll_after() == 5.0  # a pod is live and the watch is down: poll
    sim.api_up()
    wakes.wait(0)  # resumed from its version: the server replayed the end
    assert sim.count("list") == lists  # no relist was needed
    until(lambda: backend.watch_healthy, what="the watch again")


def test_500s_then_recovery_and_a_long_outage_wakes_once(make_sim: Callable[..., KubeSim], storage: Path,
                                                         make_backend: MakeBackend, spec: Spec,
                                                         tmp_path: Path) -> None:
    # Every watch call fails with 500, three in a row at most: the watch backs off and gets through.
    faulty = make_sim(faults=Faults(rate=1.0, kinds=("error",), verbs=frozenset({("pods", "watch")}),
                                    max_per_key=3))
    cluster = k8s_cluster(storage, poll_seconds=0.2)
    backend, wakes = watching(make_backend, on=faulty, cluster_config=cluster)
    gate = Gate(tmp_path / "gate")
    s = spec(gate.command, cluster_config=cluster)
    backend.launch([s])
    assert backend.poll_after() == 0.2
    until(lambda: backend.watch_healthy, what="the watch through the 500s")
    assert faulty.faults_injected["error"] >= 3
    assert wakes.count <= 1  # down longer than poll_seconds: at most one wake, to start polling
    before = wakes.count
    gate.open()
    wakes.wait(before)  # the end still wakes
    assert faulty.pod(s.backend_name)["status"]["phase"] == "Succeeded"


def test_watch_refused_polls_and_never_dies(sim: KubeSim, storage: Path, make_backend: MakeBackend,
                                            spec: Spec, caplog: pytest.LogCaptureFixture) -> None:
    sim.deny("watch")
    cluster = k8s_cluster(storage, poll_seconds=0.3)
    backend, wakes = watching(make_backend, cluster_config=cluster)
    s = spec("sleep 30", cluster_config=cluster)
    backend.launch([s])
    wakes.wait(0, timeout=5)  # down for poll_seconds: the loop is woken to start polling
    assert backend.poll_after() == 0.3
    time.sleep(0.3)
    assert wakes.count == 1 and backend._watch is not None and backend._watch._thread.is_alive()
    assert "pod watch in namespace orchestra failed (HTTP 403" in caplog.text
    backend.kill(tracked(s))
    sim.wait_for(s.backend_name, lambda p: p is None)
    assert backend.survey(tracked(s)).observations[s.backend_name].phase == Phase.MISSING
    assert backend.poll_after() is None  # nothing live: nothing to poll for


def test_a_server_stuck_on_410_is_not_hammered(sim: KubeSim, make_backend: MakeBackend,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def always_gone(version: int) -> list:
        raise ApiError(410, "Expired", f"too old resource version: {version} ({version + 1})")

    monkeypatch.setattr(sim.store, "events_after", always_gone)
    backend, _ = watching(make_backend)
    began = time.monotonic()
    backend.survey([])
    # The survey's list, then the watch's: list, watch (410 at once: back off), list, watch, ... with
    # the backoff doubling from 0.05 s, jittered down to half: the three pauses before the watch's
    # fourth list take at least 0.025 + 0.05 + 0.1 s, however fast the machine.
    until(lambda: sim.count("list") >= 5, what="the watch's fourth list")
    assert time.monotonic() - began >= 0.175
    assert sim.count("watch") <= sim.count("list")


def test_close_stops_the_watch_at_once(sim: KubeSim, make_backend: MakeBackend, spec: Spec) -> None:
    backend, _ = watching(make_backend, watch_seconds=300)
    backend.survey([])
    until(lambda: backend.watch_healthy, what="the watch")
    thread = backend._watch._thread  # type: ignore[union-attr]
    backend.close()  # joins the thread for at most 2 s, where an uncut read would block for 300 s
    assert not thread.is_alive()


# ------------------------------------------------------------------------------------ when there is no watch
def test_no_thread_without_a_wakeup(sim: KubeSim, backend: KubernetesBackend, spec: Spec) -> None:
    s = spec("sleep 0.2")
    backend.launch([s])  # a CLI command's or `--once`'s backend: nobody to wake
    assert backend._watch is None and backend.poll_after() == 5.0
    time.sleep(0.3)
    assert sim.count("watch") == 0


def test_watch_disabled_in_config_polls(sim: KubeSim, storage: Path, make_backend: MakeBackend, spec: Spec) -> None:
    cluster = k8s_cluster(storage, watch=False, poll_seconds=0.5)
    backend, wakes = watching(make_backend, cluster_config=cluster)
    s = spec("sleep 0.2", cluster_config=cluster)
    assert backend.poll_after() is None  # nothing live yet
    backend.launch([s])
    assert backend.poll_after() == 0.5
    sim.wait_phase(s.backend_name, "Succeeded")
    assert backend.survey(tracked(s)).observations[s.backend_name].phase == Phase.SUCCEEDED
    assert backend.poll_after() is None
    assert backend._watch is None and sim.count("watch") == 0 and wakes.count == 0


@pytest.mark.parametrize("key, value", [("watch", "yes"), ("poll_seconds", 0), ("poll_seconds", "5"),
                                        ("poll_seconds", True), ("poll_seconds", 7200)])
def test_watch_settings_are_validated(sim: KubeSim, storage: Path, key: str, value: object) -> None:
    with pytest.raises(OrchestraError, match=r"kubernetes\.watch must be true or false, and poll_seconds"):
        KubernetesBackend(k8s_cluster(storage, **{key: value}), sim.api_client())
