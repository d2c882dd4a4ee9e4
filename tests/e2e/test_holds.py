"""Infrastructure failures are not the job's fault (issue 14, item 1): a launch the cluster refuses
(storage full, fork refused, storage missing) charges no attempt and no failure, puts the job
back in the queue, and holds its queue until a probe launch succeeds; `maestro queue` says so on
every affected row, `orchestra status` lists the hold, the service logs its start and its end.

Real /bin/sh processes on the local backend, both databases, cycles run in this process. Every
wait is on a condition with a generous limit; nothing is timed. The backoff is shortened (the
module constants of orchestra/scheduler/holds.py) so that probes come quickly.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from orchestra.db.models import Attempt, Job, QueueHold, Task
from orchestra.scheduler import holds
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, make_inputs, task_status
from tests.helpers import Cli

TASK = "user.alice.sturdy"


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holds, "INITIAL_BACKOFF", 0.1)
    monkeypatch.setattr(holds, "MAX_BACKOFF", 0.4)


@pytest.fixture
def scheduler_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="orchestra.scheduler")
    return caplog


@pytest.fixture
def tmpfs_storage(storage: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted as the cluster's storage (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(storage)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield storage
    finally:
        if subprocess.run(["umount", str(storage)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(storage)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system says ENOSPC: nothing more fits."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def submit(cli: Cli, storage: Path, counter: Path, n: int = 5, extra: str = "") -> None:
    """A task of `n` jobs; each job appends its input's name to `counter` (outside the storage)."""
    configs, data = make_inputs(storage, n)
    cli.ok(f"orchestra_registry.py -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry.py -d user.alice.configs -p {configs}/ --cluster LPS")
    submit_task(cli, counter, extra)


def submit_task(cli: Cli, counter: Path, extra: str = "") -> None:
    cli.ok(f"maestro.py task create -c user.alice.configs -d user.alice.data -t {TASK} --containerImage alice/img "
           f"--exec 'basename %IN >> {counter}; echo %DATA %OUT' {extra}")


def hold_row(ctx: Context) -> QueueHold | None:
    with ctx.transaction() as session:
        row = session.scalar(select(QueueHold))
        if row is not None:
            session.expunge(row)
        return row


def charged(ctx: Context) -> tuple[int, int, int]:
    """(sum of jobs.attempts, sum of jobs.failures, attempt rows) of the task."""
    with ctx.transaction() as session:
        attempts, failures = session.execute(
            select(func.coalesce(func.sum(Job.attempts), 0), func.coalesce(func.sum(Job.failures), 0))
            .join(Task).where(Task.name == TASK)).one()
        rows = session.scalar(select(func.count()).select_from(Attempt))
    return int(attempts), int(failures), int(rows or 0)


def next_probe_in(ctx: Context, seconds: float) -> None:
    """Move the hold's next probe: far away while a test looks at what users are shown (with the
    tests' short backoff, a probe falling due mid-look would make the view depend on the machine's
    speed), and back to now before the work is let through."""
    with ctx.transaction() as session:
        session.execute(update(QueueHold).values(retry_at=time.time() + seconds))


def assert_held_and_uncharged(cli: Cli, ctx: Context, what: str) -> None:
    """While held: nothing charged, the task not partial, `maestro queue` and `orchestra status` say why."""
    next_probe_in(ctx, 3600)
    assert charged(ctx) == (0, 0, 0)
    assert task_status(ctx, TASK) == "scouting"
    jobs = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
    assert {j["status"] for j in jobs} == {"queued", "held"} and {j["attempts"] for j in jobs} == {0}
    queued = [r for r in json.loads(cli.ok("maestro queue --json").out)["rows"] if r["state"] == "queued"]
    assert queued, "no queued row"
    for row in queued:  # every affected row says why
        assert row["reason"].startswith("queue LPS/cpu held: cannot start jobs: "), row
        assert what in row["reason"] and "since " in row["reason"] and "next try" in row["reason"], row
    piped = cli.ok("maestro queue")  # piped: the queues' lines go to stderr, the rows (with the reason) to stdout
    assert "LPS/cpu 0 of 4 slots in use (HELD)" in piped.err and "queue LPS/cpu held: cannot start jobs" in piped.out
    status = json.loads(cli.ok("orchestra status --json").out)
    assert [(h["kind"], h["target"]) for h in status["holds"]] == [("queue", "LPS/cpu")]
    assert what in status["holds"][0]["reason"] and status["holds"][0]["tries"] >= 3
    assert "queue LPS/cpu since" in cli.ok("orchestra status").out


