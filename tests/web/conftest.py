"""Fixtures of the web tests: a real `orchestra web` server (uvicorn on a free port, in a thread)
over the `env` fixture's database, on SQLite and PostgreSQL, and an HTTP client that can come
from the trusted proxy (127.0.0.1, which may vouch for a user with X-Forwarded-User) or from an
untrusted address (127.0.0.2, whose header must count for nothing)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from orchestra.naming import USER_NAME
from orchestra.services.context import Context
from orchestra.web.app import Admins
from orchestra.web.server import RunningServer, start_in_thread
from tests.helpers import write_config

WEB_CONFIG = """
[web]
trusted_proxies = ["127.0.0.1"]
"""
UNTRUSTED = "127.0.0.2"  # a loopback address that is not a trusted proxy


class WebClient:
    """GETs against one running server, as a user vouched for by the proxy or as anybody."""

    def __init__(self, server: RunningServer) -> None:
        self.url = server.url
        self._trusted = httpx.Client(base_url=server.url, timeout=30)
        self._untrusted = httpx.Client(base_url=server.url, timeout=30,
                                       transport=httpx.HTTPTransport(local_address=UNTRUSTED))

    def get(self, path: str, user: str | None = None, *, trusted: bool = True) -> httpx.Response:
        """`path` as `user` (the proxy's X-Forwarded-User; None: anonymous), from the proxy's
        address (`trusted`) or from another one."""
        headers = {"X-Forwarded-User": user} if user else {}
        return (self._trusted if trusted else self._untrusted).get(path, headers=headers)

    def json(self, path: str, user: str | None = None) -> object:
        response = self.get(path, user)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
        return response.json()

    def close(self) -> None:
        self._trusted.close()
        self._untrusted.close()


@pytest.fixture
def web_env(env: dict[str, str], storage: Path, tmp_path: Path) -> dict[str, str]:
    """`env` with a [web] section trusting 127.0.0.1 as the reverse proxy."""
    write_config(Path(env["ORCHESTRA_CONFIG"]), storage, WEB_CONFIG)
    return env


@contextmanager
def serving() -> Iterator[WebClient]:
    """A dashboard over the environment's database, in a thread, with a client; stopped after."""
    ctx = Context.from_env()
    server = start_in_thread(ctx)
    client = WebClient(server)
    try:
        yield client
    finally:
        client.close()
        server.stop()
        ctx.engine.dispose()


@pytest.fixture
def web(web_env: dict[str, str]) -> Iterator[WebClient]:
    """A running dashboard over the test's database and a client for it."""
    with serving() as client:
        yield client


@pytest.fixture
def public_web(web_env: dict[str, str], storage: Path) -> Iterator[WebClient]:
    """A dashboard with `[web] public = true`: everyone sees everything."""
    write_config(Path(web_env["ORCHESTRA_CONFIG"]), storage, WEB_CONFIG + "public = true\n")
    with serving() as client:
        yield client


def admin_name() -> str:
    """A login the dashboard counts as an admin (SQLite: the file's owner; PostgreSQL: a superuser)."""
    ctx = Context.from_env()
    try:
        return sorted(n for n in Admins(ctx).names() if USER_NAME.fullmatch(n))[0]
    finally:
        ctx.engine.dispose()


def read_events(web: WebClient, path: str, user: str | None = "alice", deadline: float = 60.0) -> Iterator[dict[str, str]]:
    """The server-sent events of `path`, each as its {element id: HTML} object; fails the test
    when none comes before the deadline (a keepalive comes at least every 15 s)."""
    end = time.monotonic() + deadline
    headers = {"X-Forwarded-User": user} if user else {}
    with httpx.Client(base_url=web.url, timeout=30) as client, client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < end, f"{path}: no expected event before the deadline"
            if line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))
