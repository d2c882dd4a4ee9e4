"""`maestro job logs`: any size of log in constant memory, `--tail N`, `--follow`, and the note
that a log was cut to keep it under its cap (orchestra.logcap), on both databases."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from orchestra import logcap
from orchestra.db.engine import make_engine
from orchestra.db.models import Attempt, Job, Task
from orchestra.scheduler.expand import expand_task
from orchestra.services import jobs
from orchestra.services.context import Context
from tests.helpers import Cli

MAESTRO = [sys.executable, "-c", "from orchestra.cli.maestro import main; main()"]
GiB = 1 << 30


@pytest.fixture
def job_ids(cli: Cli, storage: Path, env: dict[str, str]) -> list[int]:
    """Three queued jobs of alice's task user.alice.logs (expanded, never run)."""
    (storage / "cfg").mkdir()
    for i in range(3):
        (storage / "cfg" / f"c{i}").write_text("x")
    (storage / "data").write_text("d")
    cli.ok(f"orchestra_registry -d user.alice.cfg -p {storage / 'cfg'} --cluster LPS")
    cli.ok(f"orchestra_registry -d user.alice.data -p {storage / 'data'} --cluster LPS")
    cli.ok("maestro task create -c user.alice.cfg -d user.alice.data -t user.alice.logs --containerImage img "
           "--exec 'run %DATA %IN %OUT' --bypass")
    ctx = Context.from_env()
    with ctx.transaction() as session:
        expand_task(session, session.scalar(select(Task.id)))
        ids = list(session.scalars(select(Job.id).order_by(Job.index)))
    ctx.engine.dispose()
    return ids


