"""`maestro task edit` on both databases with real jobs (local backend, /bin/sh processes): a broken
or partial task is fixed, then `task retry` runs the new version; the history says who changed
what; every refusal is one line and leaves the database as it was. Plus the two `task create`
checks on the storage: an output directory left by a deleted task, and a data file deleted after
its registration."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select

from orchestra.db.models import Dataset, Job, Task, TaskDependency, TaskEvent
from orchestra.scheduler.cycle import CycleReport, Scheduler
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, job_states, make_inputs, task_status
from tests.helpers import Cli

TASK = "user.alice.fix"


def register(cli: Cli, storage: Path, n: int) -> None:
    configs, data = make_inputs(storage, n)
    cli.ok(f"orchestra_registry.py -d user.alice.data -p {data} --cluster LPS")
    cli.ok(f"orchestra_registry.py -d user.alice.configs -p {configs}/ --cluster LPS")


def create(cli: Cli, command: str, extra: str = "", name: str = TASK) -> None:
    cli.ok(f"maestro task create -c user.alice.configs -d user.alice.data -t {name} "
           f"--containerImage alice/img --exec '{command}' {extra}")


def snapshot(ctx: Context) -> dict[str, list[Any]]:
    """Every row an edit or a create could touch."""
    with ctx.transaction() as session:
        return {model.__tablename__: [tuple(r) for r in session.execute(select(model.__table__)).all()]
                for model in (Task, Job, TaskEvent, TaskDependency, Dataset)}


def refused(cli: Cli, line: str, expected: str, user: str | None = None) -> str:
    result = cli(line, user)
    assert result.code != 0, f"{line!r} was accepted: {result.out}"
    err = result.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert expected in err, err
    return err


def test_broken_task_edited_then_retried_runs_the_new_command(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 4)
    create(cli, "echo cannot open %IN >&2; exit 3; %DATA %OUT")
    ctx = Context.from_env()
    # Broken stops the queued scouts; one already running ends by itself (an edit waits for it).
    scheduler = cycles_until(ctx, lambda: task_status(ctx, TASK) == "broken"
                             and not {"starting", "running"} & set(job_states(ctx, TASK).values()))
    out = cli.ok(f"maestro task edit -t {TASK} --exec 'cat %DATA %IN > %OUT/result.txt' --max-retries 2 "
                 "--containerImage alice/img:v2").out
    assert out.startswith(f"edited {TASK} (broken): ") and "4 unfinished job(s) get the new command" in out
    assert "max_retries 1 -> 2" in out and f"`maestro task retry -t {TASK}` runs it" in out
    assert task_status(ctx, TASK) == "broken"  # an edit runs nothing by itself
    assert "re-queued 3 job(s)" in cli.ok(f"maestro task retry -t {TASK}").out
    cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", scheduler=scheduler)
    for i in range(4):
        result = storage / "alice" / TASK / f"job_{i:06d}" / "result.txt"
        assert result.read_text() == f"the data\nconfig {i}\n"
    shown = cli.ok(f"maestro task show -t {TASK}").out
    assert "history:" in shown and "edit: command 'echo cannot open" in shown and "max_retries 1 -> 2" in shown
    detail = json.loads(cli.ok(f"maestro task show -t {TASK} --json").out)
    assert detail["image"] == "alice/img:v2" and detail["max_retries"] == 2
    [event] = detail["history"]
    assert event["what"] == "edit" and set(event["changes"]) == {"command", "image", "max_retries"}
    assert event["changes"]["max_retries"] == {"from": 1, "to": 2}
    assert event["changes"]["command"]["to"] == "cat %DATA %IN > %OUT/result.txt"
    assert event["changed_at"].endswith("+00:00") and event["actor"]
    scheduler.lease.release()
    ctx.engine.dispose()


def test_partial_task_edit_gives_only_unfinished_jobs_the_new_command(cli: Cli, storage: Path,
                                                                      env: dict[str, str]) -> None:
    register(cli, storage, 4)
    create(cli, "case %IN in *c0003*) exit 7;; esac; echo old > %OUT/v.txt; : %DATA", "--bypass --max-retries 0")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, TASK) == "partial")
    out = cli.ok(f"maestro task edit -t {TASK} --exec 'echo new > %OUT/v.txt; : %DATA %IN' --max-time 10m").out
    assert "1 unfinished job(s) get the new command" in out and "max_time none -> 10m" in out
    assert "re-queued 1 job(s)" in cli.ok(f"maestro task retry -t {TASK}").out
    cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", scheduler=scheduler)
    versions = [(storage / "alice" / TASK / f"job_{i:06d}" / "v.txt").read_text() for i in range(4)]
    assert versions == ["old\n", "old\n", "old\n", "new\n"]  # succeeded jobs were not run again
    scheduler.lease.release()
    ctx.engine.dispose()


def test_edit_refusals_leave_the_database_as_it_was(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 3)
    # A registered task (not expanded yet) may be edited: its jobs are expanded from the new command.
    create(cli, "echo %DATA %IN %OUT")
    assert f"edited {TASK} (registered): priority 0 -> 5" in cli.ok(f"maestro task edit -t {TASK} --priority 5").out
    ctx = Context.from_env()
    before = snapshot(ctx)
    edit = f"maestro task edit -t {TASK}"
    refused(cli, f"{edit} --exec 'echo %IN %OUT'", "--exec is missing %DATA")
    refused(cli, f"{edit} --containerImage 'Bad Image'", "is not a valid image reference")
    refused(cli, f"{edit} --queue nope", "queue 'nope' does not exist on cluster LPS; use one of: cpu, gpu")
    refused(cli, f"{edit} --priority 500", "--priority 500 is out of range")
    refused(cli, f"{edit} --max-retries 101", "--max-retries 101 is out of range")
    refused(cli, f"{edit} --max-time soon", "--max-time 'soon' is not a duration")
    refused(cli, edit, "nothing to edit; give at least one of --exec")
    refused(cli, f"{edit} --priority 5", "nothing changes")
    refused(cli, "maestro task edit -t user.alice.nope --priority 1", "does not exist")
    refused(cli, f"{edit} --priority 1", "belongs to 'alice'", user="bob")  # bob, on alice's task
    assert snapshot(ctx) == before
    # Live: scouting (expanded, scouts queued), then completed.
    scheduler = Scheduler(ctx)
    assert scheduler.lease.try_acquire()
    scheduler.expand(CycleReport())
    assert task_status(ctx, TASK) == "scouting"
    before = snapshot(ctx)
    refused(cli, f"{edit} --priority 1", f"task {TASK} is scouting; stop it first (`maestro task kill -t {TASK}`)")
    assert snapshot(ctx) == before
    cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", scheduler=scheduler)
    before = snapshot(ctx)
    refused(cli, f"{edit} --priority 1", "is completed (every job succeeded); create a new task")
    assert snapshot(ctx) == before
    scheduler.lease.release()
    ctx.engine.dispose()


def test_edit_waits_for_the_running_scouts_of_a_broken_task(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    """A broken task's scouts already running finish on their own: no edit until they have."""
    register(cli, storage, 3)
    gate = storage / "gate"
    create(cli, f"case %IN in *c0002*) while [ ! -e {gate} ]; do sleep 0.05; done;; esac; exit 3; %DATA %OUT")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, TASK) == "broken"
                             and job_states(ctx, TASK)[2] == "running")
    before = snapshot(ctx)
    refused(cli, f"maestro task edit -t {TASK} --priority 1", f"task {TASK} still has 1 running job(s); wait")
    assert snapshot(ctx) == before
    gate.touch()
    cycles_until(ctx, lambda: job_states(ctx, TASK)[2] == "failed", scheduler=scheduler)
    assert "priority 0 -> 1" in cli.ok(f"maestro task edit -t {TASK} --priority 1").out
    scheduler.lease.release()
    ctx.engine.dispose()


