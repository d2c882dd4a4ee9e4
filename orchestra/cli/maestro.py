"""`maestro`: the user's CLI for tasks, jobs, datasets, the queue and usage."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestra.cli import views
from orchestra.cli.common import confirm, console, context, new_app, print_json, run
from orchestra.errors import OrchestraError
from orchestra.services import datasets, jobs, tasks

app = new_app("Orchestra: submit and follow tasks on the shared cluster.")
task_app = new_app("Create, list, show, kill, retry and delete tasks.")
job_app = new_app("List a task's jobs and read their logs.")
dataset_app = new_app("List, show and delete datasets (register them with orchestra_registry.py).")
app.add_typer(task_app, name="task")
app.add_typer(job_app, name="job")
app.add_typer(dataset_app, name="dataset")

TaskRef = Annotated[str, typer.Option("-t", "--task", help="task name (user.<you>.<name>) or numeric id")]


@task_app.command("create")
def task_create(
    config: Annotated[str, typer.Option("-c", "--config", help="config dataset: one job per file (%IN)")],
    data: Annotated[str, typer.Option("-d", "--data", help="data dataset (%DATA)")],
    task: Annotated[str, typer.Option("-t", "--task", help="task name, user.<you>.<name>")],
    image: Annotated[str, typer.Option("--containerImage", "--container-image", help="container image")],
    command: Annotated[str, typer.Option("--exec", help='command with %DATA, %IN and %OUT, e.g. "python3 /job.py -d %DATA -c %IN -o %OUT"')],
    bypass: Annotated[bool, typer.Option("--bypass", help="skip the scout jobs and release the task at once")] = False,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="queue (default: the cluster's default)")] = None,
    max_retries: Annotated[Optional[int], typer.Option("--max-retries", help="automatic retries per job")] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="per-attempt time limit, e.g. 2h, 30m")] = None,
    priority: Annotated[int, typer.Option("--priority", help="-100..100 among your own tasks")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the job count and first commands; write nothing")] = False,
) -> None:
    """Create a task: one job per file of the config dataset."""
    request = tasks.TaskRequest(task, config, data, image, command, bypass, queue, max_retries, max_time, priority)
    created = tasks.create(context(), request, dry_run=dry_run)
    views.created(created, dry_run)


@task_app.command("list")
def task_list(
    user: Annotated[Optional[str], typer.Option("-u", "--user", help="only this user's tasks")] = None,
    status: Annotated[Optional[str], typer.Option("--status", "-s", help="only tasks in this status")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Tasks with their job counts per state and progress."""
    rows = tasks.list_tasks(context(), user, status)
    if as_json:
        print_json([{**r.__dict__, "done": r.done} for r in rows])
    else:
        views.task_table(rows)
    _scheduler_warning()


