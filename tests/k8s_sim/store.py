"""The simulator's API-server state: namespaced pods as plain JSON dicts, as the real server stores them.

Kept apart from HTTP (server.py) and from running containers (kubelet.py) so each can be read on
its own: this module validates and defaults a created pod, answers label selectors, versions every
change (resourceVersion) and keeps an event log that watches stream from. Like etcd, the log is
compacted (beyond EVENT_LOG_LIMIT events, or on demand): a watch from an older version is 410 Gone.
"""
from __future__ import annotations

import bisect
import copy
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

Pod = dict[str, Any]

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")
_SUFFIX = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
EVENT_LOG_LIMIT = 10_000


class Event(NamedTuple):
    """One versioned change, as a watch streams it; `at` (time.monotonic) is for measurements."""

    version: int
    type: str  # ADDED, MODIFIED, DELETED
    namespace: str
    pod: Pod
    at: float


class ApiError(Exception):
    """A refusal the server answers with a `kind: Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `Status` body the real API server returns with every error."""
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details:
        body["details"] = details
    return body


def rfc3339(seconds: float) -> str:
    """Kubernetes timestamps: UTC, whole seconds, a trailing Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def parse_quantity(text: str) -> float:
    """A resource quantity ("500m", "16Gi", "2") as a number of base units."""
    match = QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"quantities must match the regular expression '{QUANTITY.pattern}'")
    number = str(text)[: match.start(2)] if match.group(2) else str(text)
    suffix = match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return float(number) * 10 ** int(suffix[1:])
    return float(number) * _SUFFIX[suffix]


def parse_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    """Equality, inequality, existence and set-based label selector terms, ANDed."""
    terms: list[Callable[[dict[str, str]], bool]] = []
    for raw in re.split(r",(?![^()]*\))", text or ""):
        term = raw.strip()
        if not term:
            continue
        if m := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                terms.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                terms.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := re.fullmatch(r"([^\s!=]+)\s*!=\s*(\S*)", term):
            terms.append(lambda labels, k=m.group(1), v=m.group(2): labels.get(k) != v)
        elif m := re.fullmatch(r"([^\s!=]+)\s*==?\s*(\S*)", term):
            terms.append(lambda labels, k=m.group(1), v=m.group(2): labels.get(k) == v)
        elif m := re.fullmatch(r"!\s*([^\s!=]+)", term):
            terms.append(lambda labels, k=m.group(1): k not in labels)
        elif re.fullmatch(r"[^\s!=(),]+", term):
            terms.append(lambda labels, k=term: k in labels)
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label selector term {term!r}")
    return terms


def matches(pod: Pod, terms: Iterable[Callable[[dict[str, str]], bool]]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return all(term(labels) for term in terms)


def pod_requests(pod: Pod) -> dict[str, float]:
    """What the scheduler reserves for the pod: each container's requests (defaulted from limits)."""
    total: Counter[str] = Counter()
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in wanted.items():
            total[name] += parse_quantity(value)
    return dict(total)


def _invalid(name: str, field: str, value: Any, why: str) -> ApiError:
    message = f'Pod "{name}" is invalid: {field}: Invalid value: {value!r}: {why}'
    return ApiError(422, "Invalid", message, {"name": name, "kind": "Pod", "causes": [
        {"reason": "FieldValueInvalid", "message": f"Invalid value: {value!r}: {why}", "field": field}]})


def _required(name: str, field: str) -> ApiError:
    return ApiError(422, "Invalid", f'Pod "{name}" is invalid: {field}: Required value', {"name": name, "kind": "Pod"})


def validate_pod(namespace: str, body: Any) -> None:
    """The subset of the API server's pod validation that a backend bug would trip."""
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
    if body.get("kind") not in (None, "Pod") or body.get("apiVersion") not in (None, "v1"):
        raise ApiError(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) does not match "
                                          "the expected API version (v1)")
    meta = body.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ApiError(422, "Invalid", "Pod \"\" is invalid: metadata.name: Required value: name or generateName is "
                                       "required")
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        raise _invalid(name, "metadata.name", name, "a lowercase RFC 1123 subdomain must consist of lower case "
                                                    "alphanumeric characters, '-' or '.'")
    if meta.get("namespace") not in (None, namespace):
        raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent "
                                          "on the request")
    for key, value in (meta.get("labels") or {}).items():
        label_name = key.rsplit("/", 1)[-1]
        if len(label_name) > 63 or not LABEL_NAME.match(label_name):
            raise _invalid(name, "metadata.labels", key, "name part must consist of alphanumeric characters, '-', "
                                                         "'_' or '.'")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            raise _invalid(name, "metadata.labels", value, "a valid label must be an empty string or consist of "
                                                           "alphanumeric characters, '-', '_' or '.' (at most 63)")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise _required(name, "spec")
    containers = spec.get("containers") or []
    if not containers:
        raise _required(name, "spec.containers")
    for i, container in enumerate(containers):
        if not container.get("name") or not DNS1123_LABEL.match(container["name"]):
            raise _invalid(name, f"spec.containers[{i}].name", container.get("name"), "must be a DNS-1123 label")
        if not container.get("image"):
            raise _required(name, f"spec.containers[{i}].image")
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for res, value in (resources.get(kind) or {}).items():
                try:
                    parse_quantity(value)
                except ValueError as exc:
                    raise _invalid(name, f"spec.containers[{i}].resources.{kind}[{res}]", value, str(exc)) from None
    if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        raise _invalid(name, "spec.restartPolicy", spec["restartPolicy"], "supported values: Always, OnFailure, Never")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline < 1):
        raise _invalid(name, "spec.activeDeadlineSeconds", deadline, "must be between 1 and 2147483647, inclusive")


