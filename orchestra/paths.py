"""Paths the scheduler may touch: inside a cluster's storage, never through a symbolic link.

Users write rows (a task's `output_root`, its name, its owner's name) and jobs write files (a
job may replace its log with a link to any file); the scheduler runs with more rights than either.
So it trusts no path it reads: a task's output root is recomputed from the storage the admin
configured, the owner's name and the task's name, and must lie inside that storage; every
directory below the storage is entered with O_NOFOLLOW|O_DIRECTORY, one component at a time,
relative to its parent's descriptor, so a link swapped in at any moment is refused, not followed.
The storage directory itself is the admin's choice and may be a link.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
from pathlib import Path

from orchestra import expansion
from orchestra.errors import OrchestraError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedPath(OrchestraError):
    """A path the scheduler refuses to touch: outside its storage, or through a symbolic link."""


def _norm(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def _below(path: Path, storage: Path) -> list[str]:
    """The components of normalised `path` below normalised `storage` ([] when equal); refuses
    a path outside the storage."""
    if path != storage and not path.is_relative_to(storage):
        raise UntrustedPath(f"{path} is outside the storage {storage}")
    return list(path.relative_to(storage).parts)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_component(label: str, value: str | None) -> str:
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise UntrustedPath(f"{label} {value!r} is not a single directory name")
    return value


def trusted_output_root(storage: Path, owner: str, task_name: str) -> Path:
    """`<storage>/<owner>/<task>`, recomputed (never read from the database) and checked: both
    names are single directory names, the root lies inside the storage, and no existing
    component between the storage and the root is a symbolic link."""
    base = _norm(storage)
    root = _norm(expansion.output_root(str(base), _check_component("owner", owner),
                                       _check_component("task name", task_name)))
    if not _below(root, base):
        raise UntrustedPath(f"{root} is the storage {base} itself, not a directory inside it")
    current = base
    for part in _below(root, base):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break  # created later, by opening each component with O_NOFOLLOW
        if stat.S_ISLNK(mode):
            raise UntrustedPath(f"{current} is a symbolic link; the scheduler does not follow links below the storage")
    return root


def open_dir(path: str | os.PathLike[str], storage: Path, *, create: bool = False, mode: int = 0o755) -> int:
    """A descriptor of directory `path` (inside `storage`, or the storage itself), reached one
    component at a time without following a link; `create` makes missing directories.

    FileNotFoundError when a component is missing (and not `create`); UntrustedPath for a link,
    a non-directory, or a path outside the storage. The caller closes the descriptor.
    """
    base = _norm(storage)
    target = _norm(path)
    parts = _below(target, base)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    current = base
    try:
        for part in parts:
            current = current / part
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                child = _open_child(part, fd, current)
            except OSError as exc:
                _refuse(exc, part, fd, current)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_subdir(dir_fd: int, name: str, shown: str | os.PathLike[str], mode: int = 0o755) -> tuple[int, bool]:
    """A descriptor of directory `name` inside the directory `dir_fd` (one component, made if
    missing, never through a link), and whether this call made it: `open_dir`'s last step, for a
    caller that keeps the parent open (the local backend's state root, issue 18)."""
    _check_component("directory name", name)
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
        made = True
    except FileExistsError:
        made = False
    return _open_child(name, dir_fd, shown), made


def _open_child(part: str, fd: int, shown: str | os.PathLike[str]) -> int:
    try:
        return os.open(part, _DIR, dir_fd=fd)
    except OSError as exc:
        _refuse(exc, part, fd, shown)
        raise  # unreachable: _refuse always raises


def _refuse(exc: OSError, name: str, dir_fd: int, shown: str | os.PathLike[str]) -> None:
    """Turn the error of an O_NOFOLLOW open into a refusal that says why."""
    if _is_link(name, dir_fd):
        raise UntrustedPath(f"{shown} is a symbolic link; refusing to follow it") from None
    if exc.errno == errno.ENOTDIR:
        raise UntrustedPath(f"{shown} is not a directory") from None
    raise exc


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o644, *, storage: Path | None = None,
                  makedirs: bool = False) -> int:
    """Open a file to write without following a link: the file itself (O_NOFOLLOW), its parent
    directory (refused when it is a link) and, given `storage`, every directory between the
    storage and it. Only a regular file with a single link is accepted: a FIFO would block the
    scheduler, a hard link would let a job aim the write at another file. O_TRUNC is applied
    after those checks. Returns a descriptor (the caller closes it)."""
    target = Path(path)
    if storage is not None:
        parent = open_dir(target.parent, storage, create=makedirs)
    else:
        if makedirs:
            os.makedirs(target.parent, exist_ok=True)
        parent_path = _norm(target.parent)
        if parent_path.is_symlink():
            raise UntrustedPath(f"{parent_path} is a symbolic link; refusing to follow it")
        parent = os.open(parent_path, _DIR)
    try:
        return open_in(parent, target.name, flags, mode, shown=target)
    finally:
        os.close(parent)


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o644, *, shown: str | os.PathLike[str] | None = None) -> int:
    """`open_nofollow` of `name` in the directory `dir_fd` (see there)."""
    shown = shown if shown is not None else name
    truncate = bool(flags & os.O_TRUNC)
    try:
        fd = os.open(name, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or _is_link(name, dir_fd):
            raise UntrustedPath(f"{shown} is a symbolic link; refusing to write through it") from None
        if exc.errno == errno.ENXIO:
            raise UntrustedPath(f"{shown} is not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedPath(f"{shown} is not a regular file")
        if info.st_nlink > 1:
            raise UntrustedPath(f"{shown} has {info.st_nlink} hard links; refusing to write to it")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_nofollow(path: str | os.PathLike[str], limit: int = 1 << 16) -> bytes:
    """The first `limit` bytes of a regular file, refusing a link (OSError) or anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.read(fd, limit)
    finally:
        os.close(fd)


def safe_rmtree(path: Path, storage: Path) -> None:
    """Remove `path` (strictly inside `storage`) and everything under it, never following a link.

    Refused (UntrustedPath, with the reason): a path outside the storage or equal to it, and a
    path that goes through a symbolic link, including `path` itself. Links found inside the tree
    are removed as links; what they point to is left alone. A missing path is nothing to do.
    Whatever could not be removed is reported at the end as the first OSError met.
    """
    base = _norm(storage)
    target = _norm(path)
    if not _below(target, base):
        raise UntrustedPath(f"refusing to remove the storage {base} itself")
    try:
        parent = open_dir(target.parent, base)
    except FileNotFoundError:
        return
    errors: list[OSError] = []
    try:
        try:
            info = os.stat(target.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise UntrustedPath(f"{target} is a symbolic link; refusing to remove through it")
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(target.name, dir_fd=parent)
            return
        try:
            top = os.open(target.name, _DIR, dir_fd=parent)
        except OSError as exc:
            _refuse(exc, target.name, parent, target)
        _remove_tree(top, parent, target.name, errors)
    finally:
        os.close(parent)
    if errors:
        raise errors[0]


def _remove_tree(top: int, parent: int, name: str, errors: list[OSError]) -> None:
    """Remove the directory open as `top` (entry `name` of `parent`), depth first, without
    recursion (no depth limit) and without following links: every directory is entered by
    descriptor with O_NOFOLLOW, every entry removed relative to its directory's descriptor."""
    try:
        listing = os.listdir(top)
    except OSError as exc:
        os.close(top)
        errors.append(exc)
        return
    stack: list[tuple[int, list[str], int, str]] = [(top, listing, parent, name)]
    while stack:
        fd, names, up, own = stack[-1]
        if not names:
            stack.pop()
            os.close(fd)
            try:
                os.rmdir(own, dir_fd=up)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(exc)
            continue
        entry = names.pop()
        try:
            mode = os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                child = os.open(entry, _DIR, dir_fd=fd)  # a link swapped in meanwhile: ELOOP, not followed
                try:
                    inner = os.listdir(child)
                except OSError:
                    os.close(child)
                    raise
                stack.append((child, inner, fd, entry))
            else:
                os.unlink(entry, dir_fd=fd)  # a link is removed, never its target
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(exc)


STATE_DIR = ".orchestra"  # under a cluster's storage; no user name can start with a dot


def state_root(storage: Path, installation: str) -> Path:
    """Where this installation's attempt state (locks, exit status, logs) lives on a cluster's
    storage: written only by the scheduler's account, out of the jobs' reach."""
    return Path(storage) / STATE_DIR / installation


@functools.lru_cache(maxsize=64)
def state_root_text(storage: Path, installation: str) -> str:
    """`state_root` as text, made once per storage and installation: a launch and its dispatch
    name each attempt's files under it, and Path arithmetic per job cost ~18 µs a job (issue 18)."""
    return str(state_root(storage, installation))
