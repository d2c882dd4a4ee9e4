"""Jobs for users: list a task's jobs with their latest attempt, and read (or follow) a job's log
in constant memory, however large it is."""
from __future__ import annotations

import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from sqlalchemy import select

from orchestra import logcap
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.services.validation import known_job_id
from orchestra.errors import NotFound, OrchestraError
from orchestra.services.context import Context
from orchestra.services.tasks import find
from orchestra.states import LIVE_JOB, JobStatus


@dataclass(frozen=True)
class JobRow:
    id: int
    index: int
    is_scout: bool
    status: str
    attempts: int
    exit_code: int | None
    reason: str | None
    host: str | None
    started_at: float | None
    ended_at: float | None
    log_path: str | None

    @property
    def runtime(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at


def list_jobs(ctx: Context, task_ref: str, status: str | None = None, limit: int = 200) -> list[JobRow]:
    if status is not None and status not in {s.value for s in JobStatus}:
        raise OrchestraError(f"--status {status!r} is unknown; use one of: {', '.join(s.value for s in JobStatus)}")
    with ctx.transaction() as session:
        task, _ = find(session, task_ref)
        query = (
            select(Job, Attempt.host, Attempt.log_path)
            .outerjoin(Attempt, (Attempt.job_id == Job.id) & (Attempt.number == Job.attempts))
            .where(Job.task_id == task.id)
            .order_by(Job.index)
            .limit(limit)
        )
        if status:
            query = query.where(Job.status == status)
        return [
            JobRow(j.id, j.index, j.is_scout, j.status, j.attempts, j.exit_code, j.reason, host, j.started_at,
                   j.ended_at, log)
            for j, host, log in session.execute(query)
        ]


def _attempt(ctx: Context, job_id: int, number: int | None, wait: bool = False) -> tuple[str | None, str, int]:
    """The log path, job status and number of an attempt (default: the latest). With `wait`, a job
    that has not started yet (held or queued) is waited for instead of refused."""
    if not known_job_id(job_id):
        raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
    told = False
    while True:
        with ctx.transaction() as session:
            row = session.execute(
                select(Job.status, Job.attempts, User.name).join(Task, Task.id == Job.task_id)
                .join(User, User.id == Task.owner_id).where(Job.id == job_id)
            ).first()
            if row is None:
                raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
            status, attempts, _owner = row
            wanted = number or attempts
            if wanted:
                log = session.scalar(select(Attempt.log_path).where(Attempt.job_id == job_id, Attempt.number == wanted))
                if log is None:
                    raise NotFound(f"job {job_id} has no attempt {wanted}; it has {attempts}")
                return log, status, wanted
            if not wait or status not in (JobStatus.HELD, JobStatus.QUEUED):
                raise OrchestraError(f"job {job_id} has not started yet ({status}); no log so far")
        if not told:
            sys.stderr.write(f"job {job_id} is {status}; waiting for it to start (Ctrl-C stops)\n")
            told = True
        time.sleep(0.5)


CHUNK = 64 * 1024  # what a read or a write of a log moves at a time: memory stays constant


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n} bytes"


def cut_notice(cut: int, cap: int | None) -> bytes:
    """The line that says a log's start was cut (see orchestra.logcap)."""
    under = f" to keep it under its cap of {_size(cap)}" if cap else ""
    return f"[orchestra: the first {cut} bytes ({cut / 2**20:.1f} MiB) of this log were cut{under}]\n".encode()


def tail_start(fd: int, lines: int, start: int = 0, end: int | None = None) -> int:
    """The offset where the last `lines` lines of the file's bytes [start, end) begin, read
    backwards from `end` (default: the file's size) CHUNK bytes at a time. A final line without
    a newline counts as a line; fewer lines than asked: `start`."""
    end = os.fstat(fd).st_size if end is None else end
    if lines <= 0:
        return end
    position = end - 1  # the last byte ends the last line (newline or not): never a line break
    found = 0
    while position > start:
        size = min(CHUNK, position - start)
        position -= size
        chunk = os.pread(fd, size, position)
        stop = len(chunk)
        while True:
            newline = chunk.rfind(b"\n", 0, stop)
            if newline < 0:
                break
            found += 1
            if found == lines:
                return position + newline + 1
            stop = newline
    return start


