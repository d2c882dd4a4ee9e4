"""`maestro job show|kill|retry` end to end as a user types them, on SQLite and PostgreSQL, with real
scheduler cycles on the local backend (real /bin/sh processes): a kill of a queued and of a running
job, a retry that runs a failed job again, the refusals (one line, nothing written), another
user's attempts refused by the CLI (the database functions are attacked in tests/db/test_security.py)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestra.db.models import Attempt, AuditEntry, Job, Task
from orchestra.scheduler.cycle import CycleReport, Scheduler
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, job_states, make_inputs, task_status
from tests.helpers import Cli

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


@pytest.fixture
def ctx(env: dict[str, str]) -> Iterator[Context]:
    context = Context.from_env()
    yield context
    context.engine.dispose()


def register(cli: Cli, storage: Path, n: int) -> None:
    configs, data = make_inputs(storage, n)
    cli.ok(f"orchestra_registry -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.configs -p {configs}/ --cluster LPS")


def create(cli: Cli, name: str, command: str, extra: str = "--bypass") -> None:
    cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t user.alice.{name} "
           f"--containerImage alice/img --exec '{command}' {extra}")


def expand(ctx: Context) -> None:
    """The scheduler's expansion step alone: the jobs exist, queued, none started."""
    scheduler = Scheduler(ctx)
    assert scheduler.lease.try_acquire()
    scheduler.expand(CycleReport())
    scheduler.lease.release()


def job_ids(cli: Cli, task: str) -> list[int]:
    return [j["id"] for j in json.loads(cli.ok(f"maestro job list -t user.alice.{task} --json").out)]


