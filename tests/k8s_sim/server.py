"""A small Kubernetes API server for tests: the real REST protocol for namespaced pods, over real HTTP.

No Kubernetes can run here, yet the backend must be tested with the official client end to end
(serialisation, status codes, selectors, timeouts). So this speaks just enough of the API:

    POST   /api/v1/namespaces/{ns}/pods                    create (409 AlreadyExists)
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=...  list (PodList) or, with watch=true, a watch stream
    GET    /api/v1/namespaces/{ns}/pods/{name}             read
    DELETE /api/v1/namespaces/{ns}/pods/{name}             delete (DeleteOptions body, gracePeriodSeconds)
    GET    /api/v1/namespaces/{ns}/pods/{name}/log         the container's output, text/plain

A watch (`watch=true&resourceVersion=...&timeoutSeconds=...`) is a chunked stream of newline-delimited
{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...} events; every object and list carries
its resourceVersion, and a watch from a version compacted away (`sim.store.compact()`) gets an ERROR
event holding a 410 `Expired` Status. `sim.api_down()` / `sim.api_up()` restart the API server on
the same port (every connection cut, the pods kept).

Errors are `kind: Status` objects. Faults are injected deterministically (keyed by seed, verb, object
and occurrence, so thread interleaving does not change which calls fail), and any (resource, verb)
can be denied with 401/403. A simulated node (kubelet.py) runs each pod's command as a local process.

    with KubeSim() as sim:
        client = sim.api_client()            # or load sim.kubeconfig_path like any kubeconfig
        ...
        sim.calls[("pods", "list")]          # how many list calls the server saw
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.k8s_sim.kubelet import Kubelet, NodeOptions
from tests.k8s_sim.store import ApiError, Pod, PodStore, matches, parse_selector, status_object

GATE_TIMEOUT = 30.0  # seconds a gated call waits for the others before it is served anyway
PATH = r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)(?P<log>/log)?)?/?$"
Verb = tuple[str, str]  # (resource, verb) as RBAC names them, e.g. ("pods/log", "get")


@dataclass
class Faults:
    """Which calls fail, and how; deterministic for a given seed.

    kinds: "error" answers 500 before doing anything; "hang" does the work, then withholds the
    answer for `hang_seconds` (past the client's timeout, if it is shorter) and drops the
    connection: the create that happened although the client never heard; "drop" does the work
    and drops the connection at once; "gateway" does the work, then answers 504 (the API server's
    own storage timeout).

    A call is keyed by (verb, namespace, object name, or the query of a list); whether its n-th
    occurrence fails is a hash of (seed, key, n), so thread interleaving does not change which
    calls fail. `max_per_key` bounds the *consecutive* faults of one key, so a client that
    retries enough always gets through.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("error", "hang")
    verbs: frozenset[Verb] | None = None  # None: every verb
    seed: int = 0
    hang_seconds: float = 3.0
    max_per_key: int = 3

    def pick(self, key: str, occurrence: int, streak: int = 0) -> str | None:
        """The fault for the `occurrence`-th call of `key`, after `streak` faults in a row (or None)."""
        if self.rate <= 0 or streak >= self.max_per_key:
            return None
        # Pod names carry the database's installation id (random per database): leave it out, so a
        # seed picks the same faults in every run.
        key = re.sub(r"orc-[0-9a-f]{8}-", "orc-", key)
        digest = hashlib.sha256(f"{self.seed}|{key}|{occurrence}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self.rate:
            return None
        return self.kinds[int.from_bytes(digest[8:12], "big") % len(self.kinds)]


@dataclass
class Denial:
    code: int  # 401, 403, or a 5xx the server answers for a while (an etcd or webhook outage)
    message: str = ""  # for 403: instead of the RBAC message (e.g. a ResourceQuota's)


@dataclass
class _Request:
    verb: Verb
    namespace: str
    name: str | None
    query: dict[str, list[str]]
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread: nothing outlives the sim
    sim: KubeSim


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30
    disable_nagle_algorithm = True  # headers and body leave in two writes: Nagle would hold the body 40 ms

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the test output is no place for an access log."""

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.sim._handle(self, "PATCH")

    def send_body(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, code: int, obj: Any) -> None:
        self.send_body(code, json.dumps(obj).encode(), "application/json")


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class KubeSim:
    """One API server + one node, on 127.0.0.1 (port chosen by the OS), with a kubeconfig for it."""

    def __init__(
        self,
        *,
        namespace: str = "default",
        token: str = "sim-token",
        user: str = "system:serviceaccount:default:orchestra",
        node: NodeOptions | None = None,
        faults: Faults | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        gate: int = 0,
    ) -> None:
        """`latency`: seconds each call waits before it is served (a real API server's etcd round
        trip is a few milliseconds): makes the benefit of concurrent clients measurable.
        `gate`: each call is held until that many calls are in the server at once (or
        `GATE_TIMEOUT` passes), so a test proves a client's concurrency by counting, not timing;
        `max_in_flight` records the most calls the server held at once."""
        self.namespace = namespace
        self.token = token
        self.user = user
        self.node = node or NodeOptions()
        self.faults = faults or Faults()
        self.denials: dict[Verb, Denial] = {}
        self.calls: Counter[Verb] = Counter()
        self.store = PodStore(clock)
        self.latency = latency
        self.gate = gate
        self.in_flight = 0
        self.max_in_flight = 0
        self._gate_changed = threading.Condition()
        self.faults_injected: Counter[str] = Counter()  # kind -> how many
        self._occurrences: Counter[str] = Counter()
        self._streaks: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._workdir = Path(tempfile.mkdtemp(prefix="k8s-sim-"))
        self.kubelet = Kubelet(self.store, self.node, self._workdir)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.kubeconfig_path = self._workdir / "kubeconfig"

    def _hold(self) -> None:
        """Keep a call in the server for `latency`, and until `gate` calls are in it at once."""
        with self._gate_changed:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._gate_changed.notify_all()
        try:
            if self.latency > 0:
                self._stopping.wait(self.latency)
            if self.gate > 0:
                with self._gate_changed:
                    self._gate_changed.wait_for(
                        lambda: self.max_in_flight >= self.gate or self._stopping.is_set(), GATE_TIMEOUT)
        finally:
            with self._gate_changed:
                self.in_flight -= 1

    # ----------------------------------------------------------------- start / stop
    def start(self) -> KubeSim:
        self._listen(("127.0.0.1", 0))
        host, port = self._server.server_address[:2]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"
        self._write_kubeconfig()
        self.kubelet.start()
        return self

    def _listen(self, address: tuple[str, int]) -> None:
        server = _Server(address, _Handler)
        server.sim = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="k8s-sim-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.api_down()
        self.kubelet.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def api_down(self) -> None:
        """Stop serving HTTP, cutting every connection (watch streams end mid-stream), as an API
        server restart does; the pods (etcd) and the node carry on. `api_up` serves again."""
        self._stopping.set()
        with self._gate_changed:
            self._gate_changed.notify_all()  # calls held at the gate are served (and cut) now
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                for conn in list(self._connections):
                    _shutdown(conn)
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def api_up(self) -> None:
        """Serve again on the same address (after `api_down`)."""
        assert self._server is None, "the API is up already"
        self._stopping.clear()
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self._listen((host, int(port)))

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _write_kubeconfig(self) -> None:
        """A kubeconfig with one context, `sim`; JSON is valid YAML, so no YAML writer is needed."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sim", "preferences": {},
            "clusters": [{"name": "sim", "cluster": {"server": self.url}}],
            "users": [{"name": "sim", "user": {"token": self.token}}],
            "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim", "namespace": self.namespace}}],
        }
        self.kubeconfig_path.write_text(json.dumps(config, indent=2))

    def api_client(self) -> Any:
        """A kubernetes ApiClient configured from the kubeconfig (the caller closes it)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig_path), persist_config=False)

    # ----------------------------------------------------------------- test controls
    def deny(self, verb: str, resource: str = "pods", code: int = 403, message: str = "") -> None:
        """Answer every (resource, verb) call with 401 Unauthorized, 403 Forbidden (RBAC's message
        unless `message`) or a 5xx (e.g. 503: the API server cannot reach etcd) until `allow_all`."""
        self.denials[(resource, verb)] = Denial(code, message)

    def allow_all(self) -> None:
        self.denials.clear()

    def count(self, verb: str, resource: str = "pods") -> int:
        with self._lock:
            return self.calls[(resource, verb)]

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()

    @property
    def verbs_seen(self) -> set[Verb]:
        with self._lock:
            return set(self.calls)

    def pod(self, name: str, namespace: str | None = None) -> Pod | None:
        """The stored pod (a copy), read directly: no HTTP call, not counted."""
        try:
            return self.store.get(namespace or self.namespace, name)
        except ApiError:
            return None

    def pods(self, namespace: str | None = None) -> list[Pod]:
        return self.store.list(namespace or self.namespace, "")[0]

    def creates(self, name: str) -> int:
        """How many times a create of `name` was applied (a duplicate create would make it 2)."""
        return self.store.creates[name]

    def sent(self, name: str) -> Pod | None:
        """The pod exactly as the client sent it in its (first applied) create: before any defaulting."""
        return self.store.bodies.get(name)

    def pid(self, name: str, namespace: str | None = None) -> int | None:
        return self.kubelet.pid_of(namespace or self.namespace, name)

    def oom_kill(self, name: str, namespace: str | None = None) -> None:
        self.kubelet.oom_kill(namespace or self.namespace, name)

    def evict(self, name: str, message: str = "The node was low on resource: memory.",
              namespace: str | None = None) -> None:
        self.kubelet.evict(namespace or self.namespace, name, message)

    def wait_for(self, name: str, predicate: Callable[[Pod | None], bool], timeout: float = 10.0,
                 namespace: str | None = None) -> Pod | None:
        """Wait until the stored pod (None once gone) satisfies `predicate`; return it."""
        deadline = time.monotonic() + timeout
        with self.store.changed:
            while True:
                pod = self.pod(name, namespace)
                if predicate(pod):
                    return pod
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pod {name}: condition not met within {timeout} s; last seen {pod and pod['status']}")
                self.store.changed.wait(min(left, 0.05))

    def wait_phase(self, name: str, *phases: str, timeout: float = 10.0) -> Pod:
        pod = self.wait_for(name, lambda p: p is not None and p["status"]["phase"] in phases, timeout)
        assert pod is not None
        return pod

    # ----------------------------------------------------------------- HTTP plumbing
    def _track(self, conn: socket.socket, alive: bool) -> None:
        """Remember open connections, so `stop` can end idle keep-alive ones at once."""
        with self._lock:
            if not alive:
                self._connections.discard(conn)
            elif self._stopping.is_set():
                _shutdown(conn)
            else:
                self._connections.add(conn)

    def _handle(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        match = re.match(PATH, parts.path)
        if match is None:
            handler.send_json(404, status_object(404, "NotFound", "the server could not find the requested resource"))
            return
        ns, name, log = match.group("ns"), match.group("name"), match.group("log")
        watch = query.get("watch", ["false"])[0].lower() in ("true", "1")
        resource = "pods/log" if log else "pods"
        verb = {
            ("GET", False): "list", ("POST", False): "create",
            ("GET", True): "get", ("DELETE", True): "delete", ("PUT", True): "update", ("PATCH", True): "patch",
        }.get((method, name is not None))
        if verb is None or (log and method != "GET"):
            handler.send_json(405, status_object(405, "MethodNotAllowed",
                                                 "the server does not allow this method on the requested resource"))
            return
        if verb == "list" and watch:
            verb = "watch"
        request = _Request((resource, verb), ns, name, query, body)
        with self._lock:
            self.calls[request.verb] += 1
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            handler.send_json(401, status_object(401, "Unauthorized", "Unauthorized"))
            return
        denial = self.denials.get(request.verb)
        if denial is not None:
            handler.send_json(denial.code, self._denied(request, denial))
            return
        if self.latency > 0 or self.gate > 0:
            self._hold()
        fault = self._fault(request)
        if fault == "error":
            handler.send_json(500, status_object(500, "InternalError", "Internal error occurred: injected fault"))
            return
        try:
            code, content_type, payload = self._serve(request, handler)
        except ApiError as exc:
            code, content_type, payload = exc.code, "application/json", json.dumps(exc.status()).encode()
        if code == 0:
            return  # a streamed answer (watch) was written already
        if fault in ("hang", "drop"):
            if fault == "hang":
                self._stopping.wait(self.faults.hang_seconds)
            handler.close_connection = True
            _shutdown(handler.connection)  # no answer at all: the client sees the connection end
            return
        if fault == "gateway":
            code, content_type = 504, "application/json"
            payload = json.dumps(status_object(504, "Timeout", "Timeout: request did not complete within the "
                                                                "allowed duration")).encode()
        handler.send_body(code, payload, content_type)

    def _fault(self, request: _Request) -> str | None:
        faults = self.faults
        if faults.rate <= 0 or (faults.verbs is not None and request.verb not in faults.verbs):
            return None
        target = request.name
        if target is None and request.verb == ("pods", "create"):
            try:
                target = json.loads(request.body or b"{}").get("metadata", {}).get("name")
            except ValueError:
                target = None
        if target is None:
            target = "?" + "&".join(f"{k}={v}" for k, vs in sorted(request.query.items()) for v in vs)
        key = f"{request.verb[0]}:{request.verb[1]}:{request.namespace}/{target}"
        with self._lock:
            occurrence = self._occurrences[key]
            self._occurrences[key] += 1
            fault = faults.pick(key, occurrence, self._streaks[key])
            if fault is None:
                self._streaks[key] = 0
            else:
                self._streaks[key] += 1
                self.faults_injected[fault] += 1
        return fault

    def _denied(self, request: _Request, denial: Denial) -> dict[str, Any]:
        code = denial.code
        if code == 401:
            return status_object(401, "Unauthorized", "Unauthorized")
        if code >= 500:
            return status_object(code, "ServiceUnavailable" if code == 503 else "InternalError",
                                 "the server is currently unable to handle the request")
        resource, verb = request.verb
        if denial.message:
            return status_object(403, "Forbidden", denial.message, {"name": request.name or "", "kind": "pods"})
        subject = f'pods "{request.name}"' if request.name else "pods"
        message = (f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" in API group "" '
                   f'in the namespace "{request.namespace}"')
        return status_object(403, "Forbidden", message, {"name": request.name or "", "kind": resource.split("/")[0]})

    def _serve(self, request: _Request, handler: _Handler) -> tuple[int, str, bytes]:
        ns, name = request.namespace, request.name
        resource, verb = request.verb
        as_json = "application/json"
        if resource == "pods/log":
            assert name is not None
            return 200, "text/plain", self._log(ns, name, request.query)
        if verb == "create":
            try:
                body = json.loads(request.body or b"null")
            except ValueError:
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format") from None
            return 201, as_json, json.dumps(self.store.create(ns, body)).encode()
        if verb == "get":
            assert name is not None
            return 200, as_json, json.dumps(self.store.get(ns, name)).encode()
        if verb == "list":
            items, version = self.store.list(ns, request.query.get("labelSelector", [""])[0])
            body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}
            return 200, as_json, json.dumps(body).encode()
        if verb == "watch":
            self._watch(request, handler)
            return 0, "", b""
        if verb == "delete":
            assert name is not None
            return 200, as_json, json.dumps(self.kubelet.delete(ns, name, self._grace(request, ns, name))).encode()
        raise ApiError(405, "MethodNotAllowed", f"the simulator does not implement {verb} on {resource}")

    def _grace(self, request: _Request, ns: str, name: str) -> int:
        grace: Any = None
        if request.body:
            try:
                options = json.loads(request.body)
            except ValueError:
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format") from None
            if isinstance(options, dict):
                grace = options.get("gracePeriodSeconds")
        if grace is None and "gracePeriodSeconds" in request.query:
            grace = request.query["gracePeriodSeconds"][0]
        if grace is None:
            grace = self.store.get(ns, name)["spec"].get("terminationGracePeriodSeconds", 30)
        try:
            return int(grace)
        except (TypeError, ValueError):
            raise ApiError(400, "BadRequest", f"invalid gracePeriodSeconds {grace!r}") from None

    def _log(self, ns: str, name: str, query: dict[str, list[str]]) -> bytes:
        pod = self.store.get(ns, name)
        container = pod["spec"]["containers"][0]["name"]
        wanted = query.get("container", [container])[0]
        if wanted != container:
            raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
        path = self.kubelet.log_of(ns, name)
        if path is None:
            statuses = pod["status"].get("containerStatuses") or [{}]
            waiting = (statuses[0].get("state") or {}).get("waiting")
            why = f": {waiting['reason']}" if waiting else ""
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start{why}')
        data = path.read_bytes()
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"][0]):]) if int(query["tailLines"][0]) else b""
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        return data

    def _watch(self, request: _Request, handler: _Handler) -> None:
        """A chunked stream of {"type", "object"} lines, as the real API server sends it.

        resourceVersion "" or "0": first an ADDED per matching pod, then the changes; a version:
        the changes after it, or one ERROR event (a 410 `Expired` Status) when the log no longer
        reaches back that far. The stream ends after timeoutSeconds (with a BOOKMARK carrying the
        current version first, if allowWatchBookmarks), or when the server stops.
        """
        terms = parse_selector(request.query.get("labelSelector", [""])[0])
        bookmarks = request.query.get("allowWatchBookmarks", ["false"])[0].lower() in ("true", "1")
        since = request.query.get("resourceVersion", [""])[0]
        try:
            timeout = float(request.query.get("timeoutSeconds", ["1800"])[0])
            last = int(since) if since not in ("", "0") else None
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r} or timeoutSeconds") from None
        with self.store.lock:
            if last is None:
                items, version = self.store.list(request.namespace, "")
                initial = [("ADDED", p) for p in items if matches(p, terms)]
                last = int(version)
            else:
                initial = []
                try:
                    self.store.events_after(last)
                except ApiError as exc:
                    initial, last = [("ERROR", exc.status())], -1
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event: str, obj: dict[str, Any]) -> None:
            line = json.dumps({"type": event, "object": obj}).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            handler.wfile.flush()

        try:
            for event, obj in initial:
                send(event, obj)
            deadline = time.monotonic() + timeout
            while last >= 0 and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    if bookmarks:
                        send("BOOKMARK", {"kind": "Pod", "apiVersion": "v1",
                                          "metadata": {"resourceVersion": str(self.store.version)}})
                    break
                with self.store.changed:
                    try:
                        events = self.store.events_after(last)
                    except ApiError as exc:  # compacted while we were behind: as the real server does
                        send("ERROR", exc.status())
                        break
                    if not events:
                        self.store.changed.wait(min(0.1, left))
                        continue
                last = events[-1].version
                for e in events:
                    if e.namespace == request.namespace and matches(e.pod, terms):
                        send(e.type, e.pod)
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            pass  # the client went away
        handler.close_connection = True
