"""Dependencies between tasks on both databases, through real scheduler cycles (local backend):
`--after` (starts when its dependencies complete), `--after-any` (when they end in any state),
refusals (a cycle, unknown or another user's task), a dependency that ends partial (the dependent
says so, `--until-idle` ends, a retry of the dependency revives it), deletion of a dependency, and
a two-step pipeline chained by a dataset registered with `orchestra_registry --from-task`."""
from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from orchestra.db.models import Job, Task
from orchestra.scheduler.loop import idle_summary
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, make_inputs, run_scheduler, task_status
from tests.e2e.test_task_edit import refused, snapshot
from tests.helpers import Cli

PREP = "user.alice.prep"


def register(cli: Cli, storage: Path, n: int) -> None:
    configs, data = make_inputs(storage, n)
    cli.ok(f"orchestra_registry.py -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry.py -d user.alice.configs -p {configs}/ --cluster LPS")


def create(cli: Cli, name: str, command: str, extra: str = "", config: str = "user.alice.configs") -> str:
    return cli.ok(f"maestro task create -c {config} -d user.alice.data -t {name} --containerImage alice/img "
                  f"--exec '{command}' --bypass {extra}").out


def n_jobs(ctx: Context, name: str) -> int:
    with ctx.transaction() as session:
        return len(session.scalars(select(Job.id).join(Task).where(Task.name == name)).all())


def waiting(cli: Cli, name: str) -> str | None:
    return json.loads(cli.ok(f"maestro task show -t {name} --json").out)["waiting"]


def queue_reason(cli: Cli, name: str) -> str:
    rows = json.loads(cli.ok(f"maestro queue -t {name} --json").out)["rows"]
    return rows[0]["reason"]


def test_after_waits_for_completion_and_after_any_for_any_end(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 2)
    gate = storage / "gate"
    # prep: job 1 waits for the gate, then fails unless the gate says "ok" (no retries): partial.
    create(cli, PREP, f"case %IN in *c0001*) while [ ! -e {gate} ]; do sleep 0.05; done; grep -q ok {gate} "
                      "|| exit 4;; esac; : %DATA %OUT", "--max-retries 0")
    out = create(cli, "user.alice.next", "echo %DATA %IN > %OUT/r.txt", f"--after {PREP}")
    assert f"waiting for {PREP} (registered)" in out
    create(cli, "user.alice.any", "echo %DATA %IN > %OUT/r.txt", f"--after-any {PREP}")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, PREP) == "running")
    for _ in range(3):  # prep runs: neither dependent is expanded, whatever the cycles
        scheduler.cycle()
    for name in ("user.alice.next", "user.alice.any"):
        assert task_status(ctx, name) == "registered" and n_jobs(ctx, name) == 0
        assert waiting(cli, name) == f"waiting for {PREP} (running)"
        assert queue_reason(cli, name) == f"task held: waiting for {PREP} (running)"
    shown = cli.ok("maestro task show -t user.alice.next").out
    assert f"waiting for {PREP} (running)" in shown and f"--after {PREP} (running)" in shown
    gate.write_text("no\n")
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.any") == "completed", scheduler=scheduler)
    # prep ended partial: --after-any ran; --after cannot, and says so.
    assert task_status(ctx, PREP) == "partial" and task_status(ctx, "user.alice.next") == "registered"
    dead = f"dependency {PREP} ended partial; retry it or delete this task"
    assert waiting(cli, "user.alice.next") == dead
    assert queue_reason(cli, "user.alice.next") == f"task held: {dead}"
    assert idle_summary(ctx) == ("idle: 1 task partial, 1 waiting for a dependency; "
                                 "nothing can run without a user's action")
    scheduler.lease.release()
    result = run_scheduler("--until-idle", "--interval", "1")  # the service itself stops waiting too
    assert result.returncode == 0, result.stderr
    assert "1 waiting for a dependency; nothing can run without a user's action" in result.stderr + result.stdout
    # A retry of the dependency revives the dependent: prep completes, then next starts.
    gate.write_text("ok\n")
    assert "re-queued 1 job(s)" in cli.ok(f"maestro task retry -t {PREP}").out
    assert waiting(cli, "user.alice.next") == f"waiting for {PREP} (running)"
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.next") == "completed")
    with ctx.transaction() as session:
        prep_done, next_made = session.execute(
            select(Task.finished_at, Task.released_at).where(Task.name.in_([PREP, "user.alice.next"]))
            .order_by(Task.id)).all()
    assert prep_done[0] <= next_made[1]  # next was expanded (released: --bypass) after prep finished
    assert waiting(cli, "user.alice.next") is None
    ctx.engine.dispose()