def _qos(pod: Pod) -> str:
    requests, limits = [], []
    for c in pod["spec"]["containers"]:
        r = (c.get("resources") or {})
        requests.append(r.get("requests") or {})
        limits.append(r.get("limits") or {})
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(
        lim.get(res) is not None and (req.get(res) is None or parse_quantity(req[res]) == parse_quantity(lim[res]))
        for req, lim in zip(requests, limits) for res in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


class PodStore:
    """Pods by (namespace, name), versioned like etcd; every method is thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pods: dict[tuple[str, str], Pod] = {}
        self.version = 0
        self.events: list[Event] = []
        self.compacted = 0  # the newest version no longer in the log: a watch from before it is 410 Gone
        self.creates: Counter[str] = Counter()  # name -> how many times a create was applied
        self.bodies: dict[str, Pod] = {}  # name -> the body of its first applied create, as the client sent it

    def _bump(self, event: str, namespace: str, pod: Pod) -> None:
        self.version += 1
        pod["metadata"]["resourceVersion"] = str(self.version)
        self.events.append(Event(self.version, event, namespace, copy.deepcopy(pod), time.monotonic()))
        if len(self.events) > EVENT_LOG_LIMIT:
            self.compacted = self.events[-EVENT_LOG_LIMIT - 1].version
            del self.events[:-EVENT_LOG_LIMIT]
        self.changed.notify_all()

    def compact(self) -> None:
        """Forget every event so far (etcd compaction): only a watch from now on can resume."""
        with self.lock:
            self.compacted = self.version
            self.events.clear()

    def create(self, namespace: str, body: Any) -> Pod:
        validate_pod(namespace, body)
        name = body["metadata"]["name"]
        with self.lock:
            if (namespace, name) in self.pods:
                raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists',
                               {"name": name, "kind": "pods"})
            pod = copy.deepcopy(body)
            pod["apiVersion"], pod["kind"] = "v1", "Pod"
            meta = pod["metadata"]
            meta.update(
                namespace=namespace, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{name}/{self.version}")),
                creationTimestamp=rfc3339(self.clock()), generation=1,
            )
            spec = pod["spec"]
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            pod["status"] = {"phase": "Pending", "qosClass": _qos(pod)}
            self.pods[(namespace, name)] = pod
            self.creates[name] += 1
            self.bodies.setdefault(name, copy.deepcopy(body))
            self._bump("ADDED", namespace, pod)
            return copy.deepcopy(pod)

    def get(self, namespace: str, name: str) -> Pod:
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
            return copy.deepcopy(pod)

    def list(self, namespace: str, selector: str) -> tuple[list[Pod], str]:
        terms = parse_selector(selector)
        with self.lock:
            items = [copy.deepcopy(p) for (ns, _), p in sorted(self.pods.items()) if ns == namespace and matches(p, terms)]
            return items, str(self.version)

    def update(self, namespace: str, name: str, mutate: Callable[[Pod], None]) -> Pod | None:
        """Apply `mutate` to the stored pod and version the change (None when the pod is gone)."""
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return None
            mutate(pod)
            self._bump("MODIFIED", namespace, pod)
            return copy.deepcopy(pod)

    def remove(self, namespace: str, name: str) -> Pod | None:
        with self.lock:
            pod = self.pods.pop((namespace, name), None)
            if pod is not None:
                self._bump("DELETED", namespace, pod)
            return copy.deepcopy(pod) if pod is not None else None

    def snapshot(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.pods)

    def events_after(self, version: int) -> list[Event]:
        """The events newer than `version`; ApiError 410 when some of them were compacted away."""
        with self.lock:
            if version < self.compacted:
                raise ApiError(410, "Expired", f"too old resource version: {version} ({self.compacted})")
            start = bisect.bisect_right(self.events, version, key=lambda e: e.version)
            return self.events[start:]
