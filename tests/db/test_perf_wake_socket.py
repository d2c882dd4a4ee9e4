"""Issue 18: on SQLite a user's command wakes an idle scheduler through a Unix datagram socket in
ORCHESTRA_HOME (the change counter stays the fallback): only the owner may send, a missing or
stale socket is harmless, and a second scheduler never takes a live one's socket."""
from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra.scheduler.loop import Waker
from orchestra.services.context import Context, send_wake, wake_socket_path
from tests.e2e.scheduler_helpers import make_inputs
from tests.e2e.test_db_faults import Service, status_of, wait_for
from tests.helpers import Cli, write_config

NEVER = 3600.0  # a poll interval no test waits for: only the socket can wake the waker


@pytest.fixture
def ctx(env: dict[str, str], db_url: str) -> Iterator[Context]:
    if not db_url.startswith("sqlite"):
        pytest.skip("the wake socket is SQLite's (PostgreSQL has LISTEN/NOTIFY)")
    context = Context.from_env()
    yield context
    context.engine.dispose()


def commit_a_wake(ctx: Context) -> None:
    with ctx.transaction() as session:
        ctx.wake_scheduler(session)


def test_a_committed_change_wakes_the_waiting_scheduler_through_its_socket(ctx: Context) -> None:
    waker = Waker(ctx, poll=NEVER)
    path = wake_socket_path(ctx.settings)
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600  # only its owner may send
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".wake-")]  # the staging dir is gone
        commit_a_wake(ctx)
        assert waker.wait(NEVER / 2) == "change"  # the socket, not the counter poll (never due)
        # The counter was read with it: the same change does not wake the waker a second time.
        assert waker.wait(0.05) == "interval"
        with pytest.raises(RuntimeError), ctx.transaction() as session:  # rolled back: no wake-up
            ctx.wake_scheduler(session)
            raise RuntimeError("the command failed")
        assert waker.wait(0.05) == "interval"
        for _ in range(5000):  # more than the socket buffers: the senders never block or fail
            send_wake(path)
        commit_a_wake(ctx)
        assert waker.wait(NEVER / 2) == "change"  # one wait drains them all
        assert waker.wait(0.05) == "interval"
    finally:
        waker.close()
    assert not path.exists()  # a stopped scheduler leaves no socket behind
    send_wake(path)  # no scheduler: ignored
    commit_a_wake(ctx)


def test_a_live_socket_is_kept_and_a_stale_one_replaced(ctx: Context) -> None:
    path = wake_socket_path(ctx.settings)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # a scheduler killed with SIGKILL leaves its socket file, bound by nobody
    first = Waker(ctx, poll=NEVER)
    second = Waker(ctx, poll=NEVER)  # a second scheduler, waiting for the lease: leaves the socket alone
    try:
        commit_a_wake(ctx)
        assert first.wait(NEVER / 2) == "change"
        assert second._sock is None
        first.close()
        assert not path.exists()
        assert second.wait(0.05) == "change"  # the counter the first one was woken for (polled at timeout)
        assert second._sock is not None and path.exists()  # it took the socket over
        commit_a_wake(ctx)
        assert second.wait(NEVER / 2) == "change"
    finally:
        first.close() if first._sock is not None else None
        second.close()


def test_a_new_task_starts_on_an_idle_scheduler_that_never_polls(
        cli: Cli, ctx: Context, storage: Path, tmp_path: Path, db_url: str) -> None:
    """With the counter poll and the heartbeat (which ends each wait) far beyond the test's own
    deadline, only the wake socket can get the task started and done."""
    configs, data = make_inputs(storage, 2)
    cli.ok(f"orchestra_registry -d user.alice.configs -p {configs} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    config = write_config(tmp_path / "never-polls.toml", storage).read_text()
    config = config.replace("poll_interval = 0.2", f"poll_interval = {NEVER}").replace("lease_ttl = 10",
                                                                                        f"lease_ttl = {NEVER * 3}")
    (tmp_path / "never-polls.toml").write_text(config)
    service = Service({"ORCHESTRA_CONFIG": str(tmp_path / "never-polls.toml")})
    try:
        wait_for(lambda: "cycle:" in service.log, 60, "the service's first cycle")  # idle from here on
        assert wake_socket_path(ctx.settings).exists()
        cli.ok("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.woken "
               "--containerImage x/img --exec 'true %DATA %IN %OUT' --bypass")
        wait_for(lambda: status_of(db_url, "user.alice.woken") == "completed", 60,
                 "the wake socket to start the task")
    finally:
        service.stop()