@task_app.command("show")
def task_show(task: TaskRef, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Everything about one task, and why its failed jobs failed."""
    detail = tasks.show(context(), task)
    if as_json:
        print_json(detail)
    else:
        views.task_detail(detail)


@task_app.command("kill")
def task_kill(task: TaskRef) -> None:
    """Stop a task: pending jobs now, running ones in the scheduler's next pass."""
    name, request = tasks.kill(context(), task)
    tail = "; running jobs stop in the scheduler's next pass" if request else ""
    console.print(f"killed {name}{tail}")


@task_app.command("retry")
def task_retry(task: TaskRef) -> None:
    """Re-queue failed and killed jobs; a BROKEN task runs its scouts again."""
    done = tasks.retry(context(), task)
    if done.status == "registered":
        console.print(f"{done.name} had no jobs yet: it is registered again and will be expanded again at the "
                      "scheduler's next cycle")
    elif done.n_queued == 0:
        console.print(f"resumed {done.name} ({done.status}): no job to re-queue")
    else:
        scouts = "; its scouts run first, the other jobs stay held" if done.status == "scouting" else ""
        console.print(f"re-queued {done.n_queued} job(s) of {done.name}{scouts}")


@task_app.command("delete")
def task_delete(
    task: TaskRef,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    purge: Annotated[bool, typer.Option("--purge", help="also remove the task's outputs")] = False,
) -> None:
    """Remove a task from Orchestra (running jobs are killed first)."""
    confirm(f"delete task {task}{' and its outputs' if purge else ''}?", yes)
    gone = tasks.delete_task(context(), task, purge=purge)
    console.print(f"deleted {task}" if gone else f"{task}: jobs are being killed; the scheduler removes it next pass")


@job_app.command("list")
def job_list(
    task: TaskRef,
    status: Annotated[Optional[str], typer.Option("--status", "-s")] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many rows")] = 200,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The jobs of a task with their latest attempt."""
    rows = jobs.list_jobs(context(), task, status, limit)
    if as_json:
        print_json(rows)
    else:
        views.job_table(rows)


@job_app.command("why")
def job_why(
    job: Annotated[int, typer.Argument(help="job id (see `maestro job list` or `maestro queue --jobs`)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Why a job is not running yet: its position in the dispatch order and what it waits for."""
    from orchestra.services import queue  # numpy: loaded only by the fair-share commands

    explanation = queue.explain_job(context(), job)
    if as_json:
        print_json(explanation)
    else:
        views.job_why(explanation)


@job_app.command("logs")
def job_logs(
    job: Annotated[int, typer.Argument(help="job id (see `maestro job list`)")],
    attempt: Annotated[Optional[int], typer.Option("--attempt", "-a", help="attempt number (default: latest)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing while the job runs")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", min=0, help="only the last N lines")] = None,
) -> None:
    """Print a job's log (a log over its cap starts with a line saying how much was cut)."""
    try:
        jobs.stream_log(context(), job, attempt, follow, tail)
    except BrokenPipeError:  # `maestro job logs JOB | head`: the reader has seen enough
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


@dataset_app.command("list")
def dataset_list(
    user: Annotated[Optional[str], typer.Option("-u", "--user")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    rows = datasets.list_datasets(context(), user)
    if as_json:
        print_json(rows)
    else:
        views.dataset_table(rows)


@dataset_app.command("show")
def dataset_show(name: Annotated[str, typer.Option("-d", "--dataset")]) -> None:
    info, files = datasets.show(context(), name)
    views.dataset_detail(info, files)


@dataset_app.command("delete")
def dataset_delete(
    name: Annotated[str, typer.Option("-d", "--dataset")],
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
) -> None:
    """Forget a dataset (its files stay on storage)."""
    confirm(f"delete dataset {name}?", yes)
    datasets.delete_dataset(context(), name)
    console.print(f"deleted dataset {name} (files on storage untouched)")


def _scheduler_warning() -> None:
    """One line on stderr (stdout stays parseable) when the scheduler is stale, stopped or never ran."""
    from orchestra.services.status import warn_line

    ctx = context()
    views.scheduler_warning(warn_line(ctx.engine, ctx.settings))


@app.command("queue")
def queue_cmd(
    user: Annotated[Optional[str], typer.Option("-u", "--user", help="only this user's pending work")] = None,
    task: Annotated[Optional[str], typer.Option("-t", "--task", help="only this task (name or id)")] = None,
    per_job: Annotated[bool, typer.Option("--jobs", help="one row per pending job (up to --limit)")] = False,
    limit: Annotated[int, typer.Option("--limit", help="with --jobs: at most this many job rows")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Pending work in dispatch order, its priority factors, and why it waits (like squeue + sprio).

    One row per group of a task's pending jobs (queued / held / not expanded yet), with the position
    of its first job in its queue: position 1 takes the next slot that frees up in that queue.
    """
    if limit < 1:
        raise OrchestraError("--limit must be at least 1")
    from orchestra.services import queue

    report = queue.queue_report(context(), user, task, jobs=per_job, limit=limit)
    if as_json:
        print_json(report)
    else:
        views.queue_table(report, per_job)
    _scheduler_warning()


@app.command("usage")
def usage_cmd(
    user: Annotated[Optional[str], typer.Option("-u", "--user", help="only this user")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Per user: decayed usage, shares, fair-share factor, running and queued jobs, cap (like sshare)."""
    from orchestra.services import usage

    report = usage.usage_report(context(), user)
    if as_json:
        print_json(report)
    else:
        views.usage_table(report)


def main() -> None:
    run(app)
