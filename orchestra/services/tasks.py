"""Tasks: create (validate everything, then one transaction), list, show, kill, retry, delete.

The CLI changes only database rows; anything that needs a backend (stopping a running job,
removing a deleted task's pods) is recorded in `Task.request` and done by the scheduler.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestra import expansion
from orchestra.db.engine import is_sqlite
from orchestra.db.job_lookup import state_counts
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.errors import NotFound, OrchestraError
from orchestra.naming import check_ownership
from orchestra.security import privileged
from orchestra.services import create_checks, datasets, dependencies, task_outputs
from orchestra.services.context import Context
from orchestra.services.validation import check_image, check_priority, check_retries, parse_duration
from orchestra.states import FINAL_JOB, JobStatus, TaskAction, TaskStatus, user_move

DRY_RUN_SHOWN = 5


@dataclass(frozen=True)
class TaskRequest:
    name: str
    config_dataset: str
    data_dataset: str
    image: str
    command: str
    bypass: bool = False
    queue: str | None = None
    max_retries: int | None = None
    max_time: str | None = None
    priority: int = 0
    after: tuple[str, ...] = ()  # start when these tasks are completed (services/dependencies.py)
    after_any: tuple[str, ...] = ()  # start when these tasks are in any final state


@dataclass(frozen=True)
class CreatedTask:
    id: int | None
    name: str
    n_jobs: int
    n_scouts: int
    queue: str
    cluster: str
    first_commands: list[str]
    waits_for: tuple[str, ...] = ()  # dependencies not satisfied yet, described ("user.x.prep (running)")
    jobs_later: bool = False  # its config dataset's files are recorded when it is expanded (--from-task)


@dataclass
class TaskSummary:
    id: int
    name: str
    owner: str
    cluster: str
    queue: str
    status: str
    priority: int
    n_jobs: int
    created_at: float
    counts: dict[str, int] = field(default_factory=dict)  # every JobStatus, zeros included
    reason: str | None = None
    request: str | None = None

    @property
    def ended(self) -> int:
        """Jobs that ended, whichever way (succeeded, failed, killed): what the progress bar fills."""
        return sum(self.counts.get(s, 0) for s in FINAL_JOB)


def create(ctx: Context, req: TaskRequest, *, dry_run: bool = False) -> CreatedTask:
    """Validate the whole request, then record the task as REGISTERED in one transaction."""
    owner = check_ownership(req.name, ctx.user, "task", admin=ctx.admin)
    expansion.check_template(req.command)
    check_image(req.image)
    check_priority(req.priority)
    max_time = parse_duration(req.max_time)
    retries = ctx.settings.scheduler.max_retries if req.max_retries is None else req.max_retries
    check_retries(retries)
    with ctx.transaction() as session:
        if session.scalar(select(Task.id).where(Task.name == req.name)) is not None:
            raise OrchestraError(f"task {req.name!r} already exists; choose another name or delete it first")
        config, _ = datasets.get(session, req.config_dataset)
        data, _ = datasets.get(session, req.data_dataset)
        if config.cluster != data.cluster:
            raise OrchestraError(
                f"config dataset {config.name!r} is on cluster {config.cluster} but data dataset {data.name!r} "
                f"is on {data.cluster}; register both on the same cluster"
            )
        deps = dependencies.resolve(session, req.name, owner, req.after, req.after_any)
        create_checks.check_pending_datasets(session, config, data, deps)
        jobs_later = task_outputs.pending(config)
        if config.n_files == 0 and not jobs_later:
            raise OrchestraError(f"config dataset {config.name!r} has no files; register a directory with files")
        create_checks.check_files_exist(session, config, data)
        cluster = ctx.settings.cluster(config.cluster)
        queue = req.queue or cluster.default_queue
        if queue not in cluster.queues:
            raise OrchestraError(
                f"queue {queue!r} does not exist on cluster {cluster.name}; use one of: {', '.join(cluster.queues)}"
            )
        planned = config.n_files or ctx.settings.scheduler.scouts  # unknown yet (--from-task): the expansion caps it
        n_scouts = 0 if req.bypass else min(ctx.settings.scheduler.scouts, planned)
        root = expansion.output_root(str(cluster.storage), owner, req.name)
        create_checks.check_fresh_output_root(root, req.name)
        waits_for = tuple(dependencies.describe([d]) for d in deps if not d.satisfied)
        first = [
            job.command
            for job in expansion.expand(
                req.command, data.path, datasets.config_paths(session, config.id, DRY_RUN_SHOWN), root
            )
        ]
        result = CreatedTask(None, req.name, config.n_files, n_scouts, queue, cluster.name, first, waits_for, jobs_later)
        if dry_run:
            session.rollback()
            return result
        values = dict(
            name=req.name, owner_id=ctx.user_id(session, owner), cluster=cluster.name, queue=queue,
            image=req.image, command=req.command, config_dataset_id=config.id, data_dataset_id=data.id,
            priority=req.priority, max_retries=retries, max_time=max_time, bypass=req.bypass,
            n_jobs=config.n_files, n_scouts=n_scouts,
        )
        if is_sqlite(session.connection()):
            # PostgreSQL fills these from the server (a user's role may not set them: migration 0003);
            # the scheduler recomputes the output root from its own storage when it expands the task.
            now = time.time()
            values.update(status=TaskStatus.REGISTERED.value, n_queued=0, output_root=root,
                          created_at=now, updated_at=now)
        try:
            task_id = session.execute(insert(Task).values(**values).returning(Task.id)).scalar_one()
        except IntegrityError:  # the same name, created by another command in the meantime
            raise OrchestraError(f"task name {req.name!r} already taken (just now, by another command); "
                                 "choose another name") from None
        dependencies.record(session, task_id, deps)
        ctx.audit(session, "task create", req.name)
        ctx.wake_scheduler(session)
        return CreatedTask(task_id, req.name, config.n_files, n_scouts, queue, cluster.name, first, waits_for,
                           jobs_later)


def find(session: Session, ref: str) -> tuple[Task, str]:
    """A task by name or numeric id, with its owner's name."""
    from orchestra.services.validation import known_job_id

    if ref.isdigit() and not known_job_id(int(ref)):  # a number no id can be (SQLite would overflow)
        raise NotFound(f"task {ref!r} does not exist; `maestro task list` shows your tasks")
    query = select(Task, User.name).join(User, User.id == Task.owner_id)
    query = query.where(Task.id == int(ref)) if ref.isdigit() else query.where(Task.name == ref)
    row = session.execute(query).first()
    if row is None:
        raise NotFound(f"task {ref!r} does not exist; `maestro task list` shows your tasks")
    return row[0], row[1]


