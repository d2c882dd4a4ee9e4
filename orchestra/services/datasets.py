"""Datasets: register a file or a directory under a `user.<owner>.<name>` name, list, show, delete."""
from __future__ import annotations

import errno
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, repeat
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestra.db.bulk import bulk_insert
from orchestra.db.models import Dataset, DatasetFile, Task, User
from orchestra.errors import NotFound, OrchestraError
from orchestra.naming import check_ownership, owner_of
from orchestra.services.context import Context
from orchestra.states import ACTIVE_TASK

BATCH = 20_000  # rows per statement for Core bulk inserts (used by the benchmark's baseline)


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    owner: str
    cluster: str
    path: str
    is_dir: bool
    n_files: int
    total_size: int
    created_at: float


def list_files(root: Path) -> tuple[list[str], list[int]]:
    """Every regular file under `root`, recursively, in sorted path order (the job order): their
    paths and, in the same order, their sizes (two flat lists: a registration turns them into rows,
    a total and a UTF-8 check without building a tuple per file, issue 18).

    One stat per entry, following symbolic links, says both what it is and its size (a broken link
    is skipped, as before); a link to a directory above it (a loop) is an OSError ELOOP naming the
    link, at once, rather than after 40 levels of it."""
    top = os.stat(root)
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [(str(root), frozenset({(top.st_dev, top.st_ino)}))]
    paths: list[str] = []
    sizes: list[int] = []
    directories = 0
    while stack:
        directory, above = stack.pop()
        directories += 1
        # A name relative to its directory's descriptor: the kernel walks one component instead
        # of the whole path (a 100,000-file directory: ~10 % of the walk).
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            names = sorted(os.listdir(folder))  # with a single directory, the whole listing is now in order
            modes, found = stat_names(folder, names, directory)
        finally:
            os.close(folder)
        prefix = os.path.join(directory, "")
        if all(map(S_ISREG, modes)):  # the usual directory of files: no per-entry branch
            paths.extend([prefix + name for name in names])
            sizes.extend(found)
            continue
        for name, mode, size in zip(names, modes, found):
            if S_ISREG(mode):
                paths.append(prefix + name)
                sizes.append(size)
            elif S_ISDIR(mode):
                here = os.stat(prefix + name)
                key = (here.st_dev, here.st_ino)
                if key in above:
                    raise OSError(errno.ELOOP, "a symbolic link to a directory above it", prefix + name)
                stack.append((prefix + name, above | {key}))
    if directories > 1:  # sorted per directory; across them, by whole path (paths are unique)
        order = sorted(range(len(paths)), key=paths.__getitem__)
        paths = [paths[i] for i in order]
        sizes = [sizes[i] for i in order]
    return paths, sizes


PARALLEL_STAT_MIN = 20_000  # entries in one directory from which a second process stats half of them


def stat_names(folder: int, names: list[str], directory: str) -> tuple[list[int], list[int]]:
    """(st_mode, st_size) of each name in the directory open as `folder`, following links; mode 0
    for a broken link. An error is an OSError naming the entry's whole path.

    A stat is kernel work (~2.4 us here, issue 18: two thirds of registering a 100,000-file
    directory), and threads do not overlap it (the GIL, taken back after each call, makes two
    threads slower than one). So for a large directory a forked child stats the second half while
    this process stats the first, when this process has no other thread (a fork copies only the
    calling thread: another one's lock would stay held in the child). Anything wrong with the
    child (no fork, an error, a short answer) and this process stats that half itself, which
    raises the error with its name."""
    if len(names) < PARALLEL_STAT_MIN or not may_fork():
        return _stat_serial(folder, names, directory)
    half = len(names) // 2
    child = _stat_in_child(folder, names[half:])
    try:
        first = _stat_serial(folder, names[:half], directory)
    finally:  # also when this half raised: the child is waited for, never left a zombie
        second = child() if child is not None else None
    if second is None:
        second = _stat_serial(folder, names[half:], directory)
    return first[0] + second[0], first[1] + second[1]