def attach(env: dict[str, str], job_id: int, log: Path, status: str = "succeeded", number: int = 1) -> None:
    """Record attempt `number` of a job with its log at `log`, as the scheduler would."""
    engine = make_engine(env["ORCHESTRA_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(attempts=number, status=status))
        conn.execute(Attempt.__table__.insert().values(
            job_id=job_id, number=number, backend_name=f"test-{job_id}-{number}", cluster="LPS",
            status="running" if status == "running" else status, log_path=str(log), created_at=time.time()))
    engine.dispose()


def set_status(env: dict[str, str], job_id: int, status: str) -> None:
    engine = make_engine(env["ORCHESTRA_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(status=status))
    engine.dispose()


def log_file(storage: Path, name: str = "a1") -> Path:
    folder = storage / "alice" / "user.alice.logs" / ".attempts" / name
    folder.mkdir(parents=True)
    return folder / "log"


# ru_maxrss of a child starts at its parent's RSS when it forks (Linux keeps the high-water mark
# across exec): forked from pytest, `maestro` would report pytest's size. So a bare interpreter
# forks it, waits for it and reports the child's own peak on its last stderr line.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nmaxrss_kib {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(env: dict[str, str], *args: str) -> tuple[int, bytes, bytes, int, float]:
    """`maestro job logs ARGS` in a fresh process that spawns nothing: (bytes printed, their first
    and last 64 KiB, its own peak RSS in KiB, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *MAESTRO[1:], "job", "logs", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
    assert proc.stdout is not None and proc.stderr is not None
    total, head, tail = 0, b"", b""
    with proc.stdout, proc.stderr:
        while chunk := proc.stdout.read1(1 << 20):
            total += len(chunk)
            if len(head) < 1 << 16:
                head += chunk[: (1 << 16) - len(head)]
            tail = (tail + chunk)[-(1 << 16):]
        err = proc.stderr.read().decode()
    seconds = time.monotonic() - started
    assert proc.wait() == 0, err
    return total, head, tail, int(err.split()[-1]), seconds


LAST = b"".join(b"last line %d\n" % i for i in range(5))


def test_a_1_gib_log_is_streamed_in_constant_memory(job_ids: list[int], storage: Path, env: dict[str, str]) -> None:
    log = log_file(storage)
    with open(log, "wb") as handle:  # sparse: fast to make, but every byte is read (data at 0)
        handle.write(b"first line\n")
        handle.truncate(GiB)
        handle.seek(GiB)
        handle.write(LAST)
    attach(env, job_ids[0], log)
    total, head, tail, rss_kib, seconds = run_measured(env, str(job_ids[0]))
    print(f"1 GiB log: peak RSS {rss_kib / 1024:.1f} MiB, {seconds:.2f} s")
    assert total == GiB + len(LAST)
    assert head.startswith(b"first line\n\0\0") and tail.endswith(LAST)
    assert rss_kib < 100 * 1024
    # --tail reads backwards from the end: the last 3 lines exactly, just as small.
    total, _, tail, rss_kib, seconds = run_measured(env, str(job_ids[0]), "--tail", "3")
    print(f"--tail 3 of the 1 GiB log: peak RSS {rss_kib / 1024:.1f} MiB, {seconds:.2f} s")
    assert tail == b"last line 2\nlast line 3\nlast line 4\n" and rss_kib < 100 * 1024
    # `maestro job logs JOB | head -1`: the reader leaves early; no traceback, no error.
    proc = subprocess.Popen([*MAESTRO, "job", "logs", str(job_ids[0])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env})
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        assert proc.stdout.read(11) == b"first line\n"
        proc.stdout.close()
        assert proc.wait(60) == 0 and proc.stderr.read() == b""


def test_tail_lines(cli: Cli, job_ids: list[int], storage: Path, env: dict[str, str]) -> None:
    log = log_file(storage)
    log.write_bytes(b"one\ntwo\n\nfour\nfive\n")
    attach(env, job_ids[0], log)
    job = job_ids[0]
    assert cli.ok(f"maestro job logs {job} --tail 3").out == "\nfour\nfive\n"
    assert cli.ok(f"maestro job logs {job} -n 1").out == "five\n"
    assert cli.ok(f"maestro job logs {job} --tail 0").out == ""
    assert cli.ok(f"maestro job logs {job} --tail 99").out == "one\ntwo\n\nfour\nfive\n"
    assert cli.ok(f"maestro job logs {job}").out == "one\ntwo\n\nfour\nfive\n"
    assert cli(f"maestro job logs {job} --tail -1").code != 0
    log.write_bytes(b"one\ntwo\nno newline at the end")
    assert cli.ok(f"maestro job logs {job} --tail 2").out == "two\nno newline at the end"


def test_tail_start_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines longer than a chunk, and line breaks on chunk edges."""
    monkeypatch.setattr(jobs, "CHUNK", 7)
    path = tmp_path / "log"
    lines = [b"x" * n + b"\n" for n in (0, 3, 6, 7, 15, 1, 0, 20)]
    data = b"".join(lines)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for n in range(len(lines) + 2):
            start = jobs.tail_start(fd, n)
            assert data[start:] == b"".join(lines[max(0, len(lines) - n):] if n else []), n
        assert jobs.tail_start(fd, 2, start=len(data) - 5) == len(data) - 5  # never before `start`
    finally:
        os.close(fd)


def test_a_cut_log_says_so_first(cli: Cli, job_ids: list[int], storage: Path, env: dict[str, str]) -> None:
    log = log_file(storage)
    data = b"".join(b"line %07d of the log\n" % i for i in range(150000))  # 3.6 MB
    log.write_bytes(data)
    cap = 1 << 20
    cut = logcap.enforce(log, cap, logcap.note_path(log))
    assert cut > 0
    attach(env, job_ids[0], log)
    out = cli.ok(f"maestro job logs {job_ids[0]}").out.encode()
    note = (f"[orchestra: the first {cut} bytes ({cut / 2**20:.1f} MiB) of this log were cut to keep it under "
            f"its cap of 1 MiB]\n").encode()
    assert out == note + data[cut:]
    last_two = b"".join(data.splitlines(True)[-2:])
    assert cli.ok(f"maestro job logs {job_ids[0]} --tail 2").out.encode() == last_two  # no note: not the start
    logcap.note_path(log).write_text(f"{cut}\n")  # a note without the cap: the cap is left out
    assert cli.ok(f"maestro job logs {job_ids[0]}").out.startswith(
        f"[orchestra: the first {cut} bytes ({cut / 2**20:.1f} MiB) of this log were cut]\n")


def test_a_leading_hole_is_skipped(cli: Cli, job_ids: list[int], storage: Path, env: dict[str, str]) -> None:
    """A head punched out (tmpfs, btrfs) reads as a hole: skipped, not printed as NUL bytes."""
    log = log_file(storage)
    with open(log, "wb") as handle:
        handle.truncate(64 << 20)
        handle.seek(64 << 20)
        handle.write(LAST)
    attach(env, job_ids[0], log)
    assert cli.ok(f"maestro job logs {job_ids[0]}").out.encode() == LAST


class Follower:
    """`maestro job logs ARGS` in a subprocess, its output collected by a thread."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([*MAESTRO, "job", "logs", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, **env})
        self.out = b""
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            self.out += chunk

    def wait_for(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            assert self.proc.poll() is None or text in self.out, (self.out[-500:], self.stderr())
            assert time.monotonic() < deadline, f"{text!r} never came: {self.out[-500:]!r}"
            time.sleep(0.05)

    def stderr(self) -> bytes:
        return self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else b""

    def finish(self, timeout: float = 20) -> bytes:
        try:
            assert self.proc.wait(timeout) == 0, self.stderr()
            self.thread.join(timeout)
            return self.out
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def follow(env: dict[str, str]) -> Iterator[Callable[..., Follower]]:
    """Starts `maestro job logs ARGS` followers; none outlives the test."""
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        started.append(Follower(env, *args))
        return started[-1]

    yield start
    for follower in started:
        follower.close()


def test_follow_from_the_tail_through_a_cut(follow: Callable[..., Follower], job_ids: list[int], storage: Path,
                                            env: dict[str, str]) -> None:
    """--follow --tail 2 starts at the last 2 lines, streams what is appended, and stays on the
    same bytes when the scheduler cuts the log meanwhile; it ends when the job does."""
    log = log_file(storage)
    early = b"".join(b"early %06d\n" % i for i in range(50000))
    log.write_bytes(early)
    attach(env, job_ids[0], log, status="running")
    follower = follow(str(job_ids[0]), "--follow", "--tail", "2")
    follower.wait_for(b"early 049999\n")
    writer = os.open(log, os.O_WRONLY | os.O_APPEND)
    later = b"".join(b"later %06d\n" % i for i in range(50000))
    os.write(writer, later)
    follower.wait_for(b"later 049999\n")
    assert logcap.enforce(log, 256 << 10, logcap.note_path(log)) > 0  # collapse (ext4) or punch
    last = b"".join(b"last %06d\n" % i for i in range(1000))
    os.write(writer, last)
    os.close(writer)
    follower.wait_for(b"last 000999\n")
    set_status(env, job_ids[0], "succeeded")
    assert follower.finish() == early[-26:] + later + last


def test_follow_waits_for_a_queued_job(follow: Callable[..., Follower], job_ids: list[int], storage: Path,
                                       env: dict[str, str]) -> None:
    follower = follow(str(job_ids[1]), "--follow")
    time.sleep(1.5)
    assert follower.proc.poll() is None  # waiting, not refused
    log = log_file(storage, "b1")
    log.write_bytes(b"it ran\n")
    attach(env, job_ids[1], log)
    assert follower.finish() == b"it ran\n"


def test_refusals(cli: Cli, job_ids: list[int], storage: Path, env: dict[str, str]) -> None:
    result = cli(f"maestro job logs {job_ids[2]}")
    assert result.code == 1 and "has not started yet (queued)" in result.err
    attach(env, job_ids[2], storage / "nowhere" / "log")
    result = cli(f"maestro job logs {job_ids[2]}")
    assert result.code == 1 and "is not there (yet); try --follow" in result.err
    assert "has no attempt 5" in cli(f"maestro job logs {job_ids[2]} --attempt 5").err


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_a_follower_stays_on_its_bytes_through_cuts(where: str, tmp_path: Path) -> None:
    """The reader behind --follow, through a collapse (ext4 here) and a punched hole (tmpfs): it
    goes on where it was, and says how much it missed when a cut overtook it."""
    if where == "shm":
        if not os.access("/dev/shm", os.W_OK):
            pytest.skip("no writable /dev/shm here")
        folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="joblogs-"))
    else:
        folder = tmp_path
    try:
        log = folder / "log"
        note = logcap.note_path(log)
        writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        out = io.BytesIO()
        reader = jobs._Reader(str(log), None, out)
        stream = b"".join(b"%07d\n" % i for i in range(400000))  # 3.2 MB
        os.write(writer, stream[:1 << 20])
        assert reader.read() and out.getvalue() == stream[:1 << 20]
        os.write(writer, stream[1 << 20:2 << 20])
        assert logcap.enforce(log, 512 << 10, note) > 0  # cuts bytes the reader has seen, and some it has not
        os.write(writer, stream[2 << 20:])
        assert reader.read()
        cut = logcap.cut_so_far(note)
        missed = max(0, cut - (1 << 20))
        notice = b"[orchestra: %d bytes of this log were cut before they were shown]\n" % missed if missed else b""
        assert out.getvalue() == stream[:1 << 20] + notice + stream[max(cut, 1 << 20):]
        os.close(writer)
    finally:
        if where == "shm":
            shutil.rmtree(folder)