def job_counts(session: Session, task_ids: list[int]) -> dict[int, dict[str, int]]:
    """Jobs per state of each task (`job_lookup.state_counts`: the CLI, the dashboard and the
    mails all count this way, so they cannot disagree)."""
    return state_counts(session, task_ids)


def _summary(task: Task, owner: str, counts: dict[str, int]) -> TaskSummary:
    every = {s.value: counts.get(s.value, 0) for s in JobStatus}  # one vocabulary: every state, always
    return TaskSummary(
        task.id, task.name, owner, task.cluster, task.queue, task.status, task.priority, task.n_jobs,
        task.created_at, every, task.reason, task.request,
    )


def list_tasks(ctx: Context, owner: str | None = None, status: str | None = None) -> list[TaskSummary]:
    """Every task (of `owner`, in `status`), oldest first: `maestro task list`."""
    return task_page(ctx, owner, status).rows


def summary(ctx: Context, ref: str) -> TaskSummary:
    """One task's line of `task list` (its state and counts), for a live view."""
    with ctx.transaction() as session:
        task, owner = find(session, ref)
        return _summary(task, owner, job_counts(session, [task.id])[task.id])


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing, and how many tasks matched in all (for the pager)."""

    rows: list[TaskSummary]
    total: int


def task_page(ctx: Context, owner: str | None = None, status: str | None = None, *, limit: int = 0,
              offset: int = 0, newest_first: bool = False) -> TaskPage:
    """Tasks with their job counts, paged in SQL (`limit` 0: all of them), so a page of the
    dashboard reads only its own rows and their counts, however many tasks there are."""
    if status is not None and status not in {s.value for s in TaskStatus}:
        raise OrchestraError(f"--status {status!r} is unknown; use one of: {', '.join(s.value for s in TaskStatus)}")
    with ctx.transaction() as session:
        where = ([User.name == owner] if owner else []) + ([Task.status == status] if status else [])
        query = (select(Task, User.name).join(User, User.id == Task.owner_id).where(*where)
                 .order_by(Task.id.desc() if newest_first else Task.id))
        if limit:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        rows = session.execute(query).all()
        if limit and (len(rows) == limit or (offset and not rows)):
            total = session.scalar(select(func.count()).select_from(Task).join(User, User.id == Task.owner_id)
                                   .where(*where)) or 0
        else:
            total = offset + len(rows)
        counts = job_counts(session, [t.id for t, _ in rows])
        return TaskPage([_summary(t, o, counts[t.id]) for t, o in rows], total)


@dataclass(frozen=True)
class FailedAttempt:
    """A failed (or lost) attempt as `task show` lists it: the job's id (what `maestro job logs`
    takes) beside its index, and the reason composed once (orchestra.reasons)."""

    job_id: int
    job_index: int
    attempt: int
    status: str  # "failed" or "lost"
    exit_code: int | None
    reason: str
    log_tail: str


@dataclass(frozen=True)
class TaskDetail:
    summary: TaskSummary
    image: str
    command: str
    max_retries: int
    max_time: float | None
    bypass: bool
    n_scouts: int
    output_root: str
    config_dataset: str | None
    data_dataset: str | None
    failed: list[FailedAttempt]
    failed_total: int = 0  # failed and lost attempts in all; `failed` holds the first of them


def tail(path: str | None, lines: int = 10) -> str:
    """The last lines of a log file ('' when it is missing): enough to see why a job failed."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def show(ctx: Context, ref: str, failures: int = 5) -> TaskDetail:
    """Everything about a task, with its first `failures` failed attempts (0: all of them)."""
    from orchestra.db.models import Dataset
    from orchestra.reasons import ended

    with ctx.transaction() as session:
        task, owner = find(session, ref)
        counts = job_counts(session, [task.id])[task.id]
        names = dict(
            session.execute(
                select(Dataset.id, Dataset.name).where(Dataset.id.in_([task.config_dataset_id, task.data_dataset_id]))
            ).all()
        )
        failing = (Job.task_id == task.id) & Attempt.status.in_(["failed", "lost"])
        query = (
            select(Job.id, Job.index, Attempt.number, Attempt.status, Attempt.exit_code, Attempt.reason,
                   Attempt.log_path)
            .join(Attempt, Attempt.job_id == Job.id).where(failing)
            .order_by(Job.is_scout.desc(), Attempt.id.desc())
        )
        failed_rows = session.execute(query.limit(failures) if failures > 0 else query).all()
        failed_total = session.scalar(select(func.count()).select_from(Job).join(Attempt, Attempt.job_id == Job.id)
                                      .where(failing)) or 0
        failed = [FailedAttempt(jid, i, n, st, code, ended(st, code, why, task.max_time), tail(log))
                  for jid, i, n, st, code, why, log in failed_rows]
        return TaskDetail(
            _summary(task, owner, counts), task.image, task.command, task.max_retries, task.max_time, task.bypass,
            task.n_scouts, task.output_root, names.get(task.config_dataset_id), names.get(task.data_dataset_id),
            failed, failed_total,
        )


