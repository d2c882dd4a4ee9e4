"""A watch on the scheduler's pods whose only job is to *wake* the scheduler when one ends.

The survey (one labelled list per pass) stays the single source of truth: this watch decides
nothing and records nothing, it only shortens the wait before the next short pass from the next
interval (minutes) to one event's round trip (milliseconds). A missed, late or duplicated event
costs time, never correctness, and crash safety stays the cycle's alone.

The protocol is client-go's reflector, reduced to what waking needs:

- list once for a resourceVersion, then watch from it: no change in between is missed;
- each stream asks the server to end after `timeout` seconds and is resumed from the last version
  seen (events missed while reconnecting are replayed by the server);
- 410 Gone (that version was compacted away): list again, wake if the list shows an end the
  watch did not report, watch from the new version;
- any other failure (API down, 5xx, refused, dropped connection): back off (doubling, at most
  `MAX_BACKOFF`) and resume; the thread logs and carries on, it never dies of it.

`healthy` is true while a stream is open. While it is not, the backend asks the loop to poll;
a loss that lasts `down_after` seconds wakes the loop once, so that it starts polling at once
rather than at the next full cycle.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch

log = logging.getLogger(__name__)

Pod = dict[str, Any]
MAX_BACKOFF = 10.0
GONE = 410


def status_message(exc: ApiException) -> str:
    """The `message` of the Status body, or the HTTP reason: one line either way (the backend's too)."""
    try:
        body = json.loads(exc.body or "")
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return " ".join(str(message or exc.reason or f"HTTP {exc.status}").split())


def _shutdown(response: Any) -> None:
    """Unblock a thread reading `response` (an urllib3 response) by shutting its socket down."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class PodWatch:
    """Watches the pods matching `selector` in `namespace` on a daemon thread; calls `wake()` when
    one ends (`ended(pod)` says so for the raw pod dict) or vanishes while live."""

    def __init__(
        self,
        configuration: client.Configuration,
        namespace: str,
        selector: str,
        wake: Callable[[], None],
        ended: Callable[[Pod], bool],
        *,
        timeout: int = 60,
        request_timeout: float = 30.0,
        backoff: float = 0.5,
        down_after: float = 5.0,
    ) -> None:
        """`timeout`: seconds the server keeps one stream open (its read timeout adds
        `request_timeout`, so a silently dead connection is noticed too)."""
        # Its own connection pool: a stream holds its connection for minutes, the backend's pool
        # is sized for bursts of short calls.
        self.api_client = client.ApiClient(configuration)
        self.api = client.CoreV1Api(self.api_client)
        self.namespace = namespace
        self.selector = selector
        self.wake = wake
        self.ended = ended
        self.timeout = max(1, int(timeout))
        self.request_timeout = request_timeout
        self.backoff = max(0.01, backoff)
        self.down_after = down_after
        self.version: str | None = None  # the last resourceVersion seen; None: list first
        self.known: dict[str, bool] = {}  # pod name -> its end was reported
        self.streams = 0  # streams opened (tests and logs)
        self._healthy = False
        self._down_since: float | None = None
        self._announced = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name="orchestra-k8s-watch", daemon=True)

    @property
    def healthy(self) -> bool:
        return self._healthy and self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        """Stop the thread: a blocked read is cut off at once (socket shutdown)."""
        with self._lock:
            self._stop.set()
            response = self._response
        if response is not None:
            _shutdown(response)
        if self._thread.is_alive():
            self._thread.join(wait)
        if self._thread.is_alive():
            log.debug("the pod watch did not stop within %.1f s; it is a daemon thread and dies with us", wait)
        else:
            self.api_client.close()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        delay = self.backoff
        while not self._stop.is_set():
            relisted = self.version is None
            began = time.monotonic()
            problem: str | None
            try:
                if relisted:
                    self._relist()
                self._stream()
                if time.monotonic() - began >= min(1.0, self.timeout / 2):
                    delay = self.backoff  # a stream that ended by its timeout: resume at once
                    continue
                problem = None  # ended at once, e.g. a proxy that does not stream: no busy loop
            except ApiException as exc:
                if exc.status == GONE and not relisted:
                    log.debug("pod watch: resourceVersion %s expired (410); listing again", self.version)
                    self.version = None
                    continue
                problem = f"HTTP {exc.status}: {status_message(exc)[:300]}"  # (410 right after a list: back off)
                self.version = None if exc.status == GONE else self.version
            except Exception as exc:  # noqa: BLE001 - whatever it is, the thread backs off and carries on
                problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            if self._stop.is_set():
                break
            if problem is not None:
                self._lost(problem)
            self._pause(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, MAX_BACKOFF)
        self._healthy = False

    def _relist(self) -> None:
        """One list: the version to watch from, and any end (or disappearance) not reported yet."""
        response = self.api.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _preload_content=False,
            _request_timeout=(self.request_timeout, self.request_timeout))
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        now = {pod["metadata"]["name"]: self.ended(pod) for pod in body.get("items") or []}
        news = any(done and not self.known.get(name, False) for name, done in now.items())
        vanished = any(not done and name not in now for name, done in self.known.items())
        self.known = now
        self.version = str(body["metadata"]["resourceVersion"])
        if news or vanished:
            self._wake()

    def _open(self, *args: Any, **kwargs: Any) -> Any:
        """The call Watch.stream makes: once it returns, the stream is open (HTTP 200)."""
        if self._stop.is_set():
            raise InterruptedError("the pod watch is stopping")
        response = self.api.list_namespaced_pod(*args, **kwargs)
        with self._lock:
            self._response = response
            stopping = self._stop.is_set()
        if stopping:
            _shutdown(response)
        else:
            self._recovered()
        return response

    def _stream(self) -> None:
        watch = Watch(return_type="object")  # events as plain dicts: no model building per event
        self.streams += 1
        try:
            for event in watch.stream(
                self._open, self.namespace, label_selector=self.selector, resource_version=self.version,
                timeout_seconds=self.timeout, allow_watch_bookmarks=True,
                _request_timeout=(self.request_timeout, self.timeout + self.request_timeout),
            ):
                self._event(event["type"], event["raw_object"])
                if self._stop.is_set():
                    break
        finally:
            with self._lock:
                self._response = None

    def _event(self, kind: str, pod: Pod) -> None:
        meta = pod.get("metadata") or {}
        if meta.get("resourceVersion"):
            self.version = str(meta["resourceVersion"])
        if kind == "BOOKMARK":
            return
        name = meta.get("name")
        if not name:
            return
        if kind == "DELETED":
            if not self.known.pop(name, False):
                self._wake()  # gone while live: the survey records it lost (or it was killed)
            return
        if self.ended(pod):
            if not self.known.get(name, False):
                self.known[name] = True
                self._wake()
        else:
            self.known[name] = False

    def _wake(self) -> None:
        try:
            self.wake()
        except Exception:  # noqa: BLE001 - a faulty callback must not take the watch down with it
            log.exception("the pod watch's wake-up callback failed")

    # ------------------------------------------------------------------ health
    def _recovered(self) -> None:
        if self._down_since is not None:
            log.info("pod watch restored after %.1f s", time.monotonic() - self._down_since)
        self._healthy = True
        self._down_since = None
        self._announced = False

    def _lost(self, problem: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("pod watch in namespace %s failed (%s); retrying, and polling until it is back",
                        self.namespace, problem)
        else:
            log.debug("pod watch still failing: %s", problem)
        self._healthy = False

    def _pause(self, delay: float) -> None:
        """Back off `delay` s. Once down for `down_after` s, wake the loop once: it asks the
        backend how often to poll after each pass, and would otherwise only ask at the next cycle."""
        end = time.monotonic() + delay
        while not self._stop.is_set():
            now = time.monotonic()
            due = (self._down_since or now) + self.down_after
            if not self._announced and now >= due:
                self._announced = True
                self._wake()
            left = end - now
            if left <= 0:
                return
            self._stop.wait(left if self._announced else min(left, max(0.0, due - now)))