def test_bad_dependencies_are_refused(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 1)
    create(cli, PREP, "echo %DATA %IN %OUT")
    configs, data = make_inputs(storage / "bob", 1)
    cli.ok(f"orchestra_registry.py -d user.bob.data -p {data}", user="bob")
    cli.ok(f"orchestra_registry.py -d user.bob.configs -p {configs}", user="bob")
    cli.ok("maestro task create -c user.bob.configs -d user.bob.data -t user.bob.b --containerImage a/b "
           "--exec 'echo %DATA %IN %OUT'", user="bob")
    ctx = Context.from_env()
    before = snapshot(ctx)
    line = ("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.self --containerImage a/b "
            "--exec 'echo %DATA %IN %OUT' ")
    refused(cli, line + "--after user.alice.self", "a task cannot wait for itself "
                                                   "(cycle user.alice.self -> user.alice.self)")
    refused(cli, line + f"--after {PREP},user.alice.self", "cycle user.alice.self -> user.alice.self")
    refused(cli, line + "--after-any user.alice.nope", "task 'user.alice.nope' does not exist")
    refused(cli, line + "--after user.bob.b", "--after user.bob.b: that task belongs to bob; a task may wait only "
                                              "for tasks of its own owner (alice)")
    refused(cli, line + f"--after {PREP} --after-any {PREP}", f"{PREP} is given to both --after and --after-any")
    assert snapshot(ctx) == before
    ctx.engine.dispose()


def test_a_dependency_cannot_be_deleted_while_a_task_waits_for_it(cli: Cli, storage: Path,
                                                                  env: dict[str, str]) -> None:
    register(cli, storage, 1)
    create(cli, PREP, "echo %DATA %IN %OUT")
    create(cli, "user.alice.next", "echo %DATA %IN %OUT", f"--after={PREP}")
    ctx = Context.from_env()
    before = snapshot(ctx)
    refused(cli, f"maestro task delete -t {PREP} --yes", f"task {PREP} cannot be deleted: user.alice.next "
                                                         "(registered) wait(s) for it and has not started")
    assert snapshot(ctx) == before
    cycles_until(ctx, lambda: task_status(ctx, "user.alice.next") == "completed")
    cli.ok(f"maestro task delete -t {PREP} --yes")  # next has run: it no longer needs prep
    assert json.loads(cli.ok("maestro task show -t user.alice.next --json").out)["dependencies"] == []
    ctx.engine.dispose()


def test_two_step_pipeline_chained_by_a_dataset_of_task_outputs(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 2)
    # Step 1 writes two config files per job; step 2 runs one job per file step 1 wrote.
    create(cli, PREP, "cat %IN > %OUT/a.cfg && echo second >> %OUT/b.cfg; : %DATA")
    out = cli.ok(f"orchestra_registry.py -d user.alice.prep.outputs --from-task {PREP}").out
    assert out.startswith(f"registered user.alice.prep.outputs: the outputs of {PREP}, directory "
                          f"{storage / 'alice' / PREP} on LPS; its files are recorded when a task that uses it starts")
    ctx = Context.from_env()
    before = snapshot(ctx)
    step2 = ("maestro task create -c user.alice.prep.outputs -d user.alice.data -t user.alice.train "
             "--containerImage alice/img --exec 'cat %IN > %OUT/r.txt; : %DATA'")
    refused(cli, step2, f"config dataset user.alice.prep.outputs is the outputs of {PREP}, which is registered; "
                        f"add --after {PREP}")
    refused(cli, "orchestra_registry.py -d user.alice.x --from-task user.alice.nope", "does not exist")
    refused(cli, f"orchestra_registry.py -d user.alice.x -p {storage} --from-task {PREP}", "give either -p PATH")
    refused(cli, f"orchestra_registry.py -d user.bob.x --from-task {PREP}", f"task {PREP} belongs to alice", user="bob")
    assert snapshot(ctx) == before
    out = cli.ok(f"{step2} --after {PREP}").out
    assert "one job per file of its config dataset, recorded when user.alice.train is expanded" in out and f"waiting for {PREP} (registered)" in out
    result = run_scheduler("--until-idle", "--interval", "1")
    assert result.returncode == 0, result.stderr
    assert task_status(ctx, PREP) == "completed" and task_status(ctx, "user.alice.train") == "completed"
    assert n_jobs(ctx, "user.alice.train") == 4  # a.cfg and b.cfg of each of prep's two jobs
    results = sorted((storage / "alice" / "user.alice.train" / f"job_{i:06d}" / "r.txt").read_text()
                     for i in range(4))
    assert results == ["config 0\n", "config 1\n", "second\n", "second\n"]
    shown = json.loads(cli.ok("maestro dataset list --json").out)
    outputs = next(d for d in shown if d["name"] == "user.alice.prep.outputs")
    assert outputs["n_files"] == 4
    # Registered once prep is completed, the files are recorded at once.
    out = cli.ok(f"orchestra_registry.py -d user.alice.prep.again --from-task {PREP}").out
    assert "4 file(s)" in out
    ctx.engine.dispose()