def may_fork() -> bool:
    """Whether a helper child may be forked: more than one core to run on, and no other thread here."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores > 1 and threading.active_count() == 1


def _stat_serial(folder: int, names: list[str], directory: str) -> tuple[list[int], list[int]]:
    stat = os.stat
    try:
        results = [stat(name, dir_fd=folder) for name in names]
    except OSError:
        results = [_stat_one(folder, name, directory) for name in names]  # which one, and is it a broken link
    return [r.st_mode if r is not None else 0 for r in results], [r.st_size if r is not None else 0 for r in results]


def _stat_one(folder: int, name: str, directory: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder)
    except FileNotFoundError:
        try:
            if S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                return None  # a broken link: not a file, skipped
        except OSError:
            pass
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.path.join(directory, name)) from None
    except OSError as exc:  # named by its whole path, as the callers say it
        raise OSError(exc.errno, exc.strerror, os.path.join(directory, name)) from None


def _stat_in_child(folder: int, names: list[str]) -> Callable[[], tuple[list[int], list[int]] | None] | None:
    """Fork a child that stats `names` and sends their modes, then their sizes, back through a pipe; returns
    a function that waits for them (None: the child failed), or None when no child could start."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: stat, write, leave without running any of the parent's cleanup
        status = 1
        try:
            os.close(read_end)
            modes, sizes = _stat_serial(folder, names, "")
            with os.fdopen(write_end, "wb") as out:
                out.write(array("q", modes).tobytes() + array("q", sizes).tobytes())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)

    def collect() -> tuple[list[int], list[int]] | None:
        try:
            with os.fdopen(read_end, "rb") as answer:
                data = answer.read()
        finally:
            _, status = os.waitpid(pid, 0)
        if status != 0 or len(data) != 16 * len(names):
            return None
        values = array("q")
        values.frombytes(data)
        return values[: len(names)].tolist(), values[len(names) :].tolist()

    return collect


def walk_files(root: Path) -> Iterator[tuple[str, int]]:
    """`list_files` as (path, size) pairs."""
    paths, sizes = list_files(root)
    return zip(paths, sizes)


