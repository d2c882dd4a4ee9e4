"""The Prometheus endpoint of `orchestra scheduler run --metrics-port` (issue 16, item 1), scraped
over HTTP while the real service runs real local jobs, each value checked against the database.

Nothing is timed: every wait is on a condition (the scrape shows what the database holds, the
last cycle's timestamp passes the task's end) with a generous limit.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from orchestra import fairshare
from orchestra.config import load_settings
from orchestra.db.engine import make_engine
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.metrics import METRIC_NAMES
from orchestra.services.status import version
from tests.db.test_bad_input import snapshot
from tests.e2e.scheduler_helpers import ORCHESTRA, STARTED, Service, make_inputs
from tests.helpers import Cli

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MetricsService(Service):
    """`orchestra scheduler run --metrics-port PORT` (Service's kill/stop/log, its own arguments)."""

    def __init__(self, port: int, *args: str) -> None:  # noqa: super().__init__ would start a plain one
        self.port = port
        self.proc = subprocess.Popen([ORCHESTRA, "scheduler", "run", "--metrics-port", str(port), *args],
                                     env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)  # type: ignore[arg-type]
        self.reader.start()
        STARTED.append(self)

    def scrape(self, host: str = "127.0.0.1") -> Samples:
        with urllib.request.urlopen(f"http://{host}:{self.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def until(done: Callable[[], bool], what: str, service: Service, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not _holds(done):
        assert service.proc.poll() is None, f"the scheduler died: {service.log}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}: {service.log}"
        time.sleep(0.2)


def _holds(done: Callable[[], bool]) -> bool:
    try:
        return bool(done())
    except OSError:  # the endpoint is not up yet (connection refused)
        return False


def pick(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of `name` whose labels include `labels`."""
    return {key: v for (n, key), v in samples.items() if n == name and set(labels.items()) <= set(key)}


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(pick(samples, name, **labels).values())


def db_jobs(url: str) -> dict[tuple[str, str, str, str], int]:
    """Jobs per (cluster, queue, user, state) in the pending and live states, counted the slow way."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Task.cluster, Task.queue, User.name, Job.status, func.count())
                            .join(Task, Task.id == Job.task_id).join(User, User.id == Task.owner_id)
                            .where(Job.status.in_(["queued", "starting", "running"]))
                            .group_by(Task.cluster, Task.queue, User.name, Job.status)).all()
    engine.dispose()
    return {(c, q, u, s): n for c, q, u, s, n in rows}


def db_attempts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Attempt.status, func.count()).group_by(Attempt.status)).all()
    engine.dispose()
    return dict(rows)  # type: ignore[arg-type]


def scraped_jobs(samples: Samples) -> dict[tuple[str, str, str, str], int]:
    out = {}
    for key, v in pick(samples, "orchestra_jobs").items():
        labels = dict(key)
        if v:
            out[(labels["cluster"], labels["queue"], labels["user"], labels["state"])] = int(v)
    return out


@pytest.fixture
def world(cli: Cli, storage: Path, tmp_path: Path) -> Path:
    """Six configs; a task whose jobs wait for a flag file, then the odd ones fail."""
    configs, data = make_inputs(storage / "in", 6)
    cli.ok(f"orchestra_registry -d user.alice.cfg -p {configs}")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data}")
    flag = tmp_path / "go"
    cli.ok("maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.m --containerImage a/b "
           f"--exec 'while [ ! -e {flag} ]; do sleep 0.1; done; : %DATA %OUT; case %IN in *[135].cfg) exit 3;; esac' "
           "--bypass --max-retries 0")
    return flag


