"""orchestra.logcap: a log over its cap is cut from its start, in place, while its job appends."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra import logcap
from orchestra.paths import UntrustedPath

SHM = Path("/dev/shm")


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding `path` (from /proc/self/mountinfo)."""
    path = Path(os.path.realpath(path))
    best, kind = "", "unknown"
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, right = line.split(" - ", 1)
            mount = left.split()[4].replace("\\040", " ")
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) >= len(best):
                best, kind = mount, right.split()[0]
    return kind


def supports(directory: Path, mode: int) -> bool:
    """Whether fallocate(mode) works on a file in `directory` (a probe on a throwaway file)."""
    with tempfile.NamedTemporaryFile(dir=directory) as probe:
        probe.write(b"x" * (1 << 20))
        probe.flush()
        return logcap._try_fallocate(probe.fileno(), mode, 1 << 16)


COLLAPSE = logcap.FALLOC_FL_COLLAPSE_RANGE
PUNCH = logcap.FALLOC_FL_PUNCH_HOLE | logcap.FALLOC_FL_KEEP_SIZE


def visible(log: Path) -> bytes:
    """What a reader sees: the file past a hole punched at its start."""
    fd = os.open(log, os.O_RDONLY)
    try:
        start = logcap.data_start(fd)
        return os.pread(fd, os.fstat(fd).st_size - start, start)
    finally:
        os.close(fd)


