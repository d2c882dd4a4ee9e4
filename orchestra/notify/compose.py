"""What a notification says: the task, its end state, its jobs' counts per state, the first few
failures with their reasons and log tails, and the commands to look further.

Read inside the scheduler's transaction that records the event; its cost is bounded by the task's
counts (one grouped query) and `FAILURES` failed jobs, never by the number of jobs. Log tails are
read without following a link and only from regular files: a job that replaces its log with a link
to a file its owner may not read must not get that file mailed to them.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestra.db.job_lookup import settled, state_counts
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.reasons import ended
from orchestra.states import JobStatus

FAILURES = 3  # failed jobs described in one mail
TAIL_BYTES = 2048  # the end of each described failure's last log
TAIL_LINES = 15

INTRO = {
    "completed": "completed: every job succeeded",
    "partial": "ended partially: some jobs failed after all their retries",
    "broken": "is broken: its scout jobs failed, and its other jobs did not run",
    "killed": "was killed",
}


@dataclass(frozen=True)
class Mail:
    user_id: int
    to: str
    subject: str
    body: str


def log_tail(path: str | None) -> str:
    """The last lines of a log ('' if it is gone, unreadable, or not a regular file)."""
    if not path:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        start = max(0, info.st_size - TAIL_BYTES)
        data = os.pread(fd, TAIL_BYTES, start)
    except OSError:
        return ""
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # a cut first line
    return "\n".join(lines[-TAIL_LINES:])


def compose(session: Session, task_id: int, event: str) -> Mail | None:
    """The mail about `event` of task `task_id`, or None when its owner has no address or opted out."""
    row = session.execute(
        select(Task.name, Task.reason, Task.max_time, User.id, User.email, User.notify)
        .join(User, User.id == Task.owner_id).where(Task.id == task_id)).first()
    if row is None or not row.email or not row.notify:
        return None
    counts = state_counts(session, [task_id])[task_id]
    total = sum(counts.values())
    lines = [f"Your task {row.name} {INTRO.get(event, event)}.", ""]
    if row.reason:
        lines += [f"Reason: {row.reason}", ""]
    lines.append(f"Jobs ({total}):")
    lines += [f"  {state.value:<10} {counts[state.value]}" for state in JobStatus if counts.get(state.value)]
    failed = session.execute(
        select(Job.id, Job.index, Job.exit_code, Job.reason).where(
            Job.task_id == task_id, settled(JobStatus.FAILED.value)).order_by(Job.index).limit(FAILURES)).all()
    for job_id, index, code, why in failed:
        log_path = session.scalar(select(Attempt.log_path).where(Attempt.job_id == job_id)
                                  .order_by(Attempt.number.desc()).limit(1))
        lines += ["", f"Job {job_id} (#{index}) failed: {ended('failed', code, why, row.max_time) or 'failed'}"]
        tail = log_tail(log_path)
        if tail:
            lines += ["  last lines of its log:"] + [f"    {line}" for line in tail.splitlines()]
    n_failed = counts.get(JobStatus.FAILED.value, 0)
    if n_failed > len(failed):
        lines += ["", f"... and {n_failed - len(failed)} more failed job(s)."]
    lines += ["", "To look further:", f"  maestro task show -t {row.name}",
              f"  maestro job list -t {row.name} --status failed"]
    if failed:
        lines.append(f"  maestro job logs {failed[0][0]}")
    if event in ("partial", "broken", "killed"):
        lines.append(f"  maestro task retry -t {row.name}")
    lines += ["", "You get this mail because your Orchestra user has an e-mail address; "
              "`maestro user notify off` stops these mails."]
    subject = f"[orchestra] task {row.name} {event}"
    if total:
        subject += f" ({counts.get(JobStatus.SUCCEEDED.value, 0)}/{total} succeeded)"
    return Mail(row.id, row.email, subject, "\n".join(lines) + "\n")