def rows(ctx: Context) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Every task, job and attempt row: what a refusal must leave exactly as it was."""
    with ctx.transaction() as session:
        return ([tuple(r) for r in session.execute(select(Task.__table__).order_by(Task.id))],
                [tuple(r) for r in session.execute(select(Job.__table__).order_by(Job.id))],
                [tuple(r) for r in session.execute(select(Attempt.__table__).order_by(Attempt.id))])


def n_queued_agrees(ctx: Context) -> bool:
    """Each task's queue counter is its number of queued jobs (what the scheduler's policy reads)."""
    with ctx.transaction() as session:
        queued = dict(session.execute(select(Job.task_id, func.count()).where(Job.status == "queued")
                                      .group_by(Job.task_id)).all())
        return all(n == queued.get(t, 0) for t, n in session.execute(select(Task.id, Task.n_queued)))


def refused(cli: Cli, ctx: Context, line: str, words: str, user: str | None = None) -> None:
    """`line` fails with one line containing `words`, no traceback, and writes nothing."""
    before = rows(ctx)
    result = cli(line, user=user)
    assert result.code == 1, (line, result.out)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert words in result.err, result.err
    assert rows(ctx) == before


def test_job_show_lists_every_attempt_like_sacct(cli: Cli, storage: Path, ctx: Context) -> None:
    register(cli, storage, 2)
    # Attempt 1 fails with exit code 3, attempt 2 succeeds (max_retries is 1 in the test config).
    create(cli, "flaky", 'echo run $ORCHESTRA_ATTEMPT; test "$ORCHESTRA_ATTEMPT" -ge 2 || exit 3; echo %DATA %IN %OUT')
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.flaky") == "completed")
    job = job_ids(cli, "flaky")[1]
    text = cli.ok(f"maestro job show {job}").out
    assert f"job {job} (#1) of user.alice.flaky" in text and ": succeeded" in text
    assert re.search(r"attempt 1 +failed .*exit 3 +host \S+", text), text
    assert re.search(r"attempt 2 +succeeded .*exit 0 +host \S+", text), text
    assert "c0001.cfg" in text  # the expanded command and the config file
    detail = json.loads(cli.ok(f"maestro job show {job} --json").out)
    assert (detail["id"], detail["index"], detail["task"], detail["status"]) == (job, 1, "user.alice.flaky", "succeeded")
    assert detail["command"].startswith("echo run") and "%IN" not in detail["command"]
    first, second = detail["attempts"]
    assert (first["number"], first["status"], first["exit_code"]) == (1, "failed", 3)
    assert (second["number"], second["status"], second["exit_code"]) == (2, "succeeded", 0)
    for attempt in (first, second):
        assert ISO.match(attempt["started_at"]) and ISO.match(attempt["ended_at"]), attempt
        assert attempt["runtime_seconds"] >= 0 and attempt["host"]
        assert Path(attempt["log_path"]).read_text().startswith(f"run {attempt['number']}\n")
    refused(cli, ctx, "maestro job show 999999", "job 999999 does not exist")


def test_job_kill_of_a_queued_and_of_a_running_job(cli: Cli, storage: Path, ctx: Context) -> None:
    register(cli, storage, 3)
    go = storage / "go"
    # One gpu slot: job #0 runs (until `go` exists), #1 and #2 wait in the queue.
    create(cli, "k", f"echo $$ > %OUT/pid; while [ ! -e {go} ]; do sleep 0.05; done; echo %DATA %IN",
           "--bypass --queue gpu")
    pid = storage / "alice" / "user.alice.k" / "job_000000" / "pid"
    scheduler = cycles_until(ctx, lambda: pid.exists() and pid.read_text().strip() != "")
    first, second, third = job_ids(cli, "k")
    assert job_states(ctx, "user.alice.k") == {0: "running", 1: "queued", 2: "queued"}
    assert n_queued_agrees(ctx)

    assert cli.ok(f"maestro job kill {second}").out.strip() == f"killed job {second} (#1) of user.alice.k"
    assert job_states(ctx, "user.alice.k")[1] == "killed" and n_queued_agrees(ctx)

    out = cli.ok(f"maestro job kill {first}").out
    assert f"stopping job {first} (#0)" in out and "next pass" in out
    refused(cli, ctx, f"maestro job kill {first}", f"job {first} is already being stopped")
    cycles_until(ctx, lambda: job_states(ctx, "user.alice.k")[0] == "killed", scheduler=scheduler)
    detail = json.loads(cli.ok(f"maestro job show {first} --json").out)
    assert detail["reason"] == "killed by alice" and detail["attempts"][0]["status"] == "killed"
    process = Path(f"/proc/{int(pid.read_text())}")
    assert not process.exists() or "zombie" in (process / "status").read_text().lower()

    # The third job takes the freed slot and succeeds; the task ends partial: 2 killed, 1 succeeded.
    go.touch()
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.k") == "partial", scheduler=scheduler)
    summary = json.loads(cli.ok("maestro task show -t user.alice.k --json").out)["summary"]
    assert {k: v for k, v in summary["counts"].items() if v} == {"killed": 2, "succeeded": 1}
    refused(cli, ctx, f"maestro job kill {third}", f"job {third} already ended (succeeded); nothing to kill")
    refused(cli, ctx, f"maestro job kill {second}", f"job {second} already ended (killed)")
    with ctx.transaction() as session:
        actions = session.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.target)
                                  .where(AuditEntry.action == "job kill").order_by(AuditEntry.id)).all()
    assert [a[2] for a in actions] == [f"user.alice.k job {second}", f"user.alice.k job {first}"]
    scheduler.lease.release()


def test_job_retry_runs_a_failed_job_again(cli: Cli, storage: Path, ctx: Context) -> None:
    register(cli, storage, 3)
    fixed = storage / "fixed"
    create(cli, "r", f'test -e {fixed} || case %IN in *c0001*) exit 4;; esac; echo ok %DATA %IN %OUT',
           "--bypass --max-retries 0")
    scheduler = cycles_until(ctx, lambda: task_status(ctx, "user.alice.r") == "partial")
    first, failing, _ = job_ids(cli, "r")
    refused(cli, ctx, f"maestro job retry {first}", f"job {first} succeeded; nothing to retry")

    fixed.touch()  # the user fixed what made it fail
    out = cli.ok(f"maestro job retry {failing}").out
    assert out.strip() == f"re-queued job {failing} (#1) of user.alice.r with a fresh retry budget (task running)"
    assert task_status(ctx, "user.alice.r") == "running" and n_queued_agrees(ctx)
    refused(cli, ctx, f"maestro job retry {failing}", f"job {failing} is queued; only a failed or killed job")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.r") == "completed", scheduler=scheduler)
    detail = json.loads(cli.ok(f"maestro job show {failing} --json").out)
    assert [(a["number"], a["status"], a["exit_code"]) for a in detail["attempts"]] == [(1, "failed", 4),
                                                                                         (2, "succeeded", 0)]
    assert detail["failures"] == 0 and detail["reason"] is None
    scheduler.lease.release()


def test_a_killed_task_resumes_through_a_job_retry(cli: Cli, storage: Path, ctx: Context) -> None:
    """A killed task whose killed job is retried runs again; its other killed jobs stay killed, so it
    ends partial (a task retry re-queues them all)."""
    register(cli, storage, 2)
    create(cli, "kt", "echo %DATA %IN %OUT", "--bypass --queue gpu")
    expand(ctx)
    first, second = job_ids(cli, "kt")
    cli.ok("maestro task kill -t user.alice.kt")
    assert task_status(ctx, "user.alice.kt") == "killed"
    cli.ok(f"maestro job retry {first}")
    assert task_status(ctx, "user.alice.kt") == "running"
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.kt") == "partial").lease.release()
    assert job_states(ctx, "user.alice.kt") == {0: "succeeded", 1: "killed"}
    assert "re-queued 1 job(s)" in cli.ok("maestro task retry -t user.alice.kt").out


def test_scouts_and_held_jobs(cli: Cli, storage: Path, ctx: Context) -> None:
    """A held job killed while its task scouts stays killed when the task is released; a retry of a
    killed non-scout of a task never released is refused in favour of `task retry`."""
    register(cli, storage, 5)
    create(cli, "s", "exit 2; %DATA %IN %OUT", extra="--queue gpu")  # 3 scouts, 2 held; every scout fails
    scheduler = cycles_until(ctx, lambda: "held" in job_states(ctx, "user.alice.s").values())
    with ctx.transaction() as session:
        held = session.scalars(select(Job.id).join(Task).where(Task.name == "user.alice.s", Job.status == "held")
                               .order_by(Job.id)).all()
        scout = session.scalar(select(Job.id).join(Task).where(Task.name == "user.alice.s", Job.is_scout.is_(True))
                               .order_by(Job.id))
    cli.ok(f"maestro job kill {held[0]}")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.s") == "broken", scheduler=scheduler)
    refused(cli, ctx, f"maestro job retry {held[0]}", "task retry -t user.alice.s` runs all its failed scouts")
    # One scout alone cannot meet the 80 % threshold of 3 scouts when the two others failed.
    refused(cli, ctx, f"maestro job retry {scout}", "alone cannot meet the scout threshold of task 'user.alice.s'")
    scheduler.lease.release()


def test_another_users_job_is_refused_in_one_line(cli: Cli, storage: Path, ctx: Context) -> None:
    register(cli, storage, 2)
    create(cli, "mine", "exit 5; %DATA %IN %OUT", "--bypass --max-retries 0")
    expand(ctx)
    first, second = job_ids(cli, "mine")
    cli.ok(f"maestro job kill {second}")
    for line in (f"maestro job kill {first}", f"maestro job retry {second}"):
        refused(cli, ctx, line, "belongs to 'alice'; only its owner or an admin", user="bob")
    assert cli.ok(f"maestro job show {first}", user="bob").out  # reading is for everyone, like squeue


@pytest.mark.parametrize("line", ["maestro job kill 0", "maestro job retry -3", "maestro job kill x",
                                  "maestro job retry 99999999999999999999999"])
def test_bad_job_ids(cli: Cli, ctx: Context, line: str) -> None:
    result = cli(line)
    assert result.code != 0 and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