def run_to_completion(cli: Cli, ctx: Context, scheduler: Scheduler, counter: Path, n: int,
                      log: pytest.LogCaptureFixture) -> None:
    """Once the cluster works again: every job runs exactly once, the hold clears (and says so)."""
    next_probe_in(ctx, 0)
    cycles_until(ctx, lambda: task_status(ctx, TASK) in ("completed", "partial", "broken"), timeout=120,
                 scheduler=scheduler)
    assert task_status(ctx, TASK) == "completed"
    ran = Counter(counter.read_text().split())
    assert ran == Counter({f"c{i:04d}.cfg": 1 for i in range(n)}), ran
    jobs = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * n
    assert charged(ctx) == (n, 0, n)
    assert hold_row(ctx) is None and json.loads(cli.ok("orchestra status --json").out)["holds"] == []
    assert "holds            none" in cli.ok("orchestra status").out
    lines = [r.getMessage() for r in log.records if r.name == "orchestra.scheduler"]
    started = [line for line in lines if line.startswith("queue LPS/cpu held: ")]
    cleared = [line for line in lines if line.startswith("queue LPS/cpu hold cleared: ")]
    assert len(started) == 1 and len(cleared) == 1, lines  # one line each, not one per refused launch


def test_full_storage_holds_the_queue_and_charges_nothing(cli: Cli, tmpfs_storage: Path, tmp_path: Path,
                                                          scheduler_log: pytest.LogCaptureFixture) -> None:
    counter = tmp_path / "ran.txt"  # outside the tmpfs
    configs, data = make_inputs(tmpfs_storage, 5)
    cli.ok(f"orchestra_registry.py -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry.py -d user.alice.configs -p {configs}/ --cluster LPS")
    filler = fill(tmpfs_storage)
    submit_task(cli, counter)  # 3 scouts queued, 2 jobs held behind them
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: (h := hold_row(ctx)) is not None and h.tries >= 3)
    assert_held_and_uncharged(cli, ctx, "No space left on device on the storage")
    assert not counter.exists()  # no job ran
    filler.unlink()  # the admin frees the space
    run_to_completion(cli, ctx, scheduler, counter, 5, scheduler_log)
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()


def test_refused_fork_holds_the_queue_and_probes_one_job_at_a_time(
        cli: Cli, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        scheduler_log: pytest.LogCaptureFixture) -> None:
    counter = tmp_path / "ran.txt"
    submit(cli, storage, counter, 5, "--bypass")  # 5 jobs queued, 4 slots
    real = subprocess.Popen
    refused: list[str] = []
    refusing = [True]

    def popen(args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        """Fault injection: the kernel refuses to fork the supervisor."""
        if refusing[0] and list(args[:2]) == ["/bin/sh", "-c"]:
            refused.append(kwargs.get("env", {}).get("ORCHESTRA_JOB", "?"))
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: (h := hold_row(ctx)) is not None and h.tries >= 4)
    hold = hold_row(ctx)
    assert hold is not None and hold.backoff > holds.INITIAL_BACKOFF  # refused probes back off
    # The first round tried the 4 free slots; after it, each probe is one launch of one job.
    assert len(refused) == 4 + (hold.tries - 1), refused
    next_probe_in(ctx, 3600)  # no probe falls due while we look
    assert charged(ctx) == (0, 0, 0) and task_status(ctx, TASK) == "running"
    jobs = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
    assert [(j["status"], j["attempts"]) for j in jobs] == [("queued", 0)] * 5
    queued = [r for r in json.loads(cli.ok("maestro queue --json").out)["rows"] if r["state"] == "queued"]
    assert queued and all("held: cannot start jobs: cannot start /bin/sh: Resource temporarily unavailable"
                          in r["reason"] for r in queued), queued
    why = cli.ok(f"maestro job why {jobs[0]['id']}").out
    assert "queue LPS/cpu held" in why
    status = json.loads(cli.ok("orchestra status --json").out)
    assert [h["target"] for h in status["holds"]] == ["LPS/cpu"]
    refusing[0] = False  # the load goes away
    run_to_completion(cli, ctx, scheduler, counter, 5, scheduler_log)
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()


