"""`maestro`: the user's CLI for tasks, jobs, datasets, the queue and usage."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestra.cli import jsonout, tables, views
from orchestra.cli.common import add_version, confirm, console, context, err_console, new_app, print_json, run
from orchestra.cli.listing import JsonOption, NoHeaderOption, emit, format_help, shown_note
from orchestra.services import datasets, jobs, tasks

app = new_app("Orchestra: submit and follow tasks on the shared cluster.", root=True)
add_version(app)
task_app = new_app("Create, list, show, kill, retry and delete tasks.")
job_app = new_app("List, show, kill and retry a task's jobs; read and follow their logs.")
dataset_app = new_app("List, show and delete datasets (register them with orchestra_registry.py).")
app.add_typer(task_app, name="task")
app.add_typer(job_app, name="job")
app.add_typer(dataset_app, name="dataset")
user_app = new_app("Your own settings: the e-mail address your task notices go to, and whether you want them.")
app.add_typer(user_app, name="user")

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
    after: Annotated[Optional[list[str]], typer.Option("--after", help="start when these tasks of yours are completed: TASK[,TASK...]")] = None,
    after_any: Annotated[Optional[list[str]], typer.Option("--after-any", help="start when these tasks of yours have ended, in any state: TASK[,TASK...]")] = None,
) -> None:
    """Create a task: one job per file of the config dataset."""
    from orchestra.cli import task_notes_view
    from orchestra.services.dependencies import split_names

    request = tasks.TaskRequest(task, config, data, image, command, bypass, queue, max_retries, max_time, priority,
                                tuple(split_names(after)), tuple(split_names(after_any)))
    created = tasks.create(context(), request, dry_run=dry_run)
    task_notes_view.created(created, dry_run)


@task_app.command("list")
def task_list(
    user: Annotated[Optional[str], typer.Option("-u", "--user", help="only this user's tasks")] = None,
    status: Annotated[Optional[str], typer.Option("--status", "-s", help="only tasks in this status: "
                                                  "registered, scouting, running, completed, partial, broken, killed")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                               help=format_help(tables.TASK_COLUMNS))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """Tasks with their job counts per state (held, queued, starting, running, succeeded, failed,
    killed) and progress (jobs ended of all)."""
    rows = tasks.list_tasks(context(), user, status)
    if as_json:
        print_json([jsonout.task_summary(r) for r in rows])
    else:
        emit(tables.tasks(rows), fmt, noheader)
    _scheduler_warning()


@task_app.command("show")
def task_show(
    task: TaskRef,
    limit: Annotated[int, typer.Option("--limit", min=0, help="failed attempts to show (0: all)")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Everything about one task, and why its failed jobs failed (job ids, as `maestro job logs` takes)."""
    from orchestra.cli import task_notes_view
    from orchestra.services import task_notes

    detail = tasks.show(context(), task, failures=limit)
    notes = task_notes.notes(context(), detail.summary.id)  # dependencies and history (task edit)
    if as_json:
        print_json({**jsonout.task_detail(detail), **jsonout.plain(notes.as_json())})
    else:
        views.task_detail(detail)
        task_notes_view.notes(notes)


