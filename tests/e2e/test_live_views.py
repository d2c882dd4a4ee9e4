"""Live views against a running scheduler, on SQLite and PostgreSQL, local backend: `maestro task
watch` (a line per change into a pipe, a redrawn view on a terminal, `--exit-status`) and
`maestro job logs --follow` (waits for a queued job, then follows each attempt, saying which)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from orchestra.cli import views_jobs
from orchestra.cli.live import watch_task
from orchestra.scheduler.cycle import Scheduler
from orchestra.services import watch
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import Service, cycles_until, task_status
from tests.e2e.test_job_actions import create, ctx, register  # noqa: F401 - ctx: a fixture
from tests.helpers import Cli

MAESTRO = [sys.executable, "-c", "from orchestra.cli.maestro import main; main()"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Maestro:
    """`maestro ARGS` in its own process, stdout and stderr collected by threads as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*MAESTRO, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ))
        self.out, self.err = b"", b""
        self.threads = [threading.Thread(target=self._collect, args=(name,), daemon=True) for name in ("out", "err")]
        for thread in self.threads:
            thread.start()

    def _collect(self, name: str) -> None:
        stream = self.proc.stdout if name == "out" else self.proc.stderr
        assert stream is not None
        while chunk := stream.read1(1 << 16):
            setattr(self, name, getattr(self, name) + chunk)

    def wait_for(self, text: bytes, where: str = "out", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in getattr(self, where):
            assert self.proc.poll() is None or text in getattr(self, where), (self.out[-500:], self.err[-500:])
            assert time.monotonic() < deadline, f"{text!r} never came: {self.out[-500:]!r} {self.err[-500:]!r}"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for thread in self.threads:
                thread.join(10)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        return code


@pytest.fixture
def maestro() -> Iterator[type[Maestro]]:
    """Starts `maestro` processes; none outlives the test."""
    started: list[Maestro] = []

    class Tracked(Maestro):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for m in started:
        if m.proc.poll() is None:
            m.proc.kill()
            m.finish(10)


@pytest.fixture
def service(env: dict[str, str]) -> Iterator[Service]:
    running = Service()
    running.wait_idle()
    yield running
    running.stop()


def test_task_watch_into_a_pipe_prints_a_line_per_change(cli: Cli, storage: Path, service: Service,
                                                         maestro: type[Maestro]) -> None:
    register(cli, storage, 5)
    go = storage / "go"
    # 3 scouts first (tests/helpers.py CONFIG), then the other 2 jobs; all wait for `go`.
    create(cli, "w", f"while [ ! -e {go} ]; do sleep 0.05; done; echo %DATA %IN %OUT", extra="")
    watcher = maestro("task", "watch", "-t", "user.alice.w", "--interval", "0.1")
    watcher.wait_for(b"\tscouting\t")  # the scouts run (and wait for `go`)
    go.touch()
    assert watcher.finish() == 0, watcher.err
    lines = watcher.out.decode().splitlines()
    assert lines[0].split("\t") == views_jobs.WATCH_COLUMNS
    rows = [dict(zip(views_jobs.WATCH_COLUMNS, line.split("\t"))) for line in lines[1:]]
    assert all(len(line.split("\t")) == len(views_jobs.WATCH_COLUMNS) for line in lines)
    order = ["registered", "scouting", "running", "completed"]
    seen = [order.index(r["status"]) for r in rows]
    assert seen == sorted(seen) and seen[-1] == 3 and 1 in seen, seen
    assert all(a != b for a, b in zip(lines[1:], lines[2:]))
    assert len({tuple(v for k, v in r.items() if k != "time") for r in rows}) == len(rows)  # only changes
    last = rows[-1]
    assert (last["succeeded"], last["jobs"]) == ("5", "5")
    assert all(int(r["jobs"]) == sum(int(r[s]) for s in views_jobs.STATES) or r["status"] == "registered"
               for r in rows)  # the counts add up to the jobs once the task is expanded
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", r["time"]) for r in rows)
    assert watcher.err.decode() == "task user.alice.w completed: 5 succeeded\n"


def test_task_watch_exit_status_and_refusals(cli: Cli, storage: Path, ctx: Context) -> None:
    register(cli, storage, 2)
    create(cli, "bad", "case %IN in *c0001*) exit 3;; esac; echo %DATA %OUT", "--bypass --max-retries 0")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.bad") == "partial").lease.release()
    plain = cli.ok("maestro task watch -t user.alice.bad")
    assert len(plain.out.splitlines()) == 2 and "\tpartial\t" in plain.out
    assert plain.err.startswith("task user.alice.bad partial: 1 succeeded, 1 failed; ")
    result = cli("maestro task watch -t user.alice.bad --exit-status")
    assert result.code == 1 and "\tpartial\t" in result.out
    for line, words in (("maestro task watch -t user.alice.bad --interval 0", "--interval must be more than 0"),
                        ("maestro task watch -t user.alice.nothing", "task 'user.alice.nothing' does not exist")):
        result = cli(line)
        assert result.code == 1 and result.err.count("\n") == 1 and words in result.err, result.err


def test_task_watch_on_a_terminal_redraws_in_place(cli: Cli, storage: Path, ctx: Context) -> None:
    """On a terminal (rich Live) each refresh redraws the view; every line fits 80 columns and the
    bar never wraps. The scheduler's cycles stand in for the waits between refreshes."""
    register(cli, storage, 4)
    create(cli, "tty", "echo %DATA %IN %OUT", "--bypass --max-retries 0")
    scheduler = Scheduler(ctx)
    assert scheduler.lease.try_acquire()
    deadline = time.monotonic() + 60

    def one_cycle(_: float) -> None:
        assert time.monotonic() < deadline, "the task never ended"
        scheduler.cycle()

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80, color_system=None, legacy_windows=False)
    assert watch_task(ctx, "user.alice.tty", 0.01, True, console, sleep=one_cycle) == 0
    scheduler.lease.release()
    local = scheduler.backend("LPS")
    while local._children:  # the supervisors exit just after their jobs' ends are recorded: reap them
        assert time.monotonic() < deadline, "a supervisor outlived its job"
        local.reap()
        time.sleep(0.01)
    scheduler.close()
    drawn = ANSI.sub("", screen.getvalue()).replace("\r", "\n")
    assert "user.alice.tty (id 1) by alice: completed" in drawn
    assert drawn.rstrip().endswith("task user.alice.tty completed: 4 succeeded")
    assert screen.getvalue().count("\x1b[2K") > 0  # lines erased and drawn again: a redraw, not a scroll
    assert max(len(line) for line in drawn.splitlines()) <= 80