def test_every_metric_matches_the_database(cli: Cli, world: Path, env: dict[str, str]) -> None:
    url = env["ORCHESTRA_DATABASE_URL"]
    service = MetricsService(free_port())
    try:
        # 1. Four jobs run (cpu has 4 slots) and wait for the flag; two stay queued.
        until(lambda: scraped_jobs(service.scrape()).get(("LPS", "cpu", "alice", "running")) == 4
              and scraped_jobs(service.scrape()).get(("LPS", "cpu", "alice", "queued")) == 2,
              "the scrape shows 4 running and 2 queued", service)
        samples = service.scrape()
        assert scraped_jobs(samples) == db_jobs(url) == {("LPS", "cpu", "alice", "running"): 4,
                                                         ("LPS", "cpu", "alice", "queued"): 2}
        assert value(samples, "orchestra_slots", cluster="LPS", queue="cpu", kind="used") == 4
        assert value(samples, "orchestra_slots", cluster="LPS", queue="cpu", kind="total") == 4
        assert value(samples, "orchestra_slots", cluster="LPS", queue="gpu", kind="total") == 1
        assert value(samples, "orchestra_slots", cluster="LPS", queue="gpu", kind="used") == 0
        assert value(samples, "orchestra_dispatched_total", cluster="LPS", queue="cpu") == sum(db_attempts(url).values()) == 4
        assert value(samples, "orchestra_queue_wait_seconds_count", cluster="LPS", queue="cpu") == 4
        assert value(samples, "orchestra_queue_wait_seconds_sum", cluster="LPS", queue="cpu") >= 0
        assert value(samples, "orchestra_holds") == 0 and pick(samples, "orchestra_holds", cluster="LPS", queue="cpu")
        seen = {name for name, _ in samples}

        # 2. The flag: the odd jobs fail, the even succeed, the task ends.
        world.write_text("go")
        started = time.time()
        until(lambda: cli.ok("maestro task list --json").out.count('"partial"') or
              cli.ok("maestro task list --json").out.count('"broken"') or
              cli.ok("maestro task list --json").out.count('"completed"'), "the task ends", service)
        engine = make_engine(url)
        with engine.connect() as conn:
            finished = conn.execute(select(Task.finished_at)).scalar_one()
        engine.dispose()
        until(lambda: value(service.scrape(), "orchestra_scheduler_last_cycle_timestamp_seconds") >= finished,
              "a refresh after the task's end", service)
        samples = service.scrape()
        attempts = db_attempts(url)
        assert attempts == {"succeeded": 3, "failed": 3}
        for result in ("succeeded", "failed", "killed", "lost"):
            assert value(samples, "orchestra_attempts_ended_total", cluster="LPS", queue="cpu",
                         result=result) == attempts.get(result, 0), result
        assert value(samples, "orchestra_dispatched_total", cluster="LPS", queue="cpu") == 6
        assert value(samples, "orchestra_queue_wait_seconds_count", cluster="LPS", queue="cpu") == 6
        assert scraped_jobs(samples) == db_jobs(url) == {}
        assert value(samples, "orchestra_slots", kind="used") == 0
        assert value(samples, "orchestra_backend_errors_total") == 0
        assert value(samples, "orchestra_build_info", version=version()) == 1
        assert finished <= value(samples, "orchestra_scheduler_last_cycle_timestamp_seconds") <= time.time()
        assert started - 3600 < finished

        # Cycle timings: every step of a full cycle, and short passes (the ends came by SIGCHLD).
        for step in ("reconcile", "requests", "expand", "tasks", "dispatch", "launch", "total"):
            assert value(samples, "orchestra_cycle_seconds_count", kind="full", step=step) >= 1, step
        assert value(samples, "orchestra_cycle_seconds_count", kind="short", step="total") >= 1

        # Fair share: alice ran 6 jobs and is charged; her factor is the policy's, over every user.
        engine = make_engine(url)
        with engine.connect() as conn:
            users = conn.execute(select(User.name, User.share, User.usage, User.usage_at).order_by(User.name)).all()
        engine.dispose()
        settings = load_settings()
        now = time.time()
        usage = fairshare.decayed([u.usage for u in users], [u.usage_at for u in users], now, settings.fairshare)
        alice = [u.name for u in users].index("alice")
        assert usage[alice] > 0
        assert value(samples, "orchestra_usage_slot_hours", user="alice") == pytest.approx(usage[alice] / 3600, rel=1e-3)
        factors = fairshare.fairshare_factor(usage, [u.share for u in users])  # no accounts configured
        assert value(samples, "orchestra_fairshare_factor", user="alice") == pytest.approx(factors[alice], rel=1e-3)
        assert 0 < factors[alice] < 1
        exported = seen | {name for name, _ in samples}
        for name in METRIC_NAMES:  # each declared metric really is served
            assert any(e == name or e.startswith(name + "_") for e in exported), name
        service.stop()
    finally:
        service.kill()


