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

from sqlalchemy import ColumnElement, func, select

from orchestra import logcap
from orchestra.db.job_lookup import settled, state_counts
from orchestra.db.models import SETTLED_STATES, Attempt, Job
from orchestra.services.validation import known_job_id
from orchestra.errors import NotFound, OrchestraError
from orchestra.services.context import Context
from orchestra.services.tasks import find
from orchestra.states import FINAL_JOB, LIVE_ATTEMPT, AttemptStatus, JobStatus

PENDING = (JobStatus.HELD, JobStatus.QUEUED)


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


@dataclass(frozen=True)
class JobPage:
    """The jobs a listing shows, and how many matched: a listing cut by --limit says so."""

    rows: list[JobRow]
    total: int


def job_page(ctx: Context, task_ref: str, status: str | None = None, limit: int = 200, offset: int = 0,
             *, count: bool = True) -> JobPage:
    """A task's jobs in index order with their latest attempt, at most `limit` (0: all) from the
    `offset`-th on (the dashboard's pages); `reason` is composed once (orchestra.reasons: "exit
    code 3", "timeout after 2h", ...) or None. `count` False: a caller that knows the total from
    the task's counts skips counting the rows again (`total` is then only what was read)."""
    from orchestra.reasons import ended

    if status is not None and status not in {s.value for s in JobStatus}:
        raise OrchestraError(f"--status {status!r} is unknown; use one of: {', '.join(s.value for s in JobStatus)}")
    if limit < 0:
        raise OrchestraError("--limit must be 0 (all) or more")
    with ctx.transaction() as session:
        task, _ = find(session, task_ref)
        where = [Job.task_id == task.id] + ([_in_state(status)] if status else [])
        query = (
            select(Job, Attempt.host, Attempt.log_path)
            .outerjoin(Attempt, (Attempt.job_id == Job.id) & (Attempt.number == Job.attempts))
            .where(*where)
            .order_by(Job.index)
        )
        rows = [
            JobRow(j.id, j.index, j.is_scout, j.status, j.attempts, j.exit_code,
                   ended(j.status, j.exit_code, j.reason, task.max_time) or j.reason or None, host, j.started_at,
                   j.ended_at, log)
            for j, host, log in session.execute((query.limit(limit) if limit else query).offset(offset or None))
        ]
        counted = count and limit and (len(rows) == limit or (offset and not rows))
        if not counted:
            total = offset + len(rows)
        elif status is None:
            total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        else:
            total = state_counts(session, [task.id])[task.id].get(status, 0)
        return JobPage(rows, total)


def _in_state(status: str) -> ColumnElement[bool]:
    """`jobs.status = status`, for SQLite through ix_jobs_settled when it can be (held and ended
    jobs: a range of it); the queued and live ones are read in the task's order and filtered."""
    if status in SETTLED_STATES:
        return settled(status)
    return Job.status == status


def list_jobs(ctx: Context, task_ref: str, status: str | None = None, limit: int = 200) -> list[JobRow]:
    """`job_page`'s rows."""
    return job_page(ctx, task_ref, status, limit).rows


@dataclass(frozen=True)
class _Look:
    """What a follower sees of a job at one poll: the job, and attempt `number` if it exists."""

    status: str
    attempts: int
    exit_code: int | None
    reason: str | None
    attempt: tuple[str, str | None, float | None, str | None] | None  # status, host, started_at, log_path


def _look(ctx: Context, job_id: int, number: int) -> _Look:
    with ctx.transaction() as session:
        row = session.execute(
            select(Job.status, Job.attempts, Job.exit_code, Job.reason).where(Job.id == job_id)).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist (any more); `maestro job list -t TASK` shows job ids")
        attempt = session.execute(
            select(Attempt.status, Attempt.host, Attempt.started_at, Attempt.log_path)
            .where(Attempt.job_id == job_id, Attempt.number == number)).first()
        return _Look(row[0], row[1], row[2], row[3], tuple(attempt) if attempt else None)  # type: ignore[arg-type]


def _attempt(ctx: Context, job_id: int, number: int | None, wait: bool = False) -> tuple[str | None, str, int]:
    """The log path, job status and number of an attempt (default: the latest). With `wait`, a job
    that has not started yet (held or queued) is not refused: its number is the first attempt's, 1,
    and its log None until it starts (the follower waits for it)."""
    if not known_job_id(job_id):
        raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
    with ctx.transaction() as session:
        row = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
        status, attempts = row
        wanted = number or attempts
        if wanted:
            found = session.execute(select(Attempt.log_path).where(Attempt.job_id == job_id,
                                                                   Attempt.number == wanted)).first()
            if found is None:
                raise NotFound(f"job {job_id} has no attempt {wanted}; it has {attempts}")
            return found[0], status, wanted
        if not wait or status not in PENDING:
            raise OrchestraError(f"job {job_id} has not started yet ({status}); no log so far")
        return None, status, 1


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


def _say(line: str) -> None:
    """A follower's own line (which attempt, waiting, the end): on stderr, so stdout is the log alone."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def attempt_header(job_id: int, number: int, host: str | None, started_at: float | None) -> str:
    """`==> attempt 2 of job 13 (node1, started 2026-12-01 10:00:03 +0000) <==`, like tail's file headers."""
    where = [host] if host else []
    if started_at:
        where.append("started " + time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started_at)))
    return f"==> attempt {number} of job {job_id} ({', '.join(where) or 'starting'}) <=="


