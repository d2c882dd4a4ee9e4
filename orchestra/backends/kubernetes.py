"""Kubernetes backend: one pod per attempt, observed with one labelled list call per cycle.

The scheduler names each attempt before asking (`orc-<task>-<job>-<attempt>`), so every call here
is idempotent: a create that meets 409 AlreadyExists adopts the pod (a retry after a timeout whose
create did land meets exactly that), a delete that meets 404 is done. The backend owns its retry
policy (bounded, with backoff), so the client's hidden urllib3 retries are switched off.

What each call needs from RBAC is declared once, in `RBAC_RULES`; docker/k8s/rbac.yaml grants
exactly that and a test checks both against what the backend really calls.

A job's log reaches its log file (what `maestro job logs` reads) when its pod has ended: the
survey that sees the end saves it, before the scheduler records the end and releases the pod.

Every pod runs as its owner (uid, gid, groups from orchestra/security/accounts.py) and meets the
Pod Security Standard "restricted" (non-root, no privilege escalation, every capability dropped,
seccomp RuntimeDefault); a user with no account fails at launch, no pod created.

Turnover: while the scheduler service runs, a watch on the same labelled pods (kubewatch.py) wakes
it the moment a pod ends, for a short pass; the survey stays the only thing that decides. Without
a healthy watch (disabled, refused, the API away) the loop polls every `poll_seconds` instead.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
import re
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException, ConflictException, NotFoundException
from kubernetes.config.config_exception import ConfigException

from orchestra.backends.base import BackendUnavailable, Launched, LaunchSpec, Observation, Phase, Survey, Tracked
from orchestra.backends.kubewatch import PodWatch, status_message as _status_message
from orchestra.config import ClusterConfig, load_settings
from orchestra.errors import OrchestraError
from orchestra.paths import UntrustedPath, open_dir, open_in
from orchestra.security.accounts import NoAccount, OwnerAccount, owner_account

log = logging.getLogger(__name__)
T = TypeVar("T")

# (resource, verb) pairs the backend calls: the Role in docker/k8s/rbac.yaml grants exactly these.
RBAC_RULES: frozenset[tuple[str, str]] = frozenset({
    ("pods", "create"),  # launch
    ("pods", "get"),  # adopt after 409 AlreadyExists
    ("pods", "list"),  # survey: one call per cycle
    ("pods", "watch"),  # wake the scheduler when a pod ends (turnover)
    ("pods", "delete"),  # kill, release
    ("pods/log", "get"),  # save the log of an ended pod
})
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "orchestra"
CONTAINER = "main"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A waiting container in these states will not start by itself: fail after a grace period (a slow
# registry or a secret created late still gets its chance) or at once (a malformed image name).
FAIL_AFTER_GRACE = frozenset({"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"})
FAIL_AT_ONCE = frozenset({"InvalidImageName", "ErrImageNeverPull"})
NEVER_STARTS = FAIL_AFTER_GRACE | FAIL_AT_ONCE
MAX_BACKOFF = 10.0
WATCH_SECONDS = 60  # one watch stream's life on the server; then it is resumed from its last version


class KubernetesUnavailable(BackendUnavailable):
    """The API server kept failing (5xx, 429, timeouts, refused connections) through every retry.

    `maybe_done`: some try may have been carried out although no answer said so (the request was
    sent and then timed out, the connection dropped, a gateway answered 504). For a create this
    decides whether the pod may exist: a launch that certainly created nothing is the cluster's
    failure (put back uncharged); one that may have created the pod is left to the next survey,
    which adopts the pod if it is there."""

    def __init__(self, message: str, maybe_done: bool = False) -> None:
        super().__init__(message)
        self.maybe_done = maybe_done


# ---------------------------------------------------------------------------------------- pure helpers
def label_value(text: str) -> str:
    """A valid label value for `text`: invalid characters become '-', at most 63 characters.

    A changed value gets a short hash of the original, so two names never collapse into one label.
    """
    if len(text) <= 63 and LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:54].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


def cpu_quantity(cpu: float) -> str:
    """1.0 -> "1", 0.5 -> "500m": the canonical forms the API server echoes back."""
    if float(cpu).is_integer():
        return str(int(cpu))
    return f"{round(cpu * 1000)}m"


def _timestamp(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def _main_status(pod: client.V1Pod) -> client.V1ContainerStatus | None:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    for status in statuses:
        if status.name == CONTAINER:
            return status
    return statuses[0] if statuses else None


def _explain(reason: str, message: str | None) -> str:
    """"Evicted: The node was low on resource: memory." - the reason first, for a reader and a grep."""
    detail = " ".join((message or "").split())
    return f"{reason}: {detail[:400]}" if detail else reason


def observe(pod: client.V1Pod, now: float, image_pull_grace: float) -> Observation:
    """What a listed pod says about its attempt (pure: the survey and the tests use it).

    A failure's reason starts with the Kubernetes reason (OOMKilled, Evicted, DeadlineExceeded,
    ImagePullBackOff, ...) followed by its message; a plain non-zero exit is "exit code N".
    """
    name = pod.metadata.name
    status = pod.status or client.V1PodStatus()
    host = pod.spec.node_name if pod.spec else None
    main = _main_status(pod)
    state = main.state if main and main.state else client.V1ContainerState()
    terminated, waiting = state.terminated, state.waiting
    if status.phase == "Succeeded":
        return Observation(name, Phase.SUCCEEDED, exit_code=terminated.exit_code if terminated else 0, host=host,
                           ended_at=_timestamp(terminated.finished_at) if terminated else None)
    if status.phase == "Failed":
        code = terminated.exit_code if terminated else None
        if status.reason:  # the pod's own verdict: Evicted, DeadlineExceeded, NodeLost, ...
            reason = _explain(status.reason, status.message)
        elif terminated is not None and terminated.reason not in (None, "Error", "Completed"):
            reason = _explain(terminated.reason, terminated.message)  # OOMKilled, ContainerCannotRun, ...
        else:
            reason = f"exit code {code}" if code is not None else "failed"
        ended = _timestamp(terminated.finished_at) if terminated else None
        return Observation(name, Phase.FAILED, exit_code=code, reason=reason, host=host, ended_at=ended or now)
    if status.phase == "Pending" or status.phase is None:
        if waiting is not None and waiting.reason in NEVER_STARTS:
            since = _scheduled_at(pod) or _timestamp(pod.metadata.creation_timestamp) or now
            if waiting.reason in FAIL_AT_ONCE or now - since >= image_pull_grace:
                return Observation(name, Phase.FAILED, reason=_explain(waiting.reason, waiting.message), host=host,
                                   ended_at=now)
            return Observation(name, Phase.PENDING, reason=waiting.reason, host=host)
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                return Observation(name, Phase.PENDING, reason=_explain("Unschedulable", condition.message))
        return Observation(name, Phase.PENDING, reason=waiting.reason if waiting else None, host=host)
    if status.phase == "Unknown":
        return Observation(name, Phase.RUNNING, reason="node not reporting (phase Unknown)", host=host)
    return Observation(name, Phase.RUNNING, host=host)


def pod_ended(pod: dict[str, Any]) -> bool:
    """Whether a raw pod (a watch event's object) shows an end the survey would record at once."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if container.get("name") == CONTAINER and waiting.get("reason") in FAIL_AT_ONCE:
            return True
    return False


def _never_started(reason: str | None) -> bool:
    return bool(reason) and str(reason).split(":", 1)[0] in NEVER_STARTS


def _scheduled_at(pod: client.V1Pod) -> float | None:
    """When the pod was bound: an image pull cannot start before, so its grace counts from there."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "PodScheduled" and condition.status == "True":
            return _timestamp(condition.last_transition_time)
    return None


class KubernetesDenied(OrchestraError):
    """The API refused our credentials (401) or RBAC forbids the call (403 "... cannot ..."): an
    admin must fix the kubeconfig or the Role. Raised from every call but a pod create, which holds
    its queue instead (the other clusters and queues keep running; see `_launch_one`)."""


class _Unavailable(threading.Event):
    """Set by the first of a round's concurrent creates to find the API unavailable, with why."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.why = ""


def _transient(exc: ApiException) -> bool:
    return exc.status in (0, 429) or (exc.status is not None and 500 <= exc.status <= 599)


# ---------------------------------------------------------------------------------------- connection
def connect(cluster: ClusterConfig) -> client.ApiClient:
    """In a pod (KUBERNETES_SERVICE_HOST set): its service account; else KUBECONFIG or ~/.kube/config."""
    k8s = cluster.kubernetes
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise OrchestraError(f"cluster {cluster.name}: running in a pod but its service account cannot be used: "
                                 f"{exc}; mount the service account token (automountServiceAccountToken)") from None
    else:
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            config.load_kube_config(config_file=path, context=k8s.context, client_configuration=configuration,
                                    persist_config=False)
        except (ConfigException, OSError, ValueError) as exc:
            detail = " ".join(str(exc).split())
            raise OrchestraError(f"cluster {cluster.name}: cannot use kubeconfig {path}: {detail}; set KUBECONFIG or "
                                 f"clusters.{cluster.name}.kubernetes.context") from None
    configuration.retries = False  # the backend retries, adopting on 409; hidden retries would multiply waits
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, k8s.create_concurrency)
    return client.ApiClient(configuration)


