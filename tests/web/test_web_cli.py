"""`orchestra web` as the admin runs it: a real process on a real port, on SQLite and PostgreSQL.

It serves the pages and the JSON API with no scheduler running (it only reads the database); a
port already taken is refused in one line with a non-zero exit and no traceback; SIGTERM (what
systemd, Docker and Kubernetes send) stops it cleanly, exit status 0.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Cli

ORCHESTRA = str(Path(sys.executable).parent / "orchestra")
DEADLINE = 60.0  # seconds the server may take to answer (import + migrations check), never slept


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebProcess:
    """`orchestra web --port P` in its own process, its output collected by a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([ORCHESTRA, "web", "--port", str(port)], env=dict(os.environ),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)  # type: ignore[arg-type]
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_answering(self) -> None:
        """Until an HTTP request gets any answer; fails if the process exits first."""
        deadline = time.monotonic() + DEADLINE
        while True:
            assert self.proc.poll() is None, f"`orchestra web` exited with {self.proc.returncode}: {self.output}"
            try:
                httpx.get(f"{self.url}/static/orchestra.css", timeout=5)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"`orchestra web` never answered: {self.output}"
                time.sleep(0.05)

    def wait_exit(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait_exit()


@pytest.fixture
def web_process(env: dict[str, str]) -> Iterator[type[WebProcess]]:
    """Starts `orchestra web` processes over the test's database; none outlives the test."""
    started: list[WebProcess] = []

    class Tracked(WebProcess):
        def __init__(self, port: int) -> None:
            super().__init__(port)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


def test_serves_pages_and_api_without_a_scheduler_and_stops_cleanly_on_sigterm(
        cli: Cli, storage: Path, web_process: type[WebProcess]) -> None:
    data = storage / "data.txt"
    data.write_text("the data\n")
    (storage / "configs").mkdir()
    (storage / "configs" / "c0.cfg").write_text("config\n")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {storage / 'configs'}/ --cluster LPS")
    cli.ok("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.idle "
           "--containerImage alice/img --exec 'echo %DATA %IN %OUT'")
    web = web_process(free_port())  # no `orchestra scheduler run` anywhere in this test
    web.wait_answering()
    for path in ("/", "/queue", "/tasks", "/tasks/user.alice.idle", "/usage"):
        page = httpx.get(web.url + path, timeout=30)
        assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:300]}"
        assert page.text.lstrip().lower().startswith("<!doctype html>"), path
    assert "user.alice.idle" in httpx.get(web.url + "/tasks", timeout=30).text
    status = httpx.get(web.url + "/api/status", timeout=30)
    assert status.status_code == 200 and status.headers["content-type"].startswith("application/json")
    assert [t["name"] for t in httpx.get(web.url + "/api/tasks", timeout=30).json()] == ["user.alice.idle"]

    web.proc.send_signal(signal.SIGTERM)
    assert web.wait_exit() == 0, web.output
    assert "Traceback" not in web.output, web.output
    assert f"Orchestra dashboard at http://127.0.0.1:{web.port}/" in web.output


def test_a_port_in_use_is_refused_in_one_line(env: dict[str, str], web_process: type[WebProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        web = web_process(port)
        code = web.wait_exit()
    assert code != 0
    lines = web.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in web.output, web.output
    assert lines[0].startswith(f"error: cannot serve the dashboard on 127.0.0.1:{port}: "), lines
    assert "choose another --port or [web] port" in lines[0]