@dataclass(frozen=True)
class ScoutJob:
    id: int
    index: int
    status: str
    attempts: int


@dataclass(frozen=True)
class Scouts:
    """A task's scout jobs and where their verdict stands (`states.scout_verdict`)."""

    planned: int
    needed: int  # successes that release the task
    jobs: list[ScoutJob]
    verdict: str | None  # "running" (released), "broken", or None: still undecided

    @property
    def succeeded(self) -> int:
        return sum(j.status == JobStatus.SUCCEEDED for j in self.jobs)

    @property
    def failed(self) -> int:
        return sum(j.status in (JobStatus.FAILED, JobStatus.KILLED) for j in self.jobs)


def scouts(ctx: Context, task_id: int) -> Scouts | None:
    """The scouts of a task (None: it has none, bypassed or not expanded yet), read by their
    indices through the (task, index) key: a few rows, however many jobs the task has."""
    from orchestra.scheduler.expand import scout_indices
    from orchestra.states import scout_verdict, scouts_needed

    threshold = ctx.settings.scheduler.scout_success_threshold
    with ctx.transaction() as session:
        task = session.get(Task, task_id)
        if task is None or task.bypass or not task.n_scouts or not task.n_jobs:
            return None
        indices = sorted(scout_indices(task.n_jobs, task.n_scouts))
        rows = session.execute(select(Job.id, Job.index, Job.status, Job.attempts)
                               .where(Job.task_id == task_id, Job.index.in_(indices), Job.is_scout.is_(True))
                               .order_by(Job.index)).all()
        found = [ScoutJob(*r) for r in rows]
        ok = sum(j.status == JobStatus.SUCCEEDED for j in found)
        bad = sum(j.status in (JobStatus.FAILED, JobStatus.KILLED) for j in found)
        verdict = scout_verdict(ok, bad, task.n_scouts, threshold)
        if task.released_at is not None:
            verdict = TaskStatus.RUNNING
        return Scouts(task.n_scouts, scouts_needed(task.n_scouts, threshold), found,
                      None if verdict is None else verdict.value)