@task_app.command("edit")
def task_edit(
    task: TaskRef,
    command: Annotated[Optional[str], typer.Option("--exec", help="new command with %DATA, %IN and %OUT")] = None,
    image: Annotated[Optional[str], typer.Option("--containerImage", "--container-image", help="new container image")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="new queue")] = None,
    max_retries: Annotated[Optional[int], typer.Option("--max-retries", help="new automatic retries per job")] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="new per-attempt time limit (2h, 30m; none: no limit)")] = None,
    priority: Annotated[Optional[int], typer.Option("--priority", help="new priority, -100..100")] = None,
) -> None:
    """Change a task that is not running (registered, broken, partial, killed); `task retry` then runs the new version."""
    from orchestra.cli import task_notes_view
    from orchestra.services import task_edit as edit_service

    request = edit_service.EditRequest(command, image, queue, priority, max_retries, max_time)
    task_notes_view.edited(edit_service.edit(context(), task, request))


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
    status: Annotated[Optional[str], typer.Option("--status", "-s", help="only jobs in this state: held, queued, "
                                                  "starting, running, succeeded, failed, killed")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="at most this many rows (0: all)")] = 200,
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                               help=format_help(tables.JOB_COLUMNS))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """The jobs of a task (id, the number other commands take; index, its place in the task) with
    their latest attempt. A listing cut by --limit says so ("200 of 2,000 shown")."""
    page = jobs.job_page(context(), task, status, limit)
    if as_json:
        print_json(jsonout.jobs(page.rows))
        for note in shown_note(len(page.rows), page.total):
            err_console.print(note, markup=False)
    else:
        emit(tables.jobs(page), fmt, noheader)