def test_missing_storage_holds_the_queue(cli: Cli, storage: Path, tmp_path: Path,
                                         scheduler_log: pytest.LogCaptureFixture) -> None:
    """The storage is not there (not mounted): held, nothing charged; back in place, all runs once."""
    counter = tmp_path / "ran.txt"
    submit(cli, storage, counter, 3, "--bypass")
    away = tmp_path / "unmounted"
    storage.rename(away)
    ctx = Context.from_env()
    try:
        scheduler = cycles_until(ctx, lambda: (h := hold_row(ctx)) is not None and h.tries >= 3)
    finally:
        if not storage.exists():
            away.rename(storage)
    hold = hold_row(ctx)
    assert hold is not None and f"the storage {storage} is missing" in hold.reason
    assert charged(ctx) == (0, 0, 0)
    run_to_completion(cli, ctx, scheduler, counter, 3, scheduler_log)
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()


def test_the_hold_survives_a_scheduler_restart(cli: Cli, storage: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The holds are rows: a new scheduler reads them back (backoff included) and probes, no new round."""
    counter = tmp_path / "ran.txt"
    submit(cli, storage, counter, 3, "--bypass")
    storage.rename(tmp_path / "unmounted")
    ctx = Context.from_env()
    first = cycles_until(ctx, lambda: hold_row(ctx) is not None)
    first.lease.release()
    first.close()
    monkeypatch.setattr(holds, "INITIAL_BACKOFF", 3600.0)  # would the new one start over, it would say so
    second = Scheduler(ctx)
    assert second.lease.try_acquire()
    second.cycle()
    hold = hold_row(ctx)
    assert hold is not None and hold.backoff <= 0.4 and charged(ctx) == (0, 0, 0)
    assert (tmp_path / "unmounted").exists()
    (tmp_path / "unmounted").rename(storage)
    cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", scheduler=second)
    assert hold_row(ctx) is None
    assert Counter(counter.read_text().split()) == Counter({f"c{i:04d}.cfg": 1 for i in range(3)})
    second.lease.release()
    second.close()
    ctx.engine.dispose()
    shutil.rmtree(tmp_path / "unmounted", ignore_errors=True)


def test_a_job_killed_while_its_launch_is_refused_stays_killed(cli: Cli, storage: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`maestro job kill` lands between the dispatch (attempt `starting`) and a launch the cluster
    refuses: the job is not put back in the queue (that would lose the kill), it ends killed,
    uncharged; the other jobs run once the cluster works again."""
    counter = tmp_path / "ran.txt"
    submit(cli, storage, counter, 2, "--bypass")
    real = subprocess.Popen
    killed: list[str] = []

    def popen(args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        """The user's kill reaches the database, then the kernel refuses the fork."""
        if list(args[:2]) == ["/bin/sh", "-c"] and not killed:
            index = int(kwargs.get("env", {}).get("ORCHESTRA_JOB", "-1"))
            rows = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
            job = next(r for r in rows if r["index"] == index)
            assert job["status"] == "starting", job
            cli.ok(f"maestro job kill {job['id']}")
            killed.append(str(job["id"]))
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, TASK) in ("completed", "partial"), timeout=120)
    assert task_status(ctx, TASK) == "partial"
    rows = {str(r["id"]): r for r in json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)}
    [victim] = killed
    assert (rows[victim]["status"], rows[victim]["attempts"]) == ("killed", 0), rows[victim]
    assert [(r["status"], r["attempts"]) for k, r in rows.items() if k != victim] == [("succeeded", 1)]
    assert len(counter.read_text().split()) == 1  # the killed job never ran
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()