@pytest.mark.parametrize("width", [80, 120])
def test_the_watch_view_fits_its_width(cli: Cli, storage: Path, ctx: Context, width: int) -> None:
    register(cli, storage, 3)
    create(cli, "a_rather_long_task_name_to_fold_at_eighty_columns", "exit 9; %DATA %IN %OUT",
           "--bypass --max-retries 0")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.a_rather_long_task_name_to_fold_at_eighty_columns")
                 == "partial").lease.release()
    snap = watch.snapshot(ctx, "user.alice.a_rather_long_task_name_to_fold_at_eighty_columns")
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(views_jobs.watch_view(snap, time.time(), 2))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    bar = [line for line in text.splitlines() if "ended," in line]
    assert len(bar) == 1 and bar[0].rstrip().endswith("3/3 ended, 0 succeeded")
    assert "exit code 9" in text and "failed" in text  # the latest failures, with their reason


def test_logs_follow_waits_for_a_queued_job_and_follows_each_attempt(
        cli: Cli, storage: Path, service: Service, maestro: type[Maestro]) -> None:
    register(cli, storage, 1)
    free, go = storage / "free", storage / "go"
    # One gpu slot: `blocker` holds it until `free` exists, so `retried`'s job waits in the queue.
    create(cli, "blocker", f"while [ ! -e {free} ]; do sleep 0.05; done; echo %DATA %IN %OUT", "--bypass --queue gpu")
    _wait_jobs(cli, "blocker", {"running"})
    # Attempt 1 prints, waits for `go`, fails; attempt 2 (the automatic retry) succeeds.
    create(cli, "retried", f'echo attempt $ORCHESTRA_ATTEMPT; if [ "$ORCHESTRA_ATTEMPT" = 1 ]; then '
                           f'while [ ! -e {go} ]; do sleep 0.05; done; exit 1; fi; echo done %DATA %IN %OUT',
           "--bypass --queue gpu")
    job = _wait_jobs(cli, "retried", {"queued"})
    follower = maestro("job", "logs", str(job), "--follow")
    follower.wait_for(f"job {job} is queued; waiting for attempt 1 to start".encode(), "err")
    free.touch()
    follower.wait_for(b"attempt 1\n")  # attempt 1 runs (waiting for `go`), followed live
    assert follower.proc.poll() is None
    go.touch()
    assert follower.finish() == 0, follower.err
    assert follower.out.decode() == f"attempt 1\nattempt 2\ndone {storage}/data.txt {storage}/configs/c0000.cfg " \
        f"{storage}/alice/user.alice.retried/job_000000\n"
    said = follower.err.decode().splitlines()
    headers = [line for line in said if line.startswith("==>")]
    assert re.fullmatch(rf"==> attempt 1 of job {job} \(\S+, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\) <==",
                        headers[0]), headers
    assert headers[1].startswith(f"==> attempt 2 of job {job} (")
    assert headers[2:] == [f"==> job {job} ended (succeeded) <=="]
    detail = json.loads(cli.ok(f"maestro job show {job} --json").out)
    assert [a["status"] for a in detail["attempts"]] == ["failed", "succeeded"]
    # --attempt N --follow: that attempt only (it has ended: its log, then the command returns).
    one = cli.ok(f"maestro job logs {job} --attempt 1 --follow")
    assert one.out == "attempt 1\n"
    assert [line for line in one.err.splitlines() if line.startswith("==>")] == [headers[0]]


def _wait_jobs(cli: Cli, task: str, states: set[str], timeout: float = 60) -> int:
    """Until the task's only job is in one of `states`; its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = json.loads(cli.ok(f"maestro job list -t user.alice.{task} --json").out)
        if isinstance(rows, dict):  # a listing with its truncation note
            rows = rows.get("jobs", rows.get("rows", []))
        if rows and rows[0]["status"] in states:
            return int(rows[0]["id"])
        time.sleep(0.1)
    raise AssertionError(f"the job of {task} never became {states}")