def test_a_recreated_name_never_reuses_an_old_output_directory(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 2)
    create(cli, "echo old > %OUT/v.txt; : %DATA %IN", "--bypass")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed")
    cli.ok(f"maestro task delete -t {TASK} --yes")
    root = storage / "alice" / TASK
    assert (root / "job_000000" / "v.txt").exists()
    before = snapshot(ctx)
    line = (f"maestro task create -c user.alice.configs -d user.alice.data -t {TASK} --containerImage alice/img "
            "--exec 'echo new > %OUT/v.txt; : %DATA %IN' --bypass")
    err = refused(cli, line, f"output directory {root} already exists")
    assert "remove that directory or choose another task name" in err
    refused(cli, line + " --dry-run", "already exists")
    assert snapshot(ctx) == before
    shutil.rmtree(root)
    cli.ok(line)
    cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", scheduler=scheduler)
    # Deleted with --purge, the name is free again at once.
    cli.ok(f"maestro task delete -t {TASK} --yes --purge")
    assert not root.exists()
    cli.ok(line)
    scheduler.lease.release()
    ctx.engine.dispose()


def test_create_refuses_datasets_whose_files_were_deleted(cli: Cli, storage: Path, env: dict[str, str]) -> None:
    register(cli, storage, 3)
    ctx = Context.from_env()
    before = snapshot(ctx)
    line = ("maestro task create -c user.alice.configs -d user.alice.data -t user.alice.t --containerImage a/b "
            "--exec 'echo %DATA %IN %OUT'")
    data = storage / "data.txt"
    data.rename(storage / "moved.txt")
    err = refused(cli, line, f"data dataset user.alice.data: {data} no longer exists")
    assert "register it again (`maestro dataset delete -d user.alice.data`, then `orchestra_registry.py" in err
    (storage / "moved.txt").rename(data)
    last = storage / "configs" / "c0002.cfg"
    last.unlink()
    refused(cli, line, f"config dataset user.alice.configs: {last} no longer exists")
    shutil.rmtree(storage / "configs")
    refused(cli, line, f"config dataset user.alice.configs: {storage / 'configs'} no longer exists")
    assert snapshot(ctx) == before
    make_inputs(storage, 3)
    cli.ok(line)
    ctx.engine.dispose()
