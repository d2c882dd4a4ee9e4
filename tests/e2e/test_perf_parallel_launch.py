"""Issue 18: the local backend starts a batch of attempts on its launcher threads; the answers keep
the order of the specs, every job runs exactly once, the survey still sees each end, and every
answer carries its supervisor's pid, while its start time is read when the launch's record is
written (a running job's record names its supervisor by both)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestra.backends import local
from orchestra.db.models import Attempt
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, make_inputs, task_status
from tests.helpers import Cli

TASK = "user.alice.many"


def submit(cli: Cli, storage: Path, jobs: int, command: str) -> None:
    """alice's datasets of `jobs` config files and her task TASK running `command` (no scouts)."""
    configs, data = make_inputs(storage, jobs)
    cli.ok(f"orchestra_registry -d user.alice.configs -p {configs} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t {TASK} --containerImage a/b "
           f"--exec '{command}' --bypass")


def test_a_batch_launches_on_threads_in_order_and_each_job_runs_once(
        cli: Cli, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "ran.txt"
    submit(cli, storage, 10, f"basename %IN >> {counter}; echo %DATA %OUT")
    threads: set[str] = set()
    batches: list[tuple[list[str], list[str]]] = []
    launch_one, launch = local.LocalBackend._launch_one, local.LocalBackend.launch

    def spied_one(self, spec, **options):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return launch_one(self, spec, **options)

    def spied(self, specs):  # type: ignore[no-untyped-def]
        answers = launch(self, specs)
        batches.append(([s.backend_name for s in specs], [a.backend_name for a in answers]))
        # Each answer names its supervisor by pid; its start time is read when the record is
        # written (see test_a_running_jobs_record_names_its_supervisor_by_pid_and_start_time).
        assert all(a.pid and a.pid_start is None for a in answers)
        return answers

    monkeypatch.setattr(local.LocalBackend, "_launch_one", spied_one)
    monkeypatch.setattr(local.LocalBackend, "launch", spied)
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, TASK) in ("completed", "partial"), timeout=120)
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()
    assert task_status(ctx, TASK) == "completed"
    ran = counter.read_text().split()
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 10  # each job once
    assert all(asked == answered for asked, answered in batches)  # answers in the order asked
    assert any(len(asked) >= local.PARALLEL_MIN for asked, _ in batches)  # the first fill: 4 slots at once
    assert any(name.startswith("orchestra-launch") for name in threads)


def test_a_running_jobs_record_names_its_supervisor_by_pid_and_start_time(
        cli: Cli, storage: Path, tmp_path: Path) -> None:
    """The pair a restarted scheduler checks before it adopts a running attempt: the launch's
    deferred record (the service loop's `defer_acks`) carries the start time the backend read
    when the record was written, the supervisor's own."""
    gate = tmp_path / "gate"
    submit(cli, storage, 1, f"while [ ! -e {gate} ]; do sleep 0.05; done; echo %DATA %IN %OUT")
    ctx = Context.from_env()
    scheduler = Scheduler(ctx)
    scheduler.defer_acks = True
    try:
        cycles_until(ctx, lambda: scheduler.unacked == 1, scheduler=scheduler)  # launched, not recorded
        scheduler.write_acks()
        with ctx.engine.connect() as conn:
            [(status, pid, pid_start)] = conn.execute(select(Attempt.status, Attempt.pid, Attempt.pid_start)).all()
        assert status == "running" and pid and pid_start == local.process_start_time(pid) is not None
        gate.touch()
        cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", timeout=120, scheduler=scheduler)
    finally:
        gate.touch()
        scheduler.lease.release()
        scheduler.close()
        ctx.engine.dispose()
