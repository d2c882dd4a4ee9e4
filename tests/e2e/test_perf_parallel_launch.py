"""Issue 18: the local backend starts a batch of attempts on its launcher threads; the answers keep
the order of the specs, every job runs exactly once, the survey still sees each end, and every
answer carries its supervisor's start time."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestra.backends import local
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, make_inputs, task_status
from tests.helpers import Cli

TASK = "user.alice.many"


def test_a_batch_launches_on_threads_in_order_and_each_job_runs_once(
        cli: Cli, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "ran.txt"
    configs, data = make_inputs(storage, 10)
    cli.ok(f"orchestra_registry -d user.alice.configs -p {configs} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t {TASK} --containerImage a/b "
           f"--exec 'basename %IN >> {counter}; echo %DATA %OUT' --bypass")
    threads: set[str] = set()
    batches: list[tuple[list[str], list[str]]] = []
    launch_one, launch = local.LocalBackend._launch_one, local.LocalBackend.launch

    def spied_one(self, spec, **options):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return launch_one(self, spec, **options)

    def spied(self, specs):  # type: ignore[no-untyped-def]
        answers = launch(self, specs)
        batches.append(([s.backend_name for s in specs], [a.backend_name for a in answers]))
        # Each answer names its supervisor by pid and start time (read after the batch, not
        # by the launcher threads): the pair a restarted scheduler checks before adopting it.
        assert all(a.pid and a.pid_start for a in answers)
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
