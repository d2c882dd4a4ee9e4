"""Scheduler liveness, visible: the service's heartbeat rows, `orchestra status`, and the one-line
warning of `maestro task list`, `maestro queue` and `orchestra status` (issue 14, item 5).

The real service runs as a subprocess (`orchestra scheduler run`). Nothing is timed: every wait is
on a condition (the warning appears, goes away, the process exits) with a generous limit.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.db.test_security import POSTGRES_ONLY, World, role_url, world  # noqa: F401 - fixture
from tests.e2e.scheduler_helpers import Service, run_scheduler
from tests.helpers import CONFIG, Cli

COMMANDS = ("maestro task list", "maestro queue", "orchestra status")
STALE = "the scheduler has not been seen for"


def warnings(cli: Cli, line: str) -> list[str]:
    """The command's warning lines (stderr); its stdout must still be what it always was."""
    result = cli.ok(line)
    return [w for w in result.err.splitlines() if w.startswith("warning:")]


def status(cli: Cli) -> dict:
    result = cli.ok("orchestra status --json")
    return json.loads(result.out)  # the warning, if any, went to stderr: stdout parses


def until(done: Callable[[], bool], what: str, service: Service | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if service is not None:
            assert service.proc.poll() is None, f"the scheduler died: {service.log}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}" + (f": {service.log}" if service else "")
        time.sleep(0.2)


def short_lease(env: dict[str, str], storage: Path) -> float:
    """A config whose staleness threshold is small: max(2 x interval, 3 x lease_ttl) = 3 s."""
    text = CONFIG.format(storage=storage).replace("lease_ttl = 10", "lease_ttl = 1\ninterval = 1")
    Path(env["ORCHESTRA_CONFIG"]).write_text(text)
    return 3.0


def test_no_scheduler_ever_is_said_once_by_each_command(cli: Cli) -> None:
    for line in COMMANDS:
        said = warnings(cli, line)
        assert len(said) == 1 and "no scheduler has ever run on this database" in said[0], (line, said)
        assert "orchestra scheduler run" in said[0]
    for line in ("maestro task list --json", "maestro queue --json"):
        json.loads(cli.ok(line).out)
    report = status(cli)
    s = report["scheduler"]
    assert s["state"] == "never" and s["heartbeat_at"] is None and s["holder"] is None
    assert [(q["cluster"], q["queue"], q["busy"], q["slots"]) for q in report["queues"]] == [
        ("LPS", "cpu", 0, 4), ("LPS", "gpu", 0, 1), ("OTHER", "cpu", 0, 2)]
    assert report["holds"] == [] and report["users"] == [] and report["version"]


def test_running_service_no_warning_fresh_heartbeat_then_sigterm(cli: Cli) -> None:
    service = Service()
    service.wait_idle()  # its first cycle's line is printed before the heartbeat records that cycle:
    until(lambda: (s := status(cli)["scheduler"])["state"] == "running" and s["last_cycle_at"] is not None,
          "the heartbeat and the first cycle are recorded", service)
    for line in COMMANDS:
        assert warnings(cli, line) == [], line
    report = status(cli)
    s = report["scheduler"]
    assert s["heartbeat_age_seconds"] < s["stale_after_seconds"] == 600  # max(2 x 300 s, 3 x 10 s) with the tests' config
    assert s["last_cycle_at"] is not None and s["stopped_at"] is None
    assert f":{service.proc.pid}:" in s["holder"]
    assert {(q["cluster"], q["queue"]): q["slots"] for q in report["queues"]} == {("LPS", "cpu"): 4, ("LPS", "gpu"): 1,
                                                                                  ("OTHER", "cpu"): 2}
    human = cli.ok("orchestra status").out
    assert "scheduler        running" in human and "LPS/cpu" in human and "holds            none" in human

    log = service.stop()
    assert "stopped: SIGTERM received" in log, log
    after = status(cli)["scheduler"]
    assert after["state"] == "stopped" and after["stopped_at"] is not None and after["holder"] is None
    for line in COMMANDS:
        said = warnings(cli, line)
        assert len(said) == 1 and "the scheduler stopped at" in said[0], (line, said)


def test_paused_service_is_reported_stale_then_recovers(cli: Cli, env: dict[str, str], storage: Path) -> None:
    threshold = short_lease(env, storage)
    service = Service()
    service.wait_idle()
    assert status(cli)["scheduler"]["stale_after_seconds"] == threshold
    until(lambda: not warnings(cli, "maestro task list"), "a running scheduler is not reported", service)
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        until(lambda: any(STALE in w for w in warnings(cli, "maestro task list")), "the pause is reported")
        for line in COMMANDS:  # the heartbeat only ages while the service is stopped
            said = warnings(cli, line)
            assert len(said) == 1 and STALE in said[0] and "last heartbeat" in said[0], (line, said)
        s = status(cli)["scheduler"]
        assert s["state"] == "stale" and s["heartbeat_age_seconds"] > threshold
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    until(lambda: not warnings(cli, "maestro task list"), "the resumed scheduler is seen again", service)
    assert status(cli)["scheduler"]["state"] == "running"
    assert "stopped: SIGTERM received" in service.stop()


def test_until_idle_sets_stopped_but_once_cron_does_not(cli: Cli) -> None:
    done = run_scheduler("--once")
    assert done.returncode == 0 and "stopped: --once: cycle done" in done.stderr, done.stderr
    s = status(cli)["scheduler"]
    assert s["state"] == "running" and s["stopped_at"] is None and s["last_cycle_at"] is not None  # cron: next run due
    assert warnings(cli, "maestro task list") == []
    done = run_scheduler("--until-idle")
    assert done.returncode == 0 and "stopped: --until-idle: idle" in done.stderr, done.stderr
    assert status(cli)["scheduler"]["state"] == "stopped"


def test_a_scheduler_that_lost_its_lease_stops_and_writes_nothing(cli: Cli, env: dict[str, str], storage: Path) -> None:
    """The heartbeat is fenced like every state change: once another holder is recorded, the
    service's next heartbeat (every lease_ttl / 3 while idle) finds out, and it stops."""
    short_lease(env, storage)
    service = Service()
    service.wait_idle()
    until(lambda: status(cli)["scheduler"]["state"] == "running", "the heartbeat is recorded", service)
    from sqlalchemy import create_engine, text

    engine = create_engine(env["ORCHESTRA_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE scheduler_lease SET holder = 'elsewhere:1:feedbeef', expires_at = 1e12"))
    engine.dispose()
    assert service.wait_exit(60) == 3, service.log
    assert "stopped: lease lost" in service.log, service.log
    s = status(cli)["scheduler"]
    assert s["stopped_at"] is None and s["holder"] == "elsewhere:1:feedbeef"  # the successor's, not overwritten


@POSTGRES_ONLY
def test_roles_scheduler_writes_the_heartbeat_plain_user_reads_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler role may insert and update the rows (migration 0003's grants); a plain user
    (bob) may run `orchestra status` and sees no warning while it runs."""
    assert "no scheduler has ever run" in world.ok("bob", "maestro task list").err
    monkeypatch.setenv("ORCHESTRA_DATABASE_URL", role_url(world.db_url, "sched"))
    service = Service()  # connected as the scheduler role
    monkeypatch.delenv("ORCHESTRA_DATABASE_URL")
    service.wait_idle()

    def bob_status() -> dict:
        return json.loads(world.ok("bob", "orchestra status --json").out)

    until(lambda: bob_status()["scheduler"]["state"] == "running", "bob sees the heartbeat", service)
    report = bob_status()
    assert {u["user"] for u in report["users"]} <= {"alice", "bob"}
    for line in COMMANDS:
        result = world.ok("bob", line)
        assert "warning:" not in result.err, (line, result.err)
    assert "stopped: SIGTERM received" in service.stop()
    assert "the scheduler stopped at" in world.ok("bob", "maestro queue").err