def test_host_defaults_to_loopback_and_user_labels_can_go(cli: Cli, world: Path, env: dict[str, str]) -> None:
    config = Path(env["ORCHESTRA_CONFIG"])
    config.write_text(config.read_text().replace("[scheduler]\n", "[scheduler]\nmetrics_user_labels = false\n", 1))
    service = MetricsService(free_port())
    try:
        until(lambda: any("metrics at http://127.0.0.1:" in line for line in service.lines), "it says where", service)
        # Bound to the loopback only: another address of this machine is refused.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: the route picks this host's own address
            own = probe.getsockname()[0]
        if own != "127.0.0.1":
            with pytest.raises(OSError):
                socket.create_connection((own, service.port), timeout=5).close()
        until(lambda: value(service.scrape(), "orchestra_jobs", state="running") == 4, "4 running", service)
        samples = service.scrape()
        jobs = pick(samples, "orchestra_jobs")
        assert jobs and all("user" not in dict(key) for key in jobs), jobs
        assert value(samples, "orchestra_jobs", cluster="LPS", queue="cpu", state="queued") == 2
        assert not pick(samples, "orchestra_fairshare_factor") and not pick(samples, "orchestra_usage_slot_hours")
        assert all("alice" not in str(key) for _, key in samples)
        world.write_text("go")
        service.stop()
    finally:
        service.kill()


def test_metrics_host_from_the_config(cli: Cli, world: Path, env: dict[str, str]) -> None:
    config = Path(env["ORCHESTRA_CONFIG"])
    port = free_port()
    config.write_text(config.read_text().replace(
        "[scheduler]\n", f'[scheduler]\nmetrics_port = {port}\nmetrics_host = "0.0.0.0"\n', 1))
    proc = subprocess.Popen([ORCHESTRA, "scheduler", "run"], env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    service = MetricsService.__new__(MetricsService)  # adopt it: the same kill/stop/scrape
    service.port, service.proc, service.lines = port, proc, []
    service.reader = threading.Thread(target=lambda: service.lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    service.reader.start()
    STARTED.append(service)
    try:
        until(lambda: any(f"metrics at http://0.0.0.0:{port}" in line for line in service.lines), "it serves", service)
        until(lambda: value(service.scrape("127.0.0.1"), "orchestra_build_info") == 1, "a scrape answers", service)
        world.write_text("go")
        proc.send_signal(signal.SIGTERM)
        assert service.wait_exit(90) == 0, service.log
    finally:
        service.kill()


@pytest.mark.parametrize("line, says", [
    ("orchestra scheduler run --metrics-port 70000", "--metrics-port': Input should be less than or equal to 65535"),
    ("orchestra scheduler run --metrics-port http", "--metrics-port': Input should be a valid integer"),
])
def test_bad_port_refused_in_one_line(cli: Cli, world: Path, env: dict[str, str], line: str, says: str) -> None:
    before = snapshot(env["ORCHESTRA_DATABASE_URL"])
    result = cli(line, user="<admin>")
    assert result.code != 0 and says in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err
    assert snapshot(env["ORCHESTRA_DATABASE_URL"]) == before


def test_port_in_use_refused_in_one_line(cli: Cli, world: Path, env: dict[str, str]) -> None:
    before = snapshot(env["ORCHESTRA_DATABASE_URL"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([ORCHESTRA, "scheduler", "run", "--once", "--metrics-port", str(port)],
                                env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use; choose another --metrics-port "
        "(or [scheduler] metrics_port / metrics_host)"], result.stderr
    assert snapshot(env["ORCHESTRA_DATABASE_URL"]) == before


def test_bad_port_in_the_config_is_refused(cli: Cli, env: dict[str, str]) -> None:
    config = Path(env["ORCHESTRA_CONFIG"])
    config.write_text(config.read_text().replace("[scheduler]\n", "[scheduler]\nmetrics_port = 70000\n", 1))
    result = cli("orchestra scheduler run --once", user="<admin>")
    assert result.code != 0 and "metrics_port" in result.err and len(result.err.strip().splitlines()) == 1, result.err
