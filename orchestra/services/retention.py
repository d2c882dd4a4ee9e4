"""Retention: a finished task is removed `keep_finished_days` after it finished, with its jobs, its
attempts and their log directories (and its outputs with `purge_outputs`); its owner is told
`notice_days` before.

Who runs it: the scheduler service once a day (`daily`, after a full cycle; the next run's time
is kept in the `change_counter` row `retention`, so a restart does not run it again at once), and
an admin by hand (`orchestra gc [--dry-run]`, `by_hand`). The work is bounded: tasks are read a
batch at a time, oldest finish first, each batch in its own short transaction, and one run acts
on at most `limit` tasks (the service carries on after its next full cycle).

Rules, for a task in a final state with no pending request:
- notices: with R = finished_at + keep, the notice for d days is due from R - d days unless one
  was given since; several due at once make one notice. A notice older than `finished_at` belongs
  to an earlier finish (the task was retried) and counts for nothing;
- removal from R, and, with notices configured, only once a notice was given at least the
  smallest of `notice_days` ago: an owner is always told that long before (a late notice, after
  an outage, moves the removal back rather than skipping the warning);
- a task that a task not yet final waits for (`--after`) stays; datasets are never removed, and
  outputs that a dataset points into (`--from-task`, or a path inside them) are kept;
- files go before rows, each path recomputed from the configured storage (never read from a
  row) and removed without following a link (orchestra.paths.safe_rmtree): a task whose files
  cannot be removed stays, and the report says why; a crash between the two leaves rows whose
  files are gone, which the next run removes.

Notices are given by the service only: it records them in `tasks.removal_notice_at` and hands the
mail to the outbox (`orchestra.notify.outbox.enqueue`; the postman sends it). An admin's `orchestra gc`
lists the notices due and removes only tasks whose owners were told (or when no notices are
configured). Rows go through the existing privileged path: `remove_task_rows` for the service,
`privileged.delete_task` (PostgreSQL: the owner's checked function) for an admin.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from orchestra.config import RetentionConfig, Settings
from orchestra.db.models import Attempt, ChangeCounter, Dataset, Installation, Job, Task, TaskDependency, User
from orchestra.errors import OrchestraError, PermissionDenied
from orchestra.paths import UntrustedPath, safe_rmtree, state_root, trusted_output_root
from orchestra.security import privileged
from orchestra.services import history
from orchestra.services.context import Context
from orchestra.services.tasks import purge_outputs
from orchestra.states import FINAL_TASK

log = logging.getLogger("orchestra.retention")

DAY = 86400.0
BATCH = 100  # tasks read, and acted on, per transaction
LIMIT = 500  # tasks acted on (noticed or removed) per run; the service carries on after its next full cycle
RUN_ROW = "retention"  # change_counter row: when the service's next run is due (epoch s)
FINAL = tuple(s.value for s in FINAL_TASK)

Transaction = Callable[[], AbstractContextManager[Session]]


@dataclass
class Removal:
    """A task that goes (or, dry, would go), with what goes with it."""

    name: str
    owner: str
    status: str
    finished_at: float
    jobs: int
    attempts: int
    logs: int  # attempt log directories found on disk
    outputs: str | None = None  # the output root purged
    outputs_kept: str | None = None  # why outputs were kept although purge_outputs is on
    refused: str | None = None  # why the task stays after all (its files could not be removed)


@dataclass
class Notice:
    name: str
    owner: str
    remove_at: float  # the earliest removal, as told to the owner
    mailed: bool = False


@dataclass
class Report:
    now: float
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    noticed: list[Notice] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (task, why it stays although due)
    more: bool = False  # the run stopped at its limit: more is due
    history_removed: int = 0  # usage history rows older than keep_history_days (services/history.py)

    def line(self) -> str:
        """One log line for the service."""
        gone = [r for r in self.removed if r.refused is None]
        return (f"retention: {len(gone)} task(s) removed ({sum(r.jobs for r in gone)} jobs, "
                f"{sum(r.logs for r in gone)} log dirs), {len(self.noticed)} notice(s), {len(self.kept)} kept"
                + (", more next cycle" if self.more else "")
                + (f"; {self.history_removed} usage history row(s) removed" if self.history_removed else ""))


@dataclass(frozen=True)
class _Writer:
    """How a run writes: the service's fenced transactions and direct deletes, or an admin's."""

    transaction: Transaction
    remove_rows: Callable[[Session, int], Any]
    audit: Callable[[Session, str], None] | None
    gives_notices: bool


@dataclass(frozen=True)
class _Candidate:
    id: int
    name: str
    owner: str
    status: str
    cluster: str
    finished_at: float
    notice_at: float | None
    n_jobs: int


def _decide(task: _Candidate, cfg: RetentionConfig, now: float) -> tuple[str, float]:
    """("notice" | "remove" | "wait", removal time told or due) for one finished task."""
    due = task.finished_at + cfg.keep_finished_days * DAY
    if not cfg.notice_days:
        return ("remove" if now >= due else "wait"), due
    last = task.notice_at if task.notice_at is not None and task.notice_at >= task.finished_at else None
    smallest = min(cfg.notice_days) * DAY
    if any(now >= due - d * DAY and (last is None or last < due - d * DAY) for d in cfg.notice_days):
        return "notice", max(due, now + smallest)
    if last is not None and now >= due and now >= last + smallest:
        return "remove", due
    return "wait", max(due, (last or now) + smallest)


def _needs_action(cfg: RetentionConfig, now: float) -> Any:
    """SQL: the finished tasks for which `_decide` may say notice or remove (a superset is fine)."""
    keep = cfg.keep_finished_days * DAY
    clauses = [Task.finished_at <= now - keep]
    for d in cfg.notice_days:
        clauses.append((Task.finished_at <= now - keep + d * DAY) & (
            Task.removal_notice_at.is_(None) | (Task.removal_notice_at < Task.finished_at)
            | (Task.removal_notice_at < Task.finished_at + (keep - d * DAY))))
    return or_(*clauses)


def _candidates(session: Session, cfg: RetentionConfig, now: float, batch: int, after: tuple[float, int] | None,
                lock: bool) -> list[_Candidate]:
    """The next batch of tasks that may need a notice or a removal, oldest finish first, after the
    key `after` (keyset paging: a task that stays is not read again in the same run)."""
    query = (select(Task.id, Task.name, User.name, Task.status, Task.cluster, Task.finished_at,
                    Task.removal_notice_at, Task.n_jobs)
             .join(User, User.id == Task.owner_id)
             .where(Task.status.in_(FINAL), Task.request.is_(None), Task.finished_at.is_not(None),
                    _needs_action(cfg, now))
             .order_by(Task.finished_at, Task.id).limit(batch))
    if after is not None:
        query = query.where(tuple_(Task.finished_at, Task.id) > tuple_(*after))
    if lock:  # a retry or a delete by the owner waits for this batch's transaction
        query = query.with_for_update(of=Task)
    return [_Candidate(*r) for r in session.execute(query).all()]


def _waited_for(session: Session, ids: Sequence[int]) -> dict[int, str]:
    """Of `ids`, the tasks that a task not yet final waits for (`--after`), with one such task."""
    dependent = aliased(Task)
    rows = session.execute(
        select(TaskDependency.depends_on_id, dependent.name)
        .join(dependent, dependent.id == TaskDependency.task_id)
        .where(TaskDependency.depends_on_id.in_(ids), dependent.status.not_in(FINAL))).all()
    return {task_id: name for task_id, name in rows}


def _attempt_names(session: Session, task_id: int) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in session.execute(
        select(Attempt.cluster, Attempt.backend_name).join(Job, Job.id == Attempt.job_id)
        .where(Job.task_id == task_id)).all()]


def _log_dirs(settings: Settings, installation: str, attempts: Sequence[tuple[str, str]]) -> list[tuple[Path, Path]]:
    """(directory, storage) of each attempt's state (its log): recomputed from the configured
    storage and the attempt's backend name, never from the row's log_path."""
    dirs = []
    for cluster, name in attempts:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise UntrustedPath(f"attempt name {name!r} is not a single directory name")
        storage = settings.cluster(cluster).storage
        dirs.append((state_root(storage, installation) / name, storage))
    return dirs


def _outputs(session: Session, settings: Settings, task: _Candidate) -> tuple[Path | None, Path, str | None]:
    """(output root to purge or None, its storage, why kept): a dataset pointing into it keeps it."""
    storage = settings.cluster(task.cluster).storage
    root = trusted_output_root(storage, task.owner, task.name)
    inside = str(root).rstrip("/") + "/"
    users = session.scalars(select(Dataset.name).where(
        (Dataset.source_task_id == task.id) | (Dataset.path == str(root))
        | (func.substr(Dataset.path, 1, len(inside)) == inside)).order_by(Dataset.name).limit(1)).first()
    if users is not None:
        return None, storage, f"dataset {users} points into them"
    return root, storage, None


def _remove(session: Session, writer: _Writer, settings: Settings, installation: str, task: _Candidate,
            dry_run: bool) -> Removal:
    """Files first (a failure keeps the task), then rows."""
    attempts = _attempt_names(session, task.id)
    removal = Removal(task.name, task.owner, task.status, task.finished_at, task.n_jobs, len(attempts), 0)
    try:
        dirs = _log_dirs(settings, installation, attempts)
        removal.logs = sum(1 for d, _ in dirs if os.path.lexists(d))
        root = storage = None
        if settings.retention.purge_outputs:
            root, storage, removal.outputs_kept = _outputs(session, settings, task)
            removal.outputs = str(root) if root is not None else None
        if dry_run:
            return removal
        for directory, where in dirs:
            safe_rmtree(directory, where)
        if root is not None and storage is not None:
            purge_outputs(root, storage)
    except (OrchestraError, OSError) as exc:
        removal.refused = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("retention: task %s stays: %s", task.name, removal.refused)
        return removal
    writer.remove_rows(session, task.id)
    if writer.audit is not None:
        writer.audit(session, task.name)
    return removal


def _mail(session: Session, settings: Settings, task: _Candidate, remove_at: float, now: float) -> bool:
    """Hand the notice to the mail outbox (`orchestra.notify.outbox.enqueue`: nothing when mail is
    off, the owner has no address or opted out); logged always. True when a mail was queued."""
    when = time.strftime("%Y-%m-%d", time.localtime(remove_at))
    subject = f"[orchestra] task {task.name} will be removed on {when}"
    body = (f"Your task {task.name} ({task.status}) finished on "
            f"{time.strftime('%Y-%m-%d', time.localtime(task.finished_at))}. Finished tasks are kept "
            f"{settings.retention.keep_finished_days:g} days: on {when} or later it will be removed with its "
            "jobs and their logs" + (" and outputs" if settings.retention.purge_outputs else "") + ".\n"
            f"Look at it before then: maestro task show -t {task.name}\n")
    log.info("retention notice to %s: %s", task.owner, subject)
    from orchestra.notify.outbox import enqueue  # mailed after the cycle by the service's postman

    owner_id = session.scalar(select(Task.owner_id).where(Task.id == task.id))
    if owner_id is None:
        return False
    return enqueue(session, settings, owner_id, "removal notice", subject, body, now, task_id=task.id)


def run(ctx: Context, writer: _Writer, now: float, *, dry_run: bool = False, batch: int = BATCH,
        limit: int = LIMIT) -> Report:
    """One retention run at time `now` (see the module's rules)."""
    cfg = ctx.settings.retention
    report = Report(now=now, dry_run=dry_run)
    if cfg.keep_finished_days <= 0:
        return report
    with ctx.transaction() as session:
        installation = session.scalar(select(Installation.id)) or "default"
    acted = 0
    after: tuple[float, int] | None = None
    while not report.more:
        with writer.transaction() as session:  # one batch, one short transaction
            rows = _candidates(session, cfg, now, batch, after, lock=not dry_run)
            waited = _waited_for(session, [r.id for r in rows]) if rows else {}
            for task in rows:
                if acted >= limit:
                    report.more = True
                    break
                action, remove_at = _decide(task, cfg, now)
                if action == "notice":
                    notice = Notice(task.name, task.owner, remove_at)
                    report.noticed.append(notice)
                    if writer.gives_notices and not dry_run:
                        session.execute(update(Task).where(Task.id == task.id).values(removal_notice_at=now))
                        notice.mailed = _mail(session, ctx.settings, task, remove_at, now)
                        acted += 1
                elif action == "remove":
                    if task.id in waited:
                        report.kept.append((task.name, f"{waited[task.id]} waits for it"))
                        continue
                    removal = _remove(session, writer, ctx.settings, installation, task, dry_run)
                    report.removed.append(removal)
                    acted += removal.refused is None  # a task that stays costs no part of the limit
        if len(rows) < batch:
            break
        after = (rows[-1].finished_at, rows[-1].id)
    return report


def by_hand(ctx: Context, *, now: float | None = None, dry_run: bool = False) -> Report:
    """`orchestra gc`: admins only (PostgreSQL: members of orchestra_admins; SQLite: the file's owner)."""
    if not ctx.admin:
        raise PermissionDenied(f"only admins may run `orchestra gc`; {ctx.user!r} is not one "
                               "(admins are members of orchestra_admins; on SQLite, the database file's owner "
                               "as themselves, without ORCHESTRA_USER)")
    by = ctx.user
    writer = _Writer(ctx.transaction, lambda session, task_id: privileged.delete_task(session, task_id, False, by),
                     lambda session, name: ctx.audit(session, "gc", name), gives_notices=False)
    now = time.time() if now is None else now
    if dry_run:  # nothing changes between runs: one run, unbounded, says all that would go
        return run(ctx, writer, now, dry_run=True, limit=sys.maxsize)
    # By hand the admin waits for the whole: runs of LIMIT removals (each batch its own transaction)
    # until one is not cut short; each run removed LIMIT tasks or was the last.
    report = Report(now=now, dry_run=False)
    while True:
        part = run(ctx, writer, now)
        report.removed += part.removed
        report.noticed += part.noticed
        report.kept += part.kept
        if not part.more:
            return report


def service_writer(transaction: Transaction) -> _Writer:
    """The service's writes: its lease-fenced transactions, the scheduler's own row removal."""
    return _Writer(transaction, privileged.remove_task_rows, None, gives_notices=True)


def daily(ctx: Context, transaction: Transaction, clock: Callable[[], float] = time.time, *,
          batch: int = BATCH, limit: int = LIMIT) -> Report | None:
    """The service's run when due (None when not, or retention is off). The next run is due a day
    later, or at the next call when this one stopped at its limit; it is set to an hour from now
    before the work, so a crash in the middle does not make every restart start over at once.

    The usage history is tidied in the same run (`history.tidy`: raw records after two days, each
    rollup level after its own age, the 6-hour and daily ones after keep_history_days). With finished
    tasks kept forever there is no due row (the service writes nothing it need not): the history is
    pruned at every call then, a range delete on its `at` index that finds nothing most times."""
    cfg = ctx.settings.retention
    if cfg.keep_finished_days <= 0:
        history.tidy(transaction, clock(), cfg.keep_history_days)
        return None
    now = clock()
    with transaction() as session:
        due = session.scalar(select(ChangeCounter.value).where(ChangeCounter.name == RUN_ROW).with_for_update())
        if due is not None and due > now:
            return None
        _set_next(session, due is None, now + 3600)
    report = run(ctx, service_writer(transaction), now, batch=batch, limit=limit)
    report.history_removed = history.tidy(transaction, now, cfg.keep_history_days)
    with transaction() as session:
        _set_next(session, False, now if report.more else now + DAY)
    return report


def _set_next(session: Session, new: bool, at: float) -> None:
    if new:
        session.execute(insert(ChangeCounter).values(name=RUN_ROW, value=int(at)))
    else:
        session.execute(update(ChangeCounter).where(ChangeCounter.name == RUN_ROW).values(value=int(at)))
