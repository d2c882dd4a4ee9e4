"""An attempt's log never grows past its cap: the scheduler cuts it from the start, in place.

A job appends to its log (O_APPEND) for as long as it runs, so the log cannot be rewritten or
replaced: the writer would keep writing to the old inode. `enforce` removes the head of the file
itself, so the same inode keeps the newest bytes:

- `fallocate(FALLOC_FL_COLLAPSE_RANGE)` (ext4, xfs) removes the first bytes; the rest moves to
  offset 0 and an O_APPEND writer carries on at the new end.
- where that is unsupported (tmpfs, btrfs, ...), `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`
  frees the head's disk space instead; the file keeps its apparent size and starts with a hole,
  which readers skip with `lseek(SEEK_DATA)` (`data_start`).
- where neither works, nothing is cut.

How much was cut so far is recorded beside the log (`note_path`), so a reader can say so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import secrets
import stat
from pathlib import Path

from orchestra.paths import UntrustedPath, open_dir, open_in

DEFAULT_MAX_LOG_BYTES = 100 * 1024**2  # [scheduler] max_log_bytes

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)
_fallocate = None


def note_path(log: Path) -> Path:
    """Where the record of a log's cuts lives: `<log>.cut`, beside the log."""
    log = Path(log)
    return log.with_name(log.name + ".cut")


def read_note(note: Path) -> tuple[int, int | None]:
    """(bytes cut so far, the cap they were cut to) from a note; (0, None) when there is none.

    Read without following a link and at most 256 bytes: a job may have replaced it."""
    try:
        fd = os.open(note, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0, None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0, None
        fields = os.read(fd, 256).split()
    except OSError:
        return 0, None
    finally:
        os.close(fd)
    try:
        cut = max(0, int(fields[0]))
    except (IndexError, ValueError):
        return 0, None
    try:
        cap: int | None = int(fields[1]) if int(fields[1]) > 0 else None
    except (IndexError, ValueError):
        cap = None
    return cut, cap


def cut_so_far(note: Path) -> int:
    """How many bytes were cut from the start of the log so far (0 when the note is missing)."""
    return read_note(note)[0]


def data_start(fd: int) -> int:
    """The offset of the first byte of data: past a hole punched at the start (0 without one;
    the file's size when it holds no data at all)."""
    try:
        return os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at or after offset 0
            return os.fstat(fd).st_size
        return 0  # SEEK_DATA unsupported: no holes are known


def enforce(log: Path, limit: int, note: Path, *, storage: Path | None = None) -> int:
    """Keep `log` at most `limit` bytes: when it is larger, cut its start so that about
    `limit // 2` bytes of its tail remain; returns the bytes cut now (0 when nothing was cut).

    Called on every pass for each running attempt's log (and once when it ends) while the job may
    still append to it. Under the limit it costs one lstat. In place, on the same inode: collapse
    the head (ext4, xfs: the file shrinks, an O_APPEND writer continues at the new end), else punch
    a hole over it (tmpfs, btrfs: the disk space is freed, the apparent size stays; such a log stays
    over `limit` by apparent size, so each pass also opens it and asks for its first data). When
    the filesystem supports neither, NOTHING is cut and 0 is returned. Cuts are whole filesystem
    blocks, so slightly more than `limit // 2` may remain. A writer that does not use O_APPEND
    would write past the new end after a collapse (leaving a hole); jobs' logs are opened O_APPEND.

    The total cut so far and `limit` are recorded in `note` (see `note_path`; written atomically:
    a new file renamed over it). No link is followed: a log or note that is a symbolic link, not
    a regular file, or hard-linked elsewhere is refused (UntrustedPath); so is a parent directory
    that is a link, or with `storage`, any directory between the storage and the log. A missing
    log is not an error (0). `limit <= 0` means no cap.
    """
    if limit <= 0:
        return 0
    try:
        info = os.lstat(log)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedPath(f"{log} is not a regular file; refusing to cut it")
    if info.st_size <= limit:
        return 0
    log = Path(log)
    folder = _open_parent(log, storage)
    try:
        try:
            fd = open_in(folder, log.name, os.O_WRONLY, shown=log)  # no link, one hard link, a regular file
        except FileNotFoundError:
            return 0
        try:
            cut = _cut(fd, limit)
        finally:
            os.close(fd)
    finally:
        os.close(folder)
    if cut:
        _write_note(Path(note), cut_so_far(Path(note)) + cut, limit, storage)
    return cut


def _cut(fd: int, limit: int) -> int:
    info = os.fstat(fd)
    size = info.st_size
    head = data_start(fd)  # > 0 after an earlier punch: those bytes are counted already
    if size - head <= limit:
        return 0
    unit = math.lcm(max(info.st_blksize, 1), max(os.fstatvfs(fd).f_frsize, 1))
    end = (size - max(limit // 2, 1)) // unit * unit
    if end <= head:
        return 0
    if _try_fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, end):
        return end - head
    if _try_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, end):
        return end - head
    return 0


def _try_fallocate(fd: int, mode: int, length: int) -> bool:
    """fallocate(fd, mode, 0, length); False when the filesystem does not support it."""
    global _fallocate
    if _fallocate is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
        if function is None:
            return False
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        function.restype = ctypes.c_int
        _fallocate = function
    if _fallocate(fd, mode, 0, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))


def _open_parent(path: Path, storage: Path | None) -> int:
    if storage is not None:
        return open_dir(path.parent, storage)
    try:
        return os.open(path.parent, _DIR)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UntrustedPath(f"{path.parent} is a symbolic link or not a directory; refusing it") from None
        raise


def _write_note(note: Path, total: int, limit: int, storage: Path | None) -> None:
    """`note` := "<total> <limit>\\n", atomically: a new file (O_EXCL, so never through a link)
    renamed over it (which replaces a link, never follows it)."""
    folder = _open_parent(note, storage)
    temporary = f".{note.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=folder)
        try:
            os.write(fd, f"{total} {limit}\n".encode())
        finally:
            os.close(fd)
        os.rename(temporary, note.name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=folder)
        except OSError:
            pass
        raise
    finally:
        os.close(folder)
