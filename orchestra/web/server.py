"""Serving the dashboard: `orchestra web` in the foreground, or a server in a thread of this
process (tests, the bench) on a socket bound before it starts, so its URL is known at once."""
from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from orchestra.errors import OrchestraError
from orchestra.services.context import Context
from orchestra.web.app import create_app

log = logging.getLogger("orchestra.web")


def _config(ctx: Context, proxy_headers: bool = False) -> uvicorn.Config:
    # proxy_headers off: the peer address must stay the proxy's own, since trusting the header is
    # decided from it (orchestra/web/viewer.py); access logs off: a request per second per live page.
    return uvicorn.Config(create_app(ctx), log_level="warning", access_log=False, proxy_headers=proxy_headers,
                          timeout_graceful_shutdown=2)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming the address and the fix."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it a keep-alive response written in two parts (head,
    # body) waits for the client's delayed ACK, 40 ms per request (scripts/bench_web.py measured it).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OrchestraError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; "
                             "choose another --port or [web] port") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT end the process with status 0 after the graceful stop:
    uvicorn >= 0.29 raises the signal again once it has stopped, so the process died by it (143)
    and a supervisor or a test could not tell a clean stop from a crash."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(ctx: Context, host: str, port: int) -> None:
    """Serve until interrupted (SIGINT/SIGTERM, then exit 0), on host:port."""
    sock = bind(host, port)
    log.info("Orchestra dashboard at http://%s:%d/ (read-only; JSON under /api/)", host, sock.getsockname()[1])
    _Server(_config(ctx)).run(sockets=[sock])


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_in_thread(ctx: Context, host: str = "127.0.0.1") -> RunningServer:
    """A server on a free port of `host` in a daemon thread; returns once it accepts connections."""
    sock = bind(host, 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(ctx))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="orchestra-web", daemon=True)
    thread.start()
    ticker = threading.Event()  # never set: a wait that sleeps without time.sleep's busy look
    while not server.started and thread.is_alive():
        ticker.wait(0.01)
    if not server.started:
        raise RuntimeError("the web server did not start (see the log above)")
    return RunningServer(f"http://{host}:{port}", server, thread)