@job_app.command("why")
def job_why(
    job: Annotated[int, typer.Argument(help="job id (see `maestro job list` or `maestro queue --jobs`)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output (docs/json.md)")] = False,
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
    follow: Annotated[bool, typer.Option("--follow", "-f", help="wait for a queued job, then follow each attempt until the job ends (a line on stderr names each attempt)")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", min=0, help="only the last N lines")] = None,
) -> None:
    """Print a job's log (a log over its cap starts with a line saying how much was cut).

    With --follow, stdout carries the log alone; `==> attempt N of job J (host, started ...) <==` lines
    on stderr say which attempt follows, and the last one how the job ended."""
    try:
        jobs.stream_log(context(), job, attempt, follow, tail)
    except BrokenPipeError:  # `maestro job logs JOB | head`: the reader has seen enough
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


JobId = Annotated[int, typer.Argument(help="job id (see `maestro job list -t TASK`)")]


@job_app.command("show")
def job_show(job: JobId, as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """One job and every attempt of it: state, start, end, runtime, exit code, host, reason, log (like sacct)."""
    from orchestra.cli import views_jobs
    from orchestra.services import job_actions

    detail = job_actions.show(context(), job)
    if as_json:
        print_json(views_jobs.job_json(detail))
    else:
        views_jobs.job_detail(detail)


@job_app.command("kill")
def job_kill(job: JobId) -> None:
    """Kill one job: held or queued, at once; running, in the scheduler's next pass (then counted killed)."""
    from orchestra.cli import views_jobs
    from orchestra.services import job_actions

    views_jobs.job_killed(job_actions.kill(context(), job))


@job_app.command("retry")
def job_retry(job: JobId) -> None:
    """Queue a failed or killed job again with a fresh retry budget; its task resumes if it had ended."""
    from orchestra.cli import views_jobs
    from orchestra.services import job_actions

    views_jobs.job_retried(job_actions.retry(context(), job))


@task_app.command("watch")
def task_watch(
    task: TaskRef,
    interval: Annotated[float, typer.Option("--interval", "-i", help="seconds between two refreshes")] = 2.0,
    exit_status: Annotated[bool, typer.Option(
        "--exit-status", help="exit 1 unless the task completed (partial, broken, killed)")] = False,
) -> int:
    """Follow a task live until it ends (completed, partial, broken, killed), then print how it ended.

    On a terminal the view is redrawn in place; piped, one tab-separated line per change after a
    header (`kubectl get -w` style), and the final line goes to stderr."""
    from orchestra.cli.live import watch_task

    return watch_task(context(), task, interval, exit_status)


@dataset_app.command("list")
def dataset_list(
    user: Annotated[Optional[str], typer.Option("-u", "--user", help="only this user's datasets")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                               help=format_help(tables.DATASET_COLUMNS))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """Registered datasets: name, owner, cluster, file or directory, files, size, path."""
    rows = datasets.list_datasets(context(), user)
    if as_json:
        print_json([jsonout.dataset(r) for r in rows])
    else:
        emit(tables.datasets(rows), fmt, noheader)


@dataset_app.command("show")
def dataset_show(
    name: Annotated[str, typer.Option("-d", "--dataset", help="dataset name, user.<owner>.<name>")],
    limit: Annotated[int, typer.Option("--limit", min=0, help="files to list (0: all)")] = 20,
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                               help=format_help(tables.FILE_COLUMNS))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """One dataset and its files in job order (the first --limit; 0: all)."""
    info, files = datasets.show(context(), name, limit=limit or None)
    if as_json:
        print_json(jsonout.dataset_detail(info, files))
        for note in shown_note(len(files), info.n_files):
            err_console.print(note, markup=False)
    else:
        views.dataset_detail(info, files, fmt, noheader)


@dataset_app.command("delete")
def dataset_delete(
    name: Annotated[str, typer.Option("-d", "--dataset", help="dataset name, user.<you>.<name>")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
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
    limit: Annotated[int, typer.Option("--limit", min=0, help="with --jobs: at most this many job rows (0: all)")] = 50,
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS", help=(
        "columns to show, comma-separated (squeue -o style); any of: pos, queue, task, user, state, jobs "
        "(job with --jobs), priority, fairshare, age, taskprio, scout, why"))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """Pending work in dispatch order, its priority factors, and why it waits (like squeue + sprio).

    One row per group of a task's pending jobs (queued / held / not expanded yet), with the position
    of its first job in its queue: position 1 takes the next slot that frees up in that queue.
    """
    from orchestra.services import queue

    report = queue.queue_report(context(), user, task, jobs=per_job, limit=limit)
    result = tables.queue(report, per_job, limit)
    if as_json:
        print_json(jsonout.plain(report))
        for note in result.notes:
            err_console.print(note, markup=False)
    else:
        emit(result, fmt, noheader, before=lambda: views.queue_preamble(report))
    _scheduler_warning()


@app.command("usage")
def usage_cmd(
    user: Annotated[Optional[str], typer.Option("-u", "--user", help="only this user")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                               help=format_help(tables.USAGE_COLUMNS))] = None,
    noheader: NoHeaderOption = False,
    as_json: JsonOption = False,
) -> None:
    """Per user: decayed usage, shares, fair-share factor, running and queued jobs, cap (like sshare)."""
    from orchestra.services import usage

    report = usage.usage_report(context(), user)
    if as_json:
        print_json(jsonout.usage_report(report))
    else:
        emit(tables.usage(report), fmt, noheader)


ForUser = Annotated[Optional[str], typer.Option("-u", "--user", help="another user's (admins only)")]


@user_app.command("email")
def user_email(
    address: Annotated[Optional[str], typer.Argument(help="where mails about your tasks go, e.g. alice@example.org")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the address: no more mail")] = False,
    user: ForUser = None,
) -> None:
    """Set (or, without ADDRESS, show) the address that hears when your tasks end."""
    from orchestra.errors import OrchestraError
    from orchestra.notify import contact

    if address is not None and clear:
        raise OrchestraError("give an ADDRESS or --clear, not both")
    info = contact.set_contact(context(), user, email=address, clear=clear)
    console.print(f"{info.user}: e-mail {info.email or 'none'}, notices {'on' if info.notify else 'off'}"
                  + ("" if info.email else " (no mail is sent without an address)"), markup=False)


@user_app.command("notify")
def user_notify(
    switch: Annotated[str, typer.Argument(metavar="on|off", help="on: mail me when my tasks end; off: do not")],
    user: ForUser = None,
) -> None:
    """Turn the mails about your tasks' ends on or off."""
    from orchestra.errors import OrchestraError
    from orchestra.notify import contact

    if switch not in ("on", "off"):
        raise OrchestraError(f"{switch!r}: say `maestro user notify on` or `maestro user notify off`")
    info = contact.set_contact(context(), user, notify=switch == "on")
    console.print(f"{info.user}: notices {'on' if info.notify else 'off'}, e-mail {info.email or 'none'}", markup=False)


def main() -> None:
    run(app)
