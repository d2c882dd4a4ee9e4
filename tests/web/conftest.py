"""Fixtures of the web tests: a real `orchestra web` server (uvicorn on a free port, in a thread)
over the `env` fixture's database, on SQLite and PostgreSQL, and an HTTP client that can come
from the trusted proxy (127.0.0.1, which may vouch for a user with X-Forwarded-User) or from an
untrusted address (127.0.0.2, whose header must count for nothing)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestra.services.context import Context
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


@pytest.fixture
def web(web_env: dict[str, str]) -> Iterator[WebClient]:
    """A running dashboard over the test's database and a client for it."""
    ctx = Context.from_env()
    server = start_in_thread(ctx)
    client = WebClient(server)
    yield client
    client.close()
    server.stop()
    ctx.engine.dispose()