def _owned(ctx: Context, session: Session, ref: str) -> Task:
    task, owner = find(session, ref)
    ctx.require_owner(owner, f"task {task.name!r}")
    return task


def kill(ctx: Context, ref: str) -> tuple[str, str | None]:
    """Stop a task: pending jobs at once, running ones in the scheduler's next cycle.

    Returns the task's name and its request ('kill' while live jobs remain to be stopped)."""
    with ctx.transaction() as session:
        task = _owned(ctx, session, ref)
        user_move(task.status, TaskAction.KILL, task.name)  # refused when already final
        request = privileged.kill(session, task.id, ctx.user)
        ctx.audit(session, "task kill", task.name)
        ctx.wake_scheduler(session)
        return task.name, request


@dataclass(frozen=True)
class Retried:
    """What a retry did: jobs re-queued, and the task's state now (`states.retry_status`)."""

    name: str
    n_queued: int
    status: str


def retry(ctx: Context, ref: str) -> Retried:
    """Re-queue failed and killed jobs (with a fresh retry budget); a BROKEN task scouts again; a
    task that never got its jobs (killed or broken before expansion) is REGISTERED again."""
    with ctx.transaction() as session:
        task = _owned(ctx, session, ref)
        if task.request:
            raise OrchestraError(f"task {task.name!r} is still being stopped ({task.request}); retry in a moment")
        move = user_move(task.status, TaskAction.RETRY, task.name)
        n_queued = privileged.retry(session, task.id, ctx.user)
        if n_queued == 0 and move.needs_redo:
            raise OrchestraError(f"task {task.name!r} is {task.status} and has no failed or killed jobs; "
                                 "nothing to retry")
        status = session.scalar(select(Task.status).where(Task.id == task.id)) or ""
        ctx.audit(session, "task retry", task.name)
        ctx.wake_scheduler(session)
        return Retried(task.name, n_queued, status)


def delete_task(ctx: Context, ref: str, *, purge: bool = False) -> bool:
    """Remove a task. With live jobs, it is marked for the scheduler to kill and remove.

    Returns True when the task is gone now, False when the scheduler will finish the job.
    """
    with ctx.transaction() as session:
        task = _owned(ctx, session, ref)
        user_move(task.status, TaskAction.DELETE, task.name)  # allowed in every state
        dependencies.check_no_waiting_dependents(session, task.id, task.name)
        name, cluster, owner_id = task.name, task.cluster, task.owner_id
        owner = session.scalar(select(User.name).where(User.id == owner_id))
        gone = privileged.delete_task(session, task.id, purge, ctx.user)
        ctx.audit(session, "task delete" + (" --purge" if purge else ""), name)
        if not gone:
            ctx.wake_scheduler(session)
    if gone and purge:
        purge_outputs(expansion.output_root(str(ctx.settings.cluster(cluster).storage), owner or "", name),
                      ctx.settings.cluster(cluster).storage)
    return gone


def purge_outputs(root: str | Path, storage: Path) -> None:
    """Remove a task's output directory (its jobs' %OUT and attempt logs) inside the cluster's
    `storage`, never following a symbolic link (orchestra.paths.safe_rmtree).

    UntrustedPath (an OrchestraError) when the root is outside the storage or goes through a
    link; OrchestraError when some of it could not be removed. A missing root is nothing to do.
    """
    from orchestra.paths import safe_rmtree

    try:
        safe_rmtree(Path(root), storage)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else root
        raise OrchestraError(f"some outputs of {root} were not removed ({where}: {exc.strerror or exc}); "
                             "remove them by hand") from None