@pytest.fixture(params=["tmp", "shm"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """The pytest tmp dir (ext4 here: COLLAPSE_RANGE), and tmpfs /dev/shm (PUNCH_HOLE only)."""
    if request.param == "tmp":
        yield tmp_path
        return
    if not SHM.is_dir() or not os.access(SHM, os.W_OK):
        pytest.skip("/dev/shm is not a writable directory here")
    with tempfile.TemporaryDirectory(dir=SHM, prefix="logcap-") as path:
        if not supports(Path(path), COLLAPSE) and not supports(Path(path), PUNCH):
            pytest.skip(f"/dev/shm ({fs_type(SHM)}) supports neither COLLAPSE_RANGE nor PUNCH_HOLE")
        yield Path(path)


def test_filesystems_here() -> None:
    """Which filesystems the tests run on, so a skipped COLLAPSE test is visible, not silent."""
    tmp = Path(tempfile.gettempdir())
    print(f"{tmp}: {fs_type(tmp)}; /dev/shm: {fs_type(SHM)}")
    assert fs_type(tmp) != "unknown"


def test_under_the_limit_nothing_happens(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"a line\n" * 100)
    note = logcap.note_path(log)
    assert logcap.enforce(log, 700, note) == 0
    assert log.read_bytes() == b"a line\n" * 100 and not note.exists()
    assert logcap.cut_so_far(note) == 0
    assert logcap.enforce(tmp_path / "missing", 10, note) == 0  # not written yet: not an error
    assert logcap.enforce(log, 0, note) == 0 and logcap.enforce(log, -1, note) == 0  # no cap


def test_over_the_limit_keeps_the_tail_byte_exact(folder: Path) -> None:
    log = folder / "log"
    data = os.urandom(3 << 20)
    log.write_bytes(data)
    note = logcap.note_path(log)
    limit = 1 << 20
    cut = logcap.enforce(log, limit, note)
    assert cut > 0 and logcap.cut_so_far(note) == cut
    assert logcap.read_note(note) == (cut, limit)
    assert visible(log) == data[cut:]
    assert limit // 2 <= len(data) - cut <= limit  # about half the cap remains, whole blocks cut
    assert os.stat(log).st_blocks * 512 <= limit + (64 << 10)  # the disk space is freed
    assert logcap.enforce(log, limit, note) == 0  # under the cap now (also after a punch)
    assert sorted(p.name for p in folder.iterdir()) == ["log", "log.cut"]  # no temporary left


def test_collapse_range_where_supported(tmp_path: Path) -> None:
    """ext4 and xfs collapse the head: the file itself shrinks (no hole left)."""
    kind = fs_type(tmp_path)
    if not supports(tmp_path, COLLAPSE):
        pytest.skip(f"{tmp_path} is on {kind}, which does not support FALLOC_FL_COLLAPSE_RANGE")
    log = tmp_path / "log"
    data = os.urandom(2 << 20)
    log.write_bytes(data)
    cut = logcap.enforce(log, 1 << 20, logcap.note_path(log))
    assert os.stat(log).st_size == len(data) - cut and log.read_bytes() == data[cut:]


def test_punch_hole_on_tmpfs() -> None:
    """tmpfs has no COLLAPSE_RANGE: the head becomes a hole; the apparent size stays."""
    if fs_type(SHM) != "tmpfs" or not os.access(SHM, os.W_OK):
        pytest.skip(f"/dev/shm is {fs_type(SHM)}, not a writable tmpfs")
    with tempfile.TemporaryDirectory(dir=SHM) as path:
        if supports(Path(path), COLLAPSE):
            pytest.skip("this tmpfs supports COLLAPSE_RANGE: no fallback to test")
        if not supports(Path(path), PUNCH):
            pytest.skip("this tmpfs supports neither COLLAPSE_RANGE nor PUNCH_HOLE")
        log = Path(path) / "log"
        data = os.urandom(2 << 20)
        log.write_bytes(data)
        note = logcap.note_path(log)
        cut = logcap.enforce(log, 1 << 20, note)
        assert cut > 0 and os.stat(log).st_size == len(data)
        fd = os.open(log, os.O_RDONLY)
        assert logcap.data_start(fd) == cut
        os.close(fd)
        assert visible(log) == data[cut:]
        with open(log, "ab") as handle:  # more, and cut again: counted once, from the hole's end
            handle.write(data)
        again = logcap.enforce(log, 1 << 20, note)
        assert again > 0 and logcap.cut_so_far(note) == cut + again
        assert visible(log) == (data + data)[cut + again:]


def test_neither_supported_cuts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logcap, "_try_fallocate", lambda fd, mode, length: False)
    log = tmp_path / "log"
    log.write_bytes(b"x" * 10000)
    note = logcap.note_path(log)
    assert logcap.enforce(log, 1000, note) == 0
    assert log.read_bytes() == b"x" * 10000 and not note.exists()


def test_an_appending_writer_keeps_writing_after_cuts(folder: Path) -> None:
    """Writes (O_APPEND, as a job's stdout) and cuts interleaved: the file is always exactly the
    tail of everything written, from the note's count of cut bytes on."""
    log = folder / "log"
    note = logcap.note_path(log)
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    written = bytearray()
    limit = 256 << 10
    cuts = 0
    try:
        for i in range(400):
            line = f"line {i:06d} ".encode() + os.urandom(i * 997 % 7000) + b"\n"
            os.write(writer, line)
            written += line
            if i % 3 == 0:
                cuts += logcap.enforce(log, limit, note) > 0
                assert visible(log) == written[logcap.cut_so_far(note):]
        logcap.enforce(log, limit, note)  # once more when it ends
    finally:
        os.close(writer)
    assert cuts >= 3
    assert visible(log) == written[logcap.cut_so_far(note):]
    assert len(visible(log)) <= limit


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(int(sys.argv[2])):
    os.write(fd, b"%08d " % i + b"x" * (i % 300) + b"\\n")
"""


def expected_stream(n: int) -> bytes:
    return b"".join(b"%08d " % i + b"x" * (i % 300) + b"\n" for i in range(n))


def test_a_concurrent_writer_loses_nothing_but_the_cut(folder: Path) -> None:
    """A real process appends while the scheduler cuts: nothing is lost or doubled but the head."""
    log = folder / "log"
    note = logcap.note_path(log)
    log.touch()
    n = 60000
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(n)])
    cut = 0
    while child.poll() is None:
        cut += logcap.enforce(log, 512 << 10, note)
    cut += logcap.enforce(log, 512 << 10, note)
    assert child.returncode == 0
    assert cut > 0 and logcap.cut_so_far(note) == cut
    assert visible(log) == expected_stream(n)[cut:]


def test_links_and_special_files_are_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n" * 10000)
    note_target = tmp_path / "note-victim"
    note_target.write_text("keep\n")
    jobdir = tmp_path / "attempt"
    jobdir.mkdir()
    log = jobdir / "log"
    log.symlink_to(victim)
    with pytest.raises(UntrustedPath):
        logcap.enforce(log, 1000, logcap.note_path(log))
    log.unlink()
    os.link(victim, log)  # a hard link: cutting it would cut the victim
    with pytest.raises(UntrustedPath):
        logcap.enforce(log, 1000, logcap.note_path(log))
    log.unlink()
    os.mkfifo(log)
    with pytest.raises(UntrustedPath):
        logcap.enforce(log, 1000, logcap.note_path(log))
    log.unlink()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "log").write_bytes(b"y" * 10000)
    swapped = tmp_path / "swapped"
    swapped.symlink_to(other)  # the attempt's directory replaced by a link
    with pytest.raises(UntrustedPath):
        logcap.enforce(swapped / "log", 1000, logcap.note_path(swapped / "log"))
    assert (other / "log").read_bytes() == b"y" * 10000
    # With the storage given, a link anywhere below it is refused.
    deep = tmp_path / "storage" / "task"
    deep.mkdir(parents=True)
    (deep / "attempt").symlink_to(other)
    with pytest.raises(UntrustedPath):
        logcap.enforce(deep / "attempt" / "log", 1000, deep / "attempt" / "log.cut", storage=tmp_path / "storage")
    assert (other / "log").read_bytes() == b"y" * 10000
    # A note replaced by a link is replaced, not written through.
    log.write_bytes(b"z" * 10000)
    logcap.note_path(log).symlink_to(note_target)
    assert logcap.cut_so_far(logcap.note_path(log)) == 0  # not read through the link either
    cut = logcap.enforce(log, 1000, logcap.note_path(log))
    assert cut > 0 and not logcap.note_path(log).is_symlink()
    assert note_target.read_text() == "keep\n" and victim.read_bytes() == b"precious\n" * 10000


def test_note_parsing(tmp_path: Path) -> None:
    note = tmp_path / "log.cut"
    assert logcap.note_path(tmp_path / "log") == note
    assert logcap.read_note(note) == (0, None)
    for text, expected in [("123 456\n", (123, 456)), ("123\n", (123, None)), ("junk", (0, None)),
                           ("", (0, None)), ("-5 10", (0, 10)), ("7 0", (7, None))]:
        note.write_text(text)
        assert logcap.read_note(note) == expected, text