def _shown(path: Path | str) -> str:
    """A path for a one-line message: as is, or its repr() when it holds a newline, another control
    character or bytes that are not UTF-8 (then the repr of the name's bytes, as `ls -b` shows)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(text))
    return text if text.isprintable() else repr(text)


def check_utf8_names(paths: list[str]) -> None:
    """Refuse a file whose name is not valid UTF-8 (os.fsdecode keeps such bytes as lone surrogates,
    surrogateescape). The database stores text: PostgreSQL's UTF-8 cannot hold those bytes, and
    SQLite's driver refuses to encode them; job commands, logs and pod specs are text too. So the
    name is refused, in one line, before anything is written, rather than stored mangled."""
    try:
        "\0".join(paths).encode("utf-8")  # one pass; a million names cost a few milliseconds
    except UnicodeEncodeError:
        for path in paths:
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                raise OrchestraError(
                    f"file name {os.fsencode(path)!r} is not valid UTF-8, which the database cannot store; "
                    "rename it to a UTF-8 name (`mv`, or `convmv` for many) and register again"
                ) from None


def _resolve_path(ctx: Context, raw: str, cluster: str) -> Path:
    path = Path(os.path.expanduser(raw))
    path = (Path.cwd() / path) if not path.is_absolute() else path
    path = Path(os.path.normpath(path))
    if not path.exists():
        raise OrchestraError(f"path {raw!r} does not exist (resolved to {_shown(path)}); "
                             "give a file or directory that exists")
    if not os.access(path, os.R_OK):
        raise OrchestraError(f"path {_shown(path)} is not readable; fix its permissions")
    storage = ctx.settings.cluster(cluster).storage
    if ctx.settings.cluster(cluster).restrict_to_storage and not path.is_relative_to(storage):
        raise OrchestraError(
            f"path {_shown(path)} is outside cluster {cluster}'s storage {storage}; move it there so jobs can read it"
        )
    return path


def register(ctx: Context, name: str, raw_path: str, cluster: str) -> DatasetInfo:
    """Record a dataset and its files (path, size), after every check has passed."""
    owner = check_ownership(name, ctx.user, "dataset", admin=ctx.admin)
    ctx.settings.cluster(cluster)
    path = _resolve_path(ctx, raw_path, cluster)
    if path.is_dir():
        try:
            paths, sizes = list_files(path)
        except OSError as exc:
            where = exc.filename if isinstance(exc.filename, (str, bytes)) else path
            fix = "remove that link" if exc.errno == errno.ELOOP else "fix its permissions"
            raise OrchestraError(f"cannot list {_shown(os.fsdecode(where))}: {exc.strerror}; {fix}") from None
        if not paths:
            raise OrchestraError(f"directory {_shown(path)} has no files; put the files in it first, then register it")
    elif path.is_file():
        paths, sizes = [str(path)], [path.stat().st_size]
    else:
        raise OrchestraError(f"path {_shown(path)} is neither a file nor a directory")
    check_utf8_names(paths)

    now = time.time()
    with ctx.transaction() as session:
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise OrchestraError(
                f"dataset {name!r} already exists; choose another name or `maestro dataset delete -d {name}` first"
            )
        owner_id = ctx.user_id(session, owner)
        dataset = Dataset(
            name=name, owner_id=owner_id, cluster=cluster, path=str(path), is_dir=path.is_dir(),
            n_files=len(paths), total_size=sum(sizes), created_at=now,
        )
        session.add(dataset)
        try:
            session.flush()
        except IntegrityError:  # the same name, registered by another command in the meantime
            raise OrchestraError(f"dataset name {name!r} already taken (just now, by another command); "
                                 "choose another name") from None
        dataset_id = dataset.id
        bulk_insert(session, DatasetFile.__table__, ("dataset_id", "position", "path", "size"),
                    zip(repeat(dataset_id), count(), paths, sizes))  # tuples made in C, issue 18
        ctx.audit(session, "dataset register", name)
        return _info(dataset, owner)


def _info(dataset: Dataset, owner: str) -> DatasetInfo:
    return DatasetInfo(
        dataset.id, dataset.name, owner, dataset.cluster, dataset.path, dataset.is_dir,
        dataset.n_files, dataset.total_size, dataset.created_at,
    )


def get(session: Session, name: str) -> tuple[Dataset, str]:
    row = session.execute(
        select(Dataset, User.name).join(User, User.id == Dataset.owner_id).where(Dataset.name == name)
    ).first()
    if row is None:
        raise NotFound(f"dataset {name!r} does not exist; register it with orchestra_registry.py -d {name} -p PATH")
    return row[0], row[1]


def list_datasets(ctx: Context, owner: str | None = None) -> list[DatasetInfo]:
    with ctx.transaction() as session:
        query = select(Dataset, User.name).join(User, User.id == Dataset.owner_id).order_by(Dataset.id)
        if owner:
            query = query.where(User.name == owner)
        return [_info(d, o) for d, o in session.execute(query)]


def show(ctx: Context, name: str, limit: int | None = 20) -> tuple[DatasetInfo, list[tuple[str, int]]]:
    """A dataset and its first `limit` files in job order (None: all of them)."""
    with ctx.transaction() as session:
        dataset, owner = get(session, name)
        query = (
            select(DatasetFile.path, DatasetFile.size)
            .where(DatasetFile.dataset_id == dataset.id)
            .order_by(DatasetFile.position)
        )
        files = session.execute(query.limit(limit) if limit else query).all()
        return _info(dataset, owner), [(p, s) for p, s in files]


def config_paths(session: Session, dataset_id: int, limit: int | None = None) -> list[str]:
    query = select(DatasetFile.path).where(DatasetFile.dataset_id == dataset_id).order_by(DatasetFile.position)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def delete_dataset(ctx: Context, name: str) -> None:
    """Remove the record (never the files); refused while a task that is not finished uses it.

    Finished tasks keep their jobs' expanded paths, so they only lose the link (SET NULL)."""
    owner_of(name, "dataset")
    with ctx.transaction() as session:
        dataset, owner = get(session, name)
        ctx.require_owner(owner, f"dataset {name!r}")
        users = session.scalars(
            select(Task.name).where(
                (Task.config_dataset_id == dataset.id) | (Task.data_dataset_id == dataset.id),
                Task.status.in_([s.value for s in ACTIVE_TASK]),
            )
        ).all()
        if users:
            raise OrchestraError(
                f"dataset {name!r} is used by unfinished task(s) {', '.join(users)}; kill or delete them first"
            )
        session.execute(delete(DatasetFile).where(DatasetFile.dataset_id == dataset.id))
        session.execute(delete(Dataset).where(Dataset.id == dataset.id))
        ctx.audit(session, "dataset delete", name)