def copy_range(fd: int, start: int, end: int, out: BinaryIO) -> int:
    """Write the file's bytes [start, end) to `out`, CHUNK bytes at a time; returns where it
    stopped (before `end` when the file is shorter)."""
    position = start
    while position < end:
        chunk = os.pread(fd, min(CHUNK, end - position), position)
        if not chunk:
            break
        out.write(chunk)
        position += len(chunk)
    return position


class _TextOut:
    """A binary face for a text-only stdout (one replaced by a caller without a buffer)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def _binary_stdout() -> BinaryIO:
    sys.stdout.flush()  # what was written as text goes first
    buffer = getattr(sys.stdout, "buffer", None)
    return buffer if buffer is not None else _TextOut(sys.stdout)  # type: ignore[return-value]


def _open_log(path: str) -> int | None:
    """A read descriptor of a log (None when it is not there); refuses what is not a regular file
    (a FIFO would block the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OrchestraError(f"log {path} is not a regular file")
    return fd


class _Reader:
    """Where a reader of one log is: its offset, and the log's cut bytes it has accounted for."""

    def __init__(self, path: str, tail: int | None, out: BinaryIO) -> None:
        self.path, self.tail, self.out = path, tail, out
        self.note = logcap.note_path(Path(path))
        self.position: int | None = None
        self.cut = 0

    def first(self, fd: int, end: int) -> None:
        """Start at the first data (past a punched hole), or at the last `tail` lines; say that the
        log was cut when the output starts at its first byte."""
        self.cut, cap = logcap.read_note(self.note)
        head = logcap.data_start(fd)
        self.position = head if self.tail is None else tail_start(fd, self.tail, head, end)
        if self.cut and self.position == head and head < end:
            self.out.write(cut_notice(self.cut, cap))

    def after_cut(self, fd: int) -> None:
        """The scheduler cut the log while it was followed: move to where the same bytes are now."""
        cut = logcap.cut_so_far(self.note)
        if cut <= self.cut or self.position is None:
            return
        head = logcap.data_start(fd)
        if head >= cut:  # a hole was punched: offsets are unchanged
            new = max(self.position, head)
            lost = new - self.position
        else:  # the head was collapsed: everything moved back
            new = self.position - (cut - self.cut)
            lost = max(0, -new)
            new = max(0, new)
        if lost:
            self.out.write(f"[orchestra: {lost} bytes of this log were cut before they were shown]\n".encode())
        self.position, self.cut = new, cut

    def read(self) -> bool:
        """Copy what is new; False when the log is not there."""
        fd = _open_log(self.path)
        if fd is None:
            return False
        try:
            end = os.fstat(fd).st_size
            if self.position is None:
                self.first(fd, end)
            else:
                self.after_cut(fd)
            assert self.position is not None
            self.position = copy_range(fd, self.position, end, self.out)
            self.out.flush()
        finally:
            os.close(fd)
        return True


def stream_log(ctx: Context, job_id: int, number: int | None = None, follow: bool = False,
               tail: int | None = None) -> None:
    """Copy the log to stdout in CHUNK-sized pieces (never the whole file in memory), after a line
    saying how much of its start was cut to keep it under its cap (orchestra.logcap), if any.

    `tail`: only the last `tail` lines. `follow`: keep going until the job is no longer live (and
    wait for a job that has not started yet)."""
    if tail is not None and tail < 0:
        raise OrchestraError("--tail must be 0 or more")
    log, status, number = _attempt(ctx, job_id, number, wait=follow)
    if log is None:
        raise OrchestraError(f"attempt {number} of job {job_id} has no log")
    reader = _Reader(log, tail, _binary_stdout())
    hint = "" if follow else "; try --follow"
    while True:
        if not reader.read() and not follow:
            raise OrchestraError(f"log {log} of job {job_id} is not there (yet){hint}")
        if not follow:
            return
        with ctx.transaction() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id)) or ""
        if status not in LIVE_JOB and status != JobStatus.QUEUED:
            follow = False  # one last read picks up the tail
        else:
            time.sleep(0.5)