def _follow(ctx: Context, job_id: int, number: int, only: bool, tail: int | None, out: BinaryIO) -> None:
    """Follow attempt `number` of a job, then (unless `only`) each later attempt in turn, waiting
    for the job while it is queued or held, until it has ended for good.

    Each poll reads the database first and the log second: once an attempt is seen ended, the
    read that follows has every byte it wrote."""
    reader: _Reader | None = None
    shown = False  # some bytes of the current attempt's log were found
    told: tuple[int, str] | None = None  # the last "waiting" line said, not repeated
    while True:
        seen = _look(ctx, job_id, number)
        if seen.attempt is None:
            if seen.status in FINAL_JOB:
                _say(f"==> job {job_id} ended ({_ending(seen)}) <==")
                return
            if told != (number, seen.status):
                _say(f"job {job_id} is {seen.status}; waiting for attempt {number} to start (Ctrl-C stops)")
                told = (number, seen.status)
            time.sleep(POLL)
            continue
        status, host, started_at, log = seen.attempt
        over = status not in LIVE_ATTEMPT or seen.attempts > number or seen.status in FINAL_JOB
        if reader is None and status == AttemptStatus.STARTING and not over:
            # Dispatched, not running yet (a pod waiting for a node): the header waits for its host.
            if told != (number, status):
                _say(f"attempt {number} of job {job_id} is starting; waiting for it to run (Ctrl-C stops)")
                told = (number, status)
            time.sleep(POLL)
            continue
        if reader is None:
            _say(attempt_header(job_id, number, host, started_at))
            reader = _Reader(log, tail, out) if log else None
            shown, tail = False, None  # --tail applies to the first attempt shown only
        if reader is not None:
            shown = reader.read() or shown
        if not over:
            time.sleep(POLL)
            continue
        if not shown:
            _say(f"(attempt {number} of job {job_id} left no log{f' at {log}' if log else ''})")
        if only or (seen.status in FINAL_JOB and seen.attempts <= number):
            if not only:
                _say(f"==> job {job_id} ended ({_ending(seen)}) <==")
            return
        number, reader = number + 1, None


def _ending(seen: _Look) -> str:
    from orchestra.reasons import ended

    why = ended(seen.status, seen.exit_code, seen.reason)
    return f"{seen.status}: {why}" if why and why != seen.status else seen.status


POLL = 0.5  # seconds between two looks of a follower at the database and the log


def stream_log(ctx: Context, job_id: int, number: int | None = None, follow: bool = False,
               tail: int | None = None) -> None:
    """Copy the log to stdout in CHUNK-sized pieces (never the whole file in memory), after a line
    saying how much of its start was cut to keep it under its cap (orchestra.logcap), if any.

    `tail`: only the last `tail` lines. `follow`: wait for a job that has not started yet (held or
    queued), follow its latest attempt and then each next one (a retry, a lost attempt run again)
    until the job has ended for good; a line on stderr names each attempt as it begins
    (`==> attempt 2 of job 13 (host, started ...) <==`), so stdout carries the log alone. With
    `number` as well, only that attempt is followed, until it ends."""
    if tail is not None and tail < 0:
        raise OrchestraError("--tail must be 0 or more")
    log, status, first = _attempt(ctx, job_id, number, wait=follow)
    if follow:
        _follow(ctx, job_id, first, number is not None, tail, _binary_stdout())
        return
    if log is None:
        raise OrchestraError(f"attempt {first} of job {job_id} has no log")
    if not _Reader(log, tail, _binary_stdout()).read():
        raise OrchestraError(f"log {log} of job {job_id} is not there (yet); try --follow")


TAIL_BYTES = 256 * 1024  # at most this much of a log's end is read for a tail, however long its lines


@dataclass(frozen=True)
class LogTail:
    """The last lines of one attempt's log (the dashboard's live tail); `attempt` None: the job
    has not started, so there is no log yet; `missing`: the attempt left no file (yet)."""

    job_id: int
    attempt: int | None
    lines: list[str]
    missing: bool = False


def log_tail(ctx: Context, job_id: int, lines: int = 200, number: int | None = None) -> LogTail:
    """The last `lines` lines of attempt `number` of a job (default: the latest), read from the
    end of the file (at most TAIL_BYTES of it): constant cost, however large the log is."""
    if lines < 0:
        raise OrchestraError("lines must be 0 or more")
    if not known_job_id(job_id):
        raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
    with ctx.transaction() as session:
        attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
        if attempts is None:
            raise NotFound(f"job {job_id} does not exist; `maestro job list -t TASK` shows job ids")
        first = number or attempts
        if not first:  # not started (held, queued, or ended before it ever ran): no log
            return LogTail(job_id, None, [])
        found = session.execute(select(Attempt.log_path).where(Attempt.job_id == job_id,
                                                               Attempt.number == first)).first()
        if found is None:
            raise NotFound(f"job {job_id} has no attempt {first}; it has {attempts}")
        log = found[0]
    fd = _open_log(log) if log else None
    if fd is None:
        return LogTail(job_id, first, [], missing=True)
    try:
        end = os.fstat(fd).st_size
        head = max(logcap.data_start(fd), end - TAIL_BYTES)
        start = tail_start(fd, lines, head, end)
        data = os.pread(fd, end - start, start) if end > start else b""
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace").splitlines()
    return LogTail(job_id, first, text[-lines:] if lines else [])
