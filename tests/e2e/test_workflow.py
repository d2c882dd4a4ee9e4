"""The seed's workflow end to end on the local backend: real /bin/sh processes, both databases."""
from __future__ import annotations

import json
import os
from pathlib import Path

from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, job_states, make_inputs, run_scheduler, task_status
from tests.helpers import ADMIN, Cli, nonzero


def register(cli: Cli, storage: Path, n: int) -> None:
    configs, data = make_inputs(storage, n)
    cli.ok(f"orchestra_registry.py -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry.py -d user.alice.configs -p {configs}/ --cluster LPS")


def create(cli: Cli, name: str, command: str, extra: str = "") -> None:
    cli.ok(f"maestro.py task create -c user.alice.configs -d user.alice.data -t user.alice.{name} "
           f"--containerImage alice/img --exec '{command}' {extra}")


def test_seed_workflow_runs_to_completion(cli: Cli, storage: Path) -> None:
    register(cli, storage, 6)
    create(cli, "tutorial", "cat %DATA %IN > %OUT/result.txt && echo done %IN")
    result = run_scheduler("--until-idle", "--interval", "1")
    assert result.returncode == 0, result.stderr
    assert "idle" in result.stderr
    rows = json.loads(cli.ok("maestro.py task list -u alice --json").out)
    assert rows[0]["status"] == "completed" and nonzero(rows[0]["counts"]) == {"succeeded": 6}
    for i in range(6):
        out = storage / "alice" / "user.alice.tutorial" / f"job_{i:06d}" / "result.txt"
        assert out.read_text() == f"the data\nconfig {i}\n"
    jobs = json.loads(cli.ok("maestro job list -t user.alice.tutorial --json").out)
    assert [j["status"] for j in jobs] == ["succeeded"] * 6 and all(j["exit_code"] == 0 for j in jobs)
    log = cli.ok(f"maestro job logs {jobs[2]['id']}").out
    assert log.startswith("done ") and "c0002.cfg" in log
    assert "completed" in cli.ok("maestro.py task list").out


def test_failing_scouts_break_the_task_with_reason(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 8)
    create(cli, "broken", "echo cannot open %IN >&2; exit 3; %DATA %OUT")
    ctx = Context.from_env()
    # Broken stops the queued scouts; one already running ends by itself (the retry below needs it ended).
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.broken") == "broken"
                 and not {"starting", "running"} & set(job_states(ctx, "user.alice.broken").values()))
    states = job_states(ctx, "user.alice.broken")
    assert sorted(states.values()).count("held") == 5  # 3 scouts failed, nothing else ran
    detail = cli.ok("maestro task show -t user.alice.broken").out
    assert "its scouts failed (exit code 3)" in detail
    assert "| cannot open" in detail  # the tail of the scouts' logs
    # Fix nothing, retry: the scouts run again (and fail again).
    assert "re-queued 3 job(s)" in cli.ok("maestro task retry -t user.alice.broken").out
    assert task_status(ctx, "user.alice.broken") == "scouting"
    ctx.engine.dispose()


def test_retries_then_success_and_partial(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 4)
    # Attempt 1 of every job fails; attempt 2 succeeds (max_retries is 1 in the test config).
    create(cli, "flaky", 'test "$ORCHESTRA_ATTEMPT" -ge 2 || exit 1; echo ok %DATA %IN %OUT', "--bypass")
    # Job 3 always fails: the task ends PARTIAL, and retry re-queues exactly that job.
    create(cli, "partial", 'case %IN in *c0003*) exit 7;; esac; echo %DATA %OUT', "--bypass")
    ctx = Context.from_env()
    finished = ("completed", "partial")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.flaky") in finished
                 and task_status(ctx, "user.alice.partial") in finished)
    assert task_status(ctx, "user.alice.flaky") == "completed"
    assert task_status(ctx, "user.alice.partial") == "partial"
    jobs = json.loads(cli.ok("maestro job list -t user.alice.flaky --json").out)
    assert {j["attempts"] for j in jobs} == {2}
    failed = json.loads(cli.ok("maestro job list -t user.alice.partial --status failed --json").out)
    assert [(j["index"], j["exit_code"], j["attempts"]) for j in failed] == [(3, 7, 2)]
    assert "re-queued 1 job(s)" in cli.ok("maestro task retry -t user.alice.partial").out
    ctx.engine.dispose()


def test_timeout_kills_and_records_reason(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 1)
    create(cli, "slow", "sleep 60; echo %DATA %IN %OUT", "--bypass --max-time 1s --max-retries 0")
    ctx = Context.from_env()
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.slow") == "partial")  # long before the sleep's 60 s
    jobs = json.loads(cli.ok("maestro job list -t user.alice.slow --json").out)
    assert jobs[0]["status"] == "failed" and jobs[0]["reason"] == "timeout after 1s"
    ctx.engine.dispose()


def test_kill_and_delete_stop_running_processes(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 2)
    create(cli, "victim", "echo $$ > %OUT/pid; sleep 120; echo %DATA %IN", "--bypass")
    create(cli, "doomed", "echo $$ > %OUT/pid; sleep 120; echo %DATA %IN", "--bypass")
    ctx = Context.from_env()
    out = storage / "alice"
    pids = [out / t / f"job_{i:06d}" / "pid" for t in ("user.alice.victim", "user.alice.doomed") for i in range(2)]
    scheduler = cycles_until(ctx, lambda: all(p.exists() and p.read_text().strip() for p in pids))
    numbers = [int(p.read_text()) for p in pids]
    assert all(_alive(n) for n in numbers)
    assert "running jobs stop" in cli.ok("maestro task kill -t user.alice.victim").out
    assert "being killed" in cli.ok("maestro task delete -t user.alice.doomed --yes --purge").out
    # The kill is asynchronous (SIGTERM now, SIGKILL after the grace): the jobs stay running, their
    # slots taken, until their processes are gone; then they end killed and the deletion finishes.
    scheduler.cycle()
    cycles_until(ctx, lambda: set(job_states(ctx, "user.alice.victim").values()) == {"killed"}
                 and task_status(ctx, "user.alice.doomed") == "gone", scheduler=scheduler)
    assert not any(_alive(n) for n in numbers)
    assert not (out / "user.alice.doomed").exists()
    scheduler.lease.release()
    ctx.engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead for our purpose
        return handle.read().split(")")[-1].split()[0] != "Z"


def test_slots_and_user_cap_are_respected(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 12)
    create(cli, "wide", "sleep 0.3; echo %DATA %IN %OUT", "--bypass")
    cli.ok("orchestra user set alice --max-running 3", user=ADMIN)
    ctx = Context.from_env()
    from sqlalchemy import func, select

    from orchestra.db.models import Attempt

    peak = 0

    def done() -> bool:
        nonlocal peak
        with ctx.transaction() as session:
            live = session.scalar(select(func.count()).where(Attempt.status.in_(["starting", "running"])))
        peak = max(peak, live or 0)
        return task_status(ctx, "user.alice.wide") == "completed"

    cycles_until(ctx, done)
    assert 1 <= peak <= 3
    ctx.engine.dispose()