# ---------------------------------------------------------------------------------------- the backend
class KubernetesBackend:
    """Runs each attempt as a pod in the cluster's namespace; see the module docstring."""

    name = "kubernetes"
    starts_pending = True  # a created pod waits (scheduling, image pull): its attempt stays `starting` until it runs

    def __init__(
        self,
        cluster: ClusterConfig,
        api_client: client.ApiClient | None = None,
        *,
        request_timeout: float | None = None,
        tries: int = 5,
        backoff: float | None = None,
        clock: Callable[[], float] = time.time,
        watch_seconds: int = WATCH_SECONDS,
        accounts: Callable[[str], OwnerAccount] | None = None,
    ) -> None:
        """`api_client` (tests, or a caller with its own credentials) is owned from now on: `close` closes it.

        `accounts(user)` gives the account a user's pods run as, or raises NoAccount; by default
        `owner_account` with the process's settings (ORCHESTRA_CONFIG, what the scheduler loaded
        too), read at the first launch.

        No thread starts here: the watch starts on the first launch or survey after `set_wakeup`,
        so a backend made for a CLI command or a `--once` cycle never has one.
        """
        self.cluster = cluster
        self.k8s = cluster.kubernetes
        self.namespace = self.k8s.namespace
        self._validate_config()
        self._tolerations = self._parse_tolerations()
        self.api_client = api_client if api_client is not None else connect(cluster)
        self.api = client.CoreV1Api(self.api_client)
        timeout = self.k8s.request_timeout_seconds if request_timeout is None else request_timeout
        self.timeout = (timeout, timeout)  # (connect, read) of each API call
        self.tries = max(1, tries)
        self.backoff = self.k8s.retry_backoff_seconds if backoff is None else backoff
        self.clock = clock
        self.selector = f"{MANAGED_BY}={MANAGER},orchestra/cluster={label_value(cluster.name)}"
        self.watch_seconds = watch_seconds
        self._wakeup: Callable[[], None] | None = None
        self._watch: PodWatch | None = None
        self._live = 0  # attempts pending or running, as of the last survey and the launches since
        self._accounts = accounts
        self._logs_saved: set[str] = set()  # ended pods whose log is saved (until released)
        self._killed: set[str] = set()  # pods this process deleted for a kill (until released)
        self._accounts_lock = threading.Lock()

    def _validate_config(self) -> None:
        key = f"clusters.{self.cluster.name}.kubernetes"
        if not DNS1123_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise OrchestraError(f"config: {key}.namespace {self.namespace!r} is not a valid namespace name "
                                 "(lowercase letters, digits and '-', at most 63)")
        if bool(self.k8s.storage_pvc) == bool(self.k8s.storage_host_path):
            raise OrchestraError(f"config: {key} needs exactly one of storage_pvc (a PersistentVolumeClaim name) or "
                                 f"storage_host_path (a directory on every node), mounted at {self.cluster.storage}")
        if self.k8s.create_concurrency < 1 or self.k8s.kill_grace_seconds < 0 or self.k8s.image_pull_grace_seconds < 0:
            raise OrchestraError(f"config: {key}.create_concurrency must be >= 1, kill_grace_seconds and "
                                 "image_pull_grace_seconds >= 0")
        if not self.k8s.request_timeout_seconds > 0 or self.k8s.retry_backoff_seconds < 0:
            raise OrchestraError(f"config: {key}.request_timeout_seconds must be > 0 (seconds per API call) and "
                                 "retry_backoff_seconds >= 0")
        poll = self.k8s.poll_seconds
        if not isinstance(self.k8s.watch, bool) or isinstance(poll, bool) or not isinstance(poll, (int, float)) \
                or not 0 < poll <= 3600:
            raise OrchestraError(f"config: {key}.watch must be true or false, and poll_seconds a number of seconds "
                                 f"in (0, 3600] (how often ended pods are looked for without a watch)")

    def _parse_tolerations(self) -> list[client.V1Toleration]:
        known = {"key", "operator", "value", "effect", "tolerationSeconds"}
        try:
            for toleration in self.k8s.tolerations:
                unknown = set(dict(toleration)) - known
                if unknown:
                    raise ValueError(f"unknown keys {sorted(unknown)}")
            return [client.V1Toleration.from_dict(dict(t)) for t in self.k8s.tolerations]
        except (ValueError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise OrchestraError(f"config: clusters.{self.cluster.name}.kubernetes.tolerations: {detail}; use keys "
                                 "key, operator, value, effect, tolerationSeconds") from None

    # ------------------------------------------------------------------------------- calls and retries
    def _call(self, verb: str, resource: str, fn: Callable[[], T], abort: threading.Event | None = None) -> T:
        """Run one API call with bounded retries on transient failures.

        401 and RBAC 403 raise OrchestraError naming the permission; any other refusal is raised
        as the client's ApiException for the caller to judge; persistent trouble raises
        KubernetesUnavailable (at once when `abort` is set: a sibling call already found the API
        unavailable).
        """
        delay = self.backoff
        maybe_done = False
        for attempt in range(1, self.tries + 1):
            try:
                return fn()
            except ApiException as exc:
                if exc.status == 401 or (exc.status == 403 and " cannot " in _status_message(exc)):
                    raise self._denied(exc, verb, resource) from None
                if not _transient(exc):
                    raise
                problem = f"HTTP {exc.status}: {_status_message(exc)}"
                maybe_done = maybe_done or exc.status in (0, 504)  # 0: no HTTP answer at all
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                # Refused or timed out while connecting: the request never left. Anything else
                # (read timeout, connection dropped mid-answer) may have been carried out.
                maybe_done = maybe_done or not isinstance(exc, (urllib3.exceptions.NewConnectionError,
                                                                urllib3.exceptions.ConnectTimeoutError,
                                                                ConnectionRefusedError))
            if attempt == self.tries or (abort is not None and abort.is_set()):
                raise KubernetesUnavailable(
                    f"kubernetes API {self.api_client.configuration.host}: {verb} {resource} in namespace "
                    f"{self.namespace} failed {attempt} times; last: {problem}", maybe_done)
            log.debug("retrying %s %s after: %s", verb, resource, problem)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, MAX_BACKOFF)
        raise AssertionError("unreachable")

    def _denied(self, exc: ApiException, verb: str, resource: str) -> KubernetesDenied:
        action = f"{verb} {resource} in namespace {self.namespace}"
        if exc.status == 401:
            return KubernetesDenied(
                f"kubernetes API {self.api_client.configuration.host} rejected our credentials (401 Unauthorized) "
                f"trying to {action}; check the kubeconfig context or the service account token")
        return KubernetesDenied(
            f"kubernetes forbids Orchestra to {action} (403 Forbidden: {_status_message(exc)}); grant the verb "
            f"'{verb}' on '{resource}' in the Role bound to Orchestra's service account (docker/k8s/rbac.yaml)")

    def _parallel(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T | None]:
        """`fn` over `items`, at most create_concurrency at once; the first OrchestraError is raised
        after every call has finished (so one denial does not leave the others half done)."""
        if not items:
            return []
        results: list[T | None] = []
        failure: OrchestraError | None = None
        workers = min(len(items), self.k8s.create_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orchestra-k8s") as pool:
            for future in [pool.submit(fn, item) for item in items]:
                try:
                    results.append(future.result())
                except OrchestraError as exc:
                    failure = failure or exc
                    results.append(None)
        if failure is not None:
            raise failure
        return results

    # ------------------------------------------------------------------------------- launch
    def owner(self, user: str) -> OwnerAccount:
        """The account `user`'s pods run as; NoAccount (one line) when there is none."""
        with self._accounts_lock:
            if self._accounts is None:
                self._accounts = functools.partial(owner_account, load_settings())
            accounts = self._accounts
        return accounts(user)

    def pod_for(self, spec: LaunchSpec) -> client.V1Pod:
        """The pod of one attempt; never sets nodeName (placement is the kube-scheduler's job).

        It runs as its owner and meets the Pod Security Standard "restricted"; raises NoAccount
        for an owner without an account.
        """
        queue, k8s = spec.queue, self.k8s
        account = self.owner(spec.user)
        labels = {
            MANAGED_BY: MANAGER,
            "orchestra/cluster": label_value(self.cluster.name),
            "orchestra/task": str(spec.task_id),
            "orchestra/job": str(spec.job_index),
            "orchestra/attempt": str(spec.attempt),
            "orchestra/user": label_value(spec.user),
            "orchestra/queue": label_value(queue.name),
        }
        annotations = {"orchestra/task-name": spec.task_name, "orchestra/user": spec.user,
                       "orchestra/job-id": str(spec.job_id)}
        amounts = {"cpu": cpu_quantity(queue.cpu), "memory": queue.memory}
        if queue.gpu > 0:
            amounts["nvidia.com/gpu"] = str(queue.gpu)
        script = (f"mkdir -p {shlex.quote(spec.output_dir)} && cd {shlex.quote(spec.output_dir)} || exit 125\n"
                  f"exec /bin/sh -c {shlex.quote(spec.command)}")
        env = {"ORCHESTRA_TASK": spec.task_name, "ORCHESTRA_TASK_ID": str(spec.task_id),
               "ORCHESTRA_JOB": str(spec.job_index), "ORCHESTRA_JOB_ID": str(spec.job_id),
               "ORCHESTRA_ATTEMPT": str(spec.attempt), "ORCHESTRA_USER": spec.user,
               "ORCHESTRA_QUEUE": queue.name, "ORCHESTRA_CLUSTER": self.cluster.name,
               "ORCHESTRA_OUTPUT": spec.output_dir}
        if k8s.storage_pvc:
            volume = client.V1Volume(name="storage", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                claim_name=k8s.storage_pvc))
        else:
            volume = client.V1Volume(name="storage", host_path=client.V1HostPathVolumeSource(
                path=str(k8s.storage_host_path), type="Directory"))
        container = client.V1Container(
            name=CONTAINER,
            image=spec.image,
            command=["/bin/sh", "-c", script],
            env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
            resources=client.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts)),
            volume_mounts=[client.V1VolumeMount(name="storage", mount_path=str(self.cluster.storage))],
            security_context=client.V1SecurityContext(
                allow_privilege_escalation=False, run_as_non_root=True,
                capabilities=client.V1Capabilities(drop=["ALL"])),
        )
        return client.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=client.V1ObjectMeta(name=spec.backend_name, namespace=self.namespace, labels=labels,
                                         annotations=annotations),
            spec=client.V1PodSpec(
                containers=[container],
                restart_policy="Never",
                volumes=[volume],
                active_deadline_seconds=max(1, math.ceil(spec.max_time)) if spec.max_time else None,
                termination_grace_period_seconds=k8s.kill_grace_seconds,
                enable_service_links=False,
                # a job has no business with the API unless the admin gave it an identity on purpose
                automount_service_account_token=None if k8s.service_account else False,
                service_account_name=k8s.service_account,
                priority_class_name=k8s.priority_class,
                node_selector=dict(k8s.node_selector) or None,
                tolerations=self._tolerations or None,
                image_pull_secrets=[client.V1LocalObjectReference(name=s) for s in k8s.image_pull_secrets] or None,
                security_context=client.V1PodSecurityContext(
                    run_as_non_root=True, run_as_user=account.uid, run_as_group=account.gid,
                    supplemental_groups=list(account.groups),
                    # No fsGroup: on a volume whose CSI driver has fsGroupPolicy File, the kubelet would
                    # chgrp the whole shared storage to this owner's group and make it group-writable.
                    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")),
            ),
        )

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        """Create the pods concurrently. An API that proves unavailable is the cluster's failure,
        not the jobs': that launch and the rest (not tried once one call gave up) come back as
        `Launched.infra`, so the scheduler queues them again uncharged and holds the queue until a
        probe launch succeeds; so does a create that RBAC forbids (its message names the grant). Except a create that may have been carried out although its answer
        was lost (`KubernetesUnavailable.maybe_done`): putting it back could run the job twice, so
        it is reported started, and the next survey adopts the pod or finds it lost."""
        self._start_watch()
        unavailable = _Unavailable()
        results = [r for r in self._parallel(lambda spec: self._launch_one(spec, unavailable), list(specs))
                   if r is not None]
        self._live += sum(1 for r in results if r.error is None)
        return results

    def _launch_one(self, spec: LaunchSpec, unavailable: _Unavailable) -> Launched:
        name = spec.backend_name
        if len(name) > 63 or not DNS1123_LABEL.match(name):
            return Launched(name, error=f"invalid pod name {name!r}: lowercase letters, digits and '-', at most 63")
        if not spec.image.strip():
            return Launched(name, error="no container image: the kubernetes backend needs the task's image")
        if unavailable.is_set():
            return Launched(name, error=f"not tried: {unavailable.why}", infra=True)
        try:
            body = self.pod_for(spec)
        except NoAccount as exc:
            return Launched(name, error=str(exc), final=True)  # not retried: no attempt could run
        for _ in range(self.tries):
            try:
                pod = self._call("create", "pods", lambda: self.api.create_namespaced_pod(
                    self.namespace, body, _request_timeout=self.timeout), unavailable)
                return Launched(name, host=pod.spec.node_name if pod.spec else None, started_at=self.clock())
            except ConflictException:
                try:
                    existing = self._call("get", "pods", lambda: self.api.read_namespaced_pod(
                        name, self.namespace, _request_timeout=self.timeout), unavailable)
                except NotFoundException:
                    continue  # deleted between our create and our read: create it again
                except KubernetesUnavailable as exc:
                    self._give_up(unavailable, exc)
                    return Launched(name)  # the pod exists, whoever's: the survey tells
                return self._adopt(spec, existing)
            except KubernetesUnavailable as exc:
                self._give_up(unavailable, exc)
                if exc.maybe_done:  # the pod may exist: the next survey adopts it or finds it lost
                    return Launched(name)
                return Launched(name, error=str(exc), infra=True)
            except KubernetesDenied as exc:
                # RBAC or credentials: nothing was created and nothing will be until an admin acts.
                # The cluster's failure, not the job's: put back uncharged and the queue held with
                # this message (a probe with backoff), rather than stopping the whole service.
                self._give_up(unavailable, KubernetesUnavailable(str(exc)))
                return Launched(name, error=str(exc), infra=True)
            except ApiException as exc:
                why = _status_message(exc)
                if exc.status == 403 and "exceeded quota" in why:  # the namespace's ResourceQuota is full:
                    return Launched(name, error=f"kubernetes quota: {why}", infra=True)  # wait, uncharged
                return Launched(name, error=f"kubernetes refused pod {name}: {why}")
        return Launched(name, error=f"pod {name} was deleted {self.tries} times between its create and its read",
                        infra=True)

    @staticmethod
    def _give_up(unavailable: _Unavailable, exc: KubernetesUnavailable) -> None:
        """The first launch to find the API unavailable says why; the others are not tried."""
        with unavailable.lock:
            if not unavailable.is_set():
                unavailable.why = str(exc)
                unavailable.set()

    def _adopt(self, spec: LaunchSpec, pod: client.V1Pod) -> Launched:
        """A pod of this name exists: ours (a retried or repeated launch) is adopted, anyone else's is not."""
        labels = pod.metadata.labels or {}
        ours = (labels.get(MANAGED_BY) == MANAGER and labels.get("orchestra/task") == str(spec.task_id)
                and labels.get("orchestra/job") == str(spec.job_index)
                and labels.get("orchestra/attempt") == str(spec.attempt))
        if not ours:
            return Launched(spec.backend_name, error=f"pod {spec.backend_name} already exists in namespace "
                                                     f"{self.namespace} and is not this attempt's; delete it")
        if pod.metadata.deletion_timestamp is not None:
            # Ours but on its way out (released after an uncertain create): not a run to adopt. The
            # job waits, uncharged, until the name is free.
            return Launched(spec.backend_name, error=f"pod {spec.backend_name} of an earlier launch is still "
                                                     f"terminating", infra=True)
        return Launched(spec.backend_name, host=pod.spec.node_name if pod.spec else None,
                        started_at=_timestamp(pod.metadata.creation_timestamp))

    # ------------------------------------------------------------------------------- survey
    def survey(self, tracked: Sequence[Tracked]) -> Survey:
        """One list call; logs of ended pods are saved before the observation is returned.

        The list is a consistent read (no resourceVersion=0 cache): a stale cache could miss a pod
        created a moment ago and report it lost, which would start a duplicate.
        """
        self._start_watch()
        pods = self._call("list", "pods", lambda: self.api.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _request_timeout=self.timeout)).items
        by_name = {pod.metadata.name: pod for pod in pods}
        now = self.clock()
        grace = float(self.k8s.image_pull_grace_seconds)
        survey = Survey()
        for item in tracked:
            pod = by_name.get(item.backend_name)
            survey.observations[item.backend_name] = (
                observe(pod, now, grace) if pod is not None
                else Observation(item.backend_name, Phase.MISSING, reason=f"no pod {item.backend_name} in namespace "
                                                                          f"{self.namespace}"))
        known = {item.backend_name for item in tracked}
        survey.strangers = sorted(name for name, pod in by_name.items()
                                  if name not in known and pod.metadata.deletion_timestamp is None)
        ended = [(item, survey.observations[item.backend_name]) for item in tracked if item.log_path
                 and survey.observations[item.backend_name].phase in (Phase.SUCCEEDED, Phase.FAILED)
                 and item.backend_name not in self._logs_saved]  # an ended pod's log is read once
        self._parallel(lambda pair: self._save_log(pair[0].backend_name, pair[0].log_path, pair[1]), ended)
        self._logs_saved.update(item.backend_name for item, _ in ended)
        self._live = sum(1 for seen in survey.observations.values() if seen.phase in (Phase.PENDING, Phase.RUNNING))
        return survey

    def _save_log(self, name: str, log_path: str, seen: Observation | None = None) -> None:
        """Write the pod's log to `log_path` (atomically); a log that cannot be had leaves a note why.

        The log's directory is reached inside the cluster's storage without following a link,
        and `log.part` is opened with O_NOFOLLOW: a job that replaced either with a link to
        another file gets a logged refusal, and nothing is written through the link.
        """
        target = Path(log_path)
        part = target.name + ".part"
        folder = -1
        try:
            folder = open_dir(target.parent, self.cluster.storage, create=True)

            def opener(flags: int) -> Any:
                fd = open_in(folder, part, os.O_WRONLY | os.O_CREAT | flags, 0o644, shown=target.parent / part)
                return os.fdopen(fd, "ab" if flags & os.O_APPEND else "wb")

            if seen is not None and seen.exit_code is None and _never_started(seen.reason):
                with opener(os.O_TRUNC) as out:
                    out.write(f"orchestra: pod {name} never started: {seen.reason}\n".encode())
            else:
                try:
                    self._call("get", "pods/log", lambda: self._fetch_log(name, opener))
                except (KubernetesUnavailable, ApiException) as exc:
                    why = _status_message(exc) if isinstance(exc, ApiException) else str(exc)
                    with opener(os.O_APPEND) as out:
                        out.write(f"\norchestra: could not fetch the log of pod {name}: {why}\n".encode())
            os.replace(part, target.name, src_dir_fd=folder, dst_dir_fd=folder)
        except UntrustedPath as exc:
            log.warning("refusing to save the log of pod %s to %s: %s", name, target, exc)
        except OSError as exc:
            log.warning("cannot save the log of pod %s to %s: %s", name, target, exc.strerror or exc)
        finally:
            if folder >= 0:
                os.close(folder)

    def _fetch_log(self, name: str, opener: Callable[[int], Any]) -> None:
        """Stream the log to the file `opener(os.O_TRUNC)` opens (bytes as the container wrote
        them, however large)."""
        response = self.api.read_namespaced_pod_log(name, self.namespace, container=CONTAINER,
                                                    _preload_content=False, _request_timeout=self.timeout)
        try:
            with opener(os.O_TRUNC) as out:
                for chunk in response.stream(1 << 16):
                    out.write(chunk)
        finally:
            response.release_conn()

    # ------------------------------------------------------------------------------- kill, release, close
    def kill(self, tracked: Sequence[Tracked]) -> None:
        """Save what each pod printed so far, then delete it with the configured grace period.

        A kill the API cannot take now is left to the next cycle: the attempt is recorded as ended,
        so its pod, if still there, shows up as a stranger and is released then.
        """
        def one(item: Tracked) -> None:
            if item.log_path:
                self._save_log(item.backend_name, item.log_path)
            self._delete(item.backend_name)

        # Asked again each pass while the pod terminates (the scheduler waits for it to be gone):
        # once per pod is enough for this process; a restarted scheduler asks once more.
        fresh = [item for item in tracked if item.backend_name not in self._killed]
        self._killed.update(item.backend_name for item in fresh)
        self._parallel(one, fresh)

    def release(self, names: Sequence[str]) -> None:
        """Delete the pods (finished ones go at once; 404 is fine: already gone)."""
        self._logs_saved.difference_update(names)
        self._killed.difference_update(names)
        self._parallel(self._delete, list(names))

    def _delete(self, name: str) -> None:
        options = client.V1DeleteOptions(grace_period_seconds=self.k8s.kill_grace_seconds)
        try:
            self._call("delete", "pods", lambda: self.api.delete_namespaced_pod(
                name, self.namespace, body=options, _request_timeout=self.timeout))
        except NotFoundException:
            pass
        except KubernetesUnavailable as exc:
            log.warning("%s; the pod is deleted in a later cycle", exc)
        except ApiException as exc:
            log.warning("cannot delete pod %s: %s", name, _status_message(exc))

    # ------------------------------------------------------------------------------- turnover
    def set_wakeup(self, callback: Callable[[], None]) -> None:
        """`callback` (thread-safe) wakes the scheduler loop for a short pass: the watch calls it
        when a pod ends. Only the service loop sets it; see `__init__` for when the watch starts."""
        self._wakeup = callback

    def _start_watch(self) -> None:
        if self._watch is not None or self._wakeup is None or not self.k8s.watch:
            return
        self._watch = PodWatch(
            self.api_client.configuration, self.namespace, self.selector, self._wakeup, pod_ended,
            timeout=self.watch_seconds, request_timeout=self.timeout[0], backoff=max(self.backoff, 0.05),
            down_after=float(self.k8s.poll_seconds))
        self._watch.start()

    @property
    def watch_healthy(self) -> bool:
        return self._watch is not None and self._watch.healthy

    def poll_after(self) -> float | None:
        """Seconds until the loop should look again without an event, or None (the interval).

        With a healthy watch, None: every pod end is an event, and every way for the watch to go
        blind ends its stream (a dead connection hits the read timeout, a stream is resumed from its
        last version and replays what it missed), which makes it unhealthy or wakes the loop. What
        sends no event at all (the scheduler's own max_time, the image-pull grace) is the full
        cycle's job, as on the local backend. Without a healthy watch, and with pods out there,
        `poll_seconds`.
        """
        if not self._live or self.watch_healthy:
            return None
        return float(self.k8s.poll_seconds)

    def close(self) -> None:
        """Stop the watch (promptly: its read is cut off), then close the connections."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self.api_client.close()

