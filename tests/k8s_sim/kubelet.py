"""The simulator's scheduler + kubelet: one node that runs each pod's container as a local process.

The image is ignored: `command` + `args` run directly on this machine in their own process group,
with the pod's env vars, stdout and stderr going to the pod log. Pod status moves as a real kubelet
moves it (Pending -> Running -> Succeeded/Failed) so a backend's phase mapping is exercised for real:
scheduling against a node capacity (Unschedulable), image pull failures (ErrImagePull then
ImagePullBackOff), OOMKilled, evictions, activeDeadlineSeconds and graceful deletion.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.k8s_sim.store import Pod, PodStore, parse_quantity, pod_requests, rfc3339

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class NodeOptions:
    """What the one simulated node offers and how it misbehaves."""

    name: str = "sim-node"
    capacity: dict[str, str] = field(default_factory=lambda: {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"})
    labels: dict[str, str] | None = None  # None: every nodeSelector matches
    pull_fail_marker: str = "doesnotexist"  # an image containing it never pulls
    oom_marker: str = "oomkill"  # an image containing it is OOM-killed as soon as it runs
    evict_marker: str = "evictme"  # an image containing it is evicted as soon as it runs
    tick: float = 0.01
    enabled: bool = True  # False: no node at all; pods stay Pending, unbound (to benchmark the API alone)


@dataclass
class Container:
    """A running (or finished) container process of one pod."""

    proc: subprocess.Popen[bytes] | None
    log: Path
    forced: str | None = None  # "OOMKilled", "DeadlineExceeded", "Evicted": why we killed it
    message: str | None = None
    kill_at: float | None = None  # graceful deletion: SIGKILL at this time
    pull_attempts: int = 0
    started: float = 0.0  # when the kubelet took the pod on: activeDeadlineSeconds counts from here


def _signal_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Kubelet:
    """Drives every pod of the store through its lifecycle, one tick at a time, on a thread."""

    def __init__(self, store: PodStore, options: NodeOptions, workdir: Path) -> None:
        self.store = store
        self.options = options
        self.workdir = workdir
        self.containers: dict[tuple[str, str], Container] = {}
        self.capacity = {k: parse_quantity(v) for k, v in options.capacity.items()}
        self._request_cache: dict[str, dict[str, float]] = {}
        self._used: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k8s-sim-kubelet", daemon=True)

    # ----------------------------------------------------------------- lifecycle of the thread
    def start(self) -> None:
        if self.options.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self.store.lock:
            for container in self.containers.values():
                _signal_group(container.proc, signal.SIGKILL)
            for container in self.containers.values():
                if container.proc is not None:
                    container.proc.wait()

    def _run(self) -> None:
        while not self._stop.wait(self.options.tick):
            self.sync()

    def sync(self) -> None:
        """One pass over every pod (also callable from tests for a deterministic step)."""
        with self.store.lock:
            self._used = self._allocated()
            for key in self.store.snapshot():
                self._sync_pod(key)

    # ----------------------------------------------------------------- API-server hooks
    def delete(self, namespace: str, name: str, grace: int) -> Pod:
        """Graceful deletion: SIGTERM now, SIGKILL after `grace`; the object goes when the process does."""
        now = self.store.clock()
        with self.store.lock:
            pod = self.store.get(namespace, name)
            container = self.containers.get((namespace, name))
            running = container is not None and container.proc is not None and container.proc.poll() is None
            if grace <= 0 or not running:
                if container is not None:
                    _signal_group(container.proc, signal.SIGKILL)
                pod["metadata"]["deletionTimestamp"] = rfc3339(now)
                pod["metadata"]["deletionGracePeriodSeconds"] = 0
                self._forget(namespace, name)
                return pod

            def mark(p: Pod) -> None:
                p["metadata"]["deletionTimestamp"] = rfc3339(now + grace)
                p["metadata"]["deletionGracePeriodSeconds"] = grace

            assert container is not None
            if container.kill_at is not None and container.kill_at <= now + grace:
                return pod  # already terminating sooner: a repeated delete only ever shortens the grace
            if container.kill_at is None:
                _signal_group(container.proc, signal.SIGTERM)
            container.kill_at = now + grace
            return self.store.update(namespace, name, mark) or pod

    def oom_kill(self, namespace: str, name: str) -> None:
        self._force(namespace, name, "OOMKilled", None)

    def evict(self, namespace: str, name: str, message: str) -> None:
        self._force(namespace, name, "Evicted", message)

    def _force(self, namespace: str, name: str, why: str, message: str | None) -> None:
        with self.store.lock:
            container = self.containers.get((namespace, name))
            if container is None or container.proc is None:
                raise KeyError(f"pod {namespace}/{name} has no running container")
            container.forced, container.message = why, message
            _signal_group(container.proc, signal.SIGKILL)

    def log_of(self, namespace: str, name: str) -> Path | None:
        container = self.containers.get((namespace, name))
        return container.log if container is not None and container.proc is not None else None

    def pid_of(self, namespace: str, name: str) -> int | None:
        container = self.containers.get((namespace, name))
        return container.proc.pid if container is not None and container.proc is not None else None

    # ----------------------------------------------------------------- one pod, one step
    def _forget(self, namespace: str, name: str) -> None:
        container = self.containers.pop((namespace, name), None)
        if container is not None and container.proc is not None:
            container.proc.wait()
        pod = self.store.remove(namespace, name)
        if pod is not None:
            self._request_cache.pop(pod["metadata"]["uid"], None)

    def _sync_pod(self, key: tuple[str, str]) -> None:
        namespace, name = key
        pod = self.store.pods.get(key)
        if pod is None:
            return
        container = self.containers.get(key)
        now = self.store.clock()
        if pod["metadata"].get("deletionTimestamp"):
            if container is not None and container.kill_at is not None and now >= container.kill_at:
                _signal_group(container.proc, signal.SIGKILL)
            if container is None or container.proc is None or container.proc.poll() is not None:
                self._forget(namespace, name)
            return
        phase = pod["status"]["phase"]
        if phase in ("Succeeded", "Failed"):
            return
        if not pod["spec"].get("nodeName"):
            self._schedule(namespace, name, pod)
            return
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if deadline and container is not None and now - container.started >= deadline:
            if container is not None and container.proc is not None and container.proc.poll() is None:
                container.forced = "DeadlineExceeded"
                _signal_group(container.proc, signal.SIGKILL)
                container.proc.wait()
            self._finish(namespace, name, container, deadline_exceeded=True)
            return
        if container is None:
            self._start(namespace, name, pod)
        elif container.proc is None:
            self._pull_backoff(namespace, name, pod, container)
        elif container.proc.poll() is not None:
            self._finish(namespace, name, container)

    def _requests(self, pod: Pod) -> dict[str, float]:
        """The pod's resource requests, parsed once per pod (a pod's spec does not change)."""
        uid = pod["metadata"]["uid"]
        cached = self._request_cache.get(uid)
        if cached is None:
            cached = self._request_cache[uid] = pod_requests(pod)
        return cached

    def _allocated(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for pod in self.store.pods.values():
            if pod["spec"].get("nodeName") and pod["status"]["phase"] not in ("Succeeded", "Failed"):
                for res, amount in self._requests(pod).items():
                    used[res] = used.get(res, 0.0) + amount
        return used

    def _schedule(self, namespace: str, name: str, pod: Pod) -> None:
        """Bind to the node if the requests fit what is free, else say Unschedulable (and retry next tick)."""
        used = self._used
        wanted = self._requests(pod)
        short = sorted(res for res, amount in wanted.items()
                       if amount > self.capacity.get(res, 0.0) - used.get(res, 0.0))
        selector = pod["spec"].get("nodeSelector") or {}
        labels = self.options.labels
        mismatch = labels is not None and any(labels.get(k) != v for k, v in selector.items())
        now = rfc3339(self.store.clock())
        if short or mismatch:
            why = "1 node(s) didn't match Pod's node affinity/selector" if mismatch else \
                "1 " + ", 1 ".join(f"Insufficient {res}" for res in short)
            message = f"0/1 nodes are available: {why}. preemption: 0/1 nodes are available."
            conditions = pod["status"].get("conditions") or []
            if conditions and conditions[0].get("message") == message:
                return

            def unschedulable(p: Pod) -> None:
                p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": message, "lastTransitionTime": now}]
            self.store.update(namespace, name, unschedulable)
            return

        def bind(p: Pod) -> None:
            p["spec"]["nodeName"] = self.options.name
            p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]
        self.store.update(namespace, name, bind)
        for res, amount in wanted.items():
            used[res] = used.get(res, 0.0) + amount

    def _start(self, namespace: str, name: str, pod: Pod) -> None:
        spec = pod["spec"]
        main = spec["containers"][0]
        now = self.store.clock()
        log = self.workdir / "logs" / f"{namespace}_{name}_{pod['metadata']['uid']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()

        def started(p: Pod) -> None:
            p["status"].update(startTime=rfc3339(now), hostIP="127.0.0.1", podIP="127.0.0.1")

        if self.options.pull_fail_marker in main["image"]:
            container = Container(proc=None, log=log, started=now)
            self.containers[(namespace, name)] = container
            self.store.update(namespace, name, started)
            self._pull_backoff(namespace, name, pod, container)
            return
        env = {"PATH": CONTAINER_PATH, "HOSTNAME": name, "HOME": "/root"}
        for item in main.get("env") or []:
            env[item["name"]] = str(item.get("value", ""))
        argv = list(main.get("command") or []) + list(main.get("args") or [])
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=main.get("workingDir") or str(self.workdir))
        container = Container(proc=proc, log=log, started=now)
        self.containers[(namespace, name)] = container

        def running(p: Pod) -> None:
            started(p)
            p["status"]["phase"] = "Running"
            p["status"]["containerStatuses"] = [self._status(main, {"running": {"startedAt": rfc3339(now)}}, True)]
            p["status"]["conditions"] = (p["status"].get("conditions") or [])[:1] + [
                {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(now)}]
        self.store.update(namespace, name, running)
        if self.options.oom_marker in main["image"]:
            container.forced = "OOMKilled"
            _signal_group(proc, signal.SIGKILL)
        elif self.options.evict_marker in main["image"]:
            container.forced, container.message = "Evicted", "The node was low on resource: memory."
            _signal_group(proc, signal.SIGKILL)

    def _pull_backoff(self, namespace: str, name: str, pod: Pod, container: Container) -> None:
        main = pod["spec"]["containers"][0]
        reason = "ErrImagePull" if container.pull_attempts == 0 else "ImagePullBackOff"
        container.pull_attempts += 1
        if container.pull_attempts > 2:
            return  # settled in back-off: no more status churn
        message = (f'failed to pull and unpack image "{main["image"]}": not found' if reason == "ErrImagePull"
                   else f'Back-off pulling image "{main["image"]}"')

        def waiting(p: Pod) -> None:
            p["status"]["containerStatuses"] = [
                self._status(main, {"waiting": {"reason": reason, "message": message}}, False)]
        self.store.update(namespace, name, waiting)

    def _finish(self, namespace: str, name: str, container: Container | None, deadline_exceeded: bool = False) -> None:
        pod = self.store.pods[(namespace, name)]
        main = pod["spec"]["containers"][0]
        now = rfc3339(self.store.clock())
        code = None
        if container is not None and container.proc is not None:
            rc = container.proc.wait()
            code = rc if rc >= 0 else 128 - rc
        forced = "DeadlineExceeded" if deadline_exceeded else (container.forced if container else None)
        pod_reason = pod_message = None
        if forced == "OOMKilled":
            phase, reason = "Failed", "OOMKilled"
        elif forced == "DeadlineExceeded":
            phase, reason = "Failed", "Error"
            pod_reason, pod_message = "DeadlineExceeded", "Pod was active on the node longer than the specified deadline"
        elif forced == "Evicted":
            phase, reason = "Failed", "Error"
            pod_reason = "Evicted"
            pod_message = (container.message if container else None) or "The node was low on resource: memory."
        else:
            phase, reason = ("Succeeded", "Completed") if code == 0 else ("Failed", "Error")
        started = pod["status"].get("startTime") or now
        state: dict[str, Any]
        if code is None:  # never ran (e.g. still pulling its image)
            state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": started,
                                    "finishedAt": now}}
        else:
            state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now}}

        def finished(p: Pod) -> None:
            p["status"]["phase"] = phase
            p["status"]["containerStatuses"] = [self._status(main, state, False)]
            p["status"]["conditions"] = (p["status"].get("conditions") or [])[:1] + [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}]
            if pod_reason:
                p["status"].update(reason=pod_reason, message=pod_message)
        self.store.update(namespace, name, finished)

    def _status(self, main: dict[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {"name": main["name"], "image": main["image"], "imageID": "", "ready": ready, "restartCount": 0,
                "started": ready, "state": state}
