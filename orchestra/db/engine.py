"""Engines for SQLite (embedded default) and PostgreSQL, and keeping the schema current.

SQLite gets WAL (readers never block the scheduler's writer), foreign keys and a busy timeout.
The CLIs bring the default SQLite database up to date by themselves; a PostgreSQL database is
upgraded by the admin (`orchestra db upgrade`), since many clients share it.
"""
from __future__ import annotations

import errno
import os
import pwd
import re
import stat
import time
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, OperationalError, ProgrammingError

from orchestra.errors import OrchestraError
from orchestra.secrets import mask_url

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = "0012"  # the newest migration; a test checks it matches the scripts


def busy_seconds() -> float:
    """How long SQLite waits for another process's write lock before the one-line "database is
    locked" fault: 30 s, or ORCHESTRA_SQLITE_BUSY_SECONDS (tests of that fault shorten it)."""
    try:
        return max(0.1, float(os.environ.get("ORCHESTRA_SQLITE_BUSY_SECONDS", "30")))
    except ValueError:
        return 30.0


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds() * 1000)}")
    # Checkpoint the WAL into the database every ~40 MB instead of every ~4 MB: a cycle rewrites
    # rows on ~1,000 scattered pages per transaction, and a later checkpoint writes each page once
    # however often it changed in between (mean cycle at 1M queued jobs: 0.28 -> 0.21 s).
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()


def _begin_immediate(engine: Engine) -> None:
    """SQLite: take the write lock when a transaction begins, not at its first write.

    A deferred transaction that reads, then writes, fails if another writer committed in between;
    IMMEDIATE makes every transaction see a stable database and serialises writers cleanly.
    """

    @event.listens_for(engine, "connect")
    def _no_pysqlite_begin(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _immediate(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")


PING_AFTER_IDLE = 1.0  # seconds a pooled PostgreSQL connection may rest before it is pinged at checkout


def _ping_when_rested(engine: Engine) -> None:
    """Ping a pooled connection at checkout only if it rested PING_AFTER_IDLE seconds or more.

    SQLAlchemy's `pool_pre_ping` pings at every checkout: a round trip (~0.2 ms here) that the
    scheduler paid twice per short pass, hundreds of passes a second at turnover (issue 18),
    for connections it had used milliseconds before. A connection that rested (an idle
    scheduler, the web server between requests) is still pinged, and one the server dropped is
    replaced by the pool (DisconnectionError: it tries a new connection). A connection dropped
    within the second after its last use fails its first statement instead: the scheduler's
    passes begin with a read that then retries once on a new pool (`DriverRead.read`), and any
    other fault is an outage the service loop retries after a backoff."""

    @event.listens_for(engine, "checkin")
    def _rested_since(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["rested_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.get("rested_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # new, or used a moment ago
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()  # handed out outside a transaction, as an unpinged one
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"a pooled connection is gone: {exc}") from exc


def make_engine(url: str) -> Engine:
    """An engine for the URL, or a one-line error when the URL is malformed."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise OrchestraError(
            f"database URL {mask_url(url)!r} is malformed; use sqlite:////path/orchestra.db or postgresql://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            secure_sqlite_file(Path(parsed.database))
        engine = create_engine(parsed, connect_args={"timeout": busy_seconds()})
        event.listen(engine, "connect", _sqlite_pragmas)
        _begin_immediate(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy 2.1 would pick psycopg 3; we ship psycopg2
            parsed = parsed.set(drivername="postgresql+psycopg2")
        # psycopg2's executemany is one server round trip per row; the scheduler updates hundreds of
        # rows per statement (attempts acknowledged, jobs ended, users charged): batch them instead.
        engine = create_engine(parsed, connect_args={"connect_timeout": 10},
                               executemany_mode="values_plus_batch", executemany_batch_page_size=1000)
        _ping_when_rested(engine)
        return engine
    raise OrchestraError(f"database URL {mask_url(url)!r}: only sqlite:// and postgresql:// are supported")


SINGLE_USER = (
    "SQLite mode is single-user; to share Orchestra between OS users, set database_url in the config file "
    "(or ORCHESTRA_DATABASE_URL) to a postgresql:// URL (see README, \"Security model\")"
)


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


# Kernel and device pseudo-filesystems: SQLite cannot keep a database (or its -wal, -shm) there.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "efivarfs", "fusectl", "binfmt_misc", "mqueue", "hugetlbfs", "autofs",
    "nsfs", "selinuxfs", "rpc_pipefs",
})
KERNEL_TREES = ("/proc", "/sys")
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _shown(path: Path | str) -> str:
    """A path for a one-line message: as is, or repr() when it holds a newline or another control."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _unusable(path: Path | str, why: str) -> OrchestraError:
    return OrchestraError(f"cannot use {_shown(path)} as a database file: {why}; "
                          "choose a path on a writable filesystem (e.g. sqlite:////home/<you>/orchestra.db)")


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem mounted where `path` (absolute, resolved) lives, from
    /proc/self/mountinfo: the longest mount point above it, the last one mounted there wins.
    None where the kernel does not say (not Linux, /proc not mounted)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mounts:
            lines = mounts.readlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or "-" not in fields[6:]:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 = space
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[fields.index("-", 6) + 1]
    return kind


def check_database_path(path: Path) -> None:
    """Refuse, in one line, a database path that cannot be an SQLite file: an existing directory,
    device, pipe or socket (never chmod-ed or written to: `sqlite:////dev/null` or `sqlite:////tmp`
    as root used to make them 0600), anything on a kernel pseudo-filesystem (/proc, /sys, /dev),
    and anything under /proc or /sys."""
    where = os.path.realpath(path)
    try:
        info = os.stat(where)
    except OSError:
        info = None  # missing (created later) or unreadable (secure_sqlite_file names the reason)
    if info is not None:
        for test, kind in _FILE_KINDS:
            if test(info.st_mode):
                raise _unusable(path, f"it is {kind}, not a regular file")
    resolved = "" if where == str(path) else f" ({_shown(where)})"
    kind = filesystem_type(where)
    if kind in PSEUDO_FILESYSTEMS:
        raise _unusable(path, f"it is on the kernel's {kind} pseudo-filesystem{resolved}, which cannot hold a database")
    for top in KERNEL_TREES:  # whatever is mounted there (a container's tmpfs on /sys/fs/cgroup)
        if where == top or where.startswith(top + "/"):
            raise _unusable(path, f"it is under {top}{resolved}, the kernel's interface, not a place for files")


def secure_sqlite_file(path: Path) -> None:
    """SQLite is the personal mode: the database file belongs to one OS user and only they may
    read it. Before SQLAlchemy touches it, the file is created 0600 (SQLite gives its -wal and
    -shm files the database file's mode), a file of ours with group/other bits is tightened to
    0600, and a file of another user is refused with one line, before any connection is tried.
    Only a regular file is ever chmod-ed (check_database_path refuses anything else first)."""
    check_database_path(path)
    problem = "cannot use the SQLite database {path}: {why}; " + SINGLE_USER
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            os.chmod(path, 0o600)  # whatever the umask
            return
        except FileExistsError:
            pass
        info = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):  # another user's directory: the single-user rule
            raise OrchestraError(problem.format(path=_shown(path), why=exc.strerror or exc)) from None
        raise _unusable(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(info.st_mode):  # replaced since check_database_path looked
        raise _unusable(path, "it is not a regular file")
    me = os.geteuid()
    if info.st_uid != me:
        raise OrchestraError(
            f"the SQLite database {_shown(path)} belongs to {_who(info.st_uid)}, not to you, {_who(me)}: "
            + SINGLE_USER)
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            found = info if candidate == path else os.stat(candidate)
            if found.st_uid == me and stat.S_ISREG(found.st_mode) and stat.S_IMODE(found.st_mode) & 0o077:
                os.chmod(candidate, 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OrchestraError(problem.format(path=_shown(candidate), why=exc.strerror or exc)) from None


def is_sqlite(bind: Engine | Connection) -> bool:
    """SQLite (in-process) or PostgreSQL (a server): the only two databases Orchestra runs on."""
    return bind.dialect.name == "sqlite"


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database (None for an empty database)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if _missing_table(exc):
            return None
        raise


def _missing_table(exc: Exception) -> bool:
    message = str(exc).lower()
    return "no such table" in message or "does not exist" in message and "relation" in message


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every pending migration up to `revision` (Alembic), on the engine's own connection."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to `revision` (the tests of each migration's way back)."""
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, way: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, way)(cfg, revision)


def connect(url: str, *, auto_upgrade: bool | None = None) -> Engine:
    """An engine whose schema is current: upgraded automatically on SQLite, checked on PostgreSQL."""
    engine = make_engine(url)
    started = time.monotonic()
    while True:
        try:
            revision = current_revision(engine)
            break
        except OperationalError as exc:
            # SQLite under a concurrent first-time creation can report a locked database: retry.
            if is_sqlite(engine) and "locked" in str(exc) and time.monotonic() - started < 30:
                time.sleep(0.05)
                continue
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise OrchestraError(
                f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: {reason}; "
                "check ORCHESTRA_DATABASE_URL and that the server is running"
            ) from None
        except ProgrammingError as exc:
            if "permission denied" not in str(exc.orig):
                raise
            user = engine.url.username or "your login"
            raise OrchestraError(
                f"the database role {user} is not an Orchestra user (it may not read the schema); "
                f"ask an admin to run `orchestra user add {user}`"
            ) from None
    if revision == HEAD_REVISION:
        return engine
    if auto_upgrade is None:
        auto_upgrade = is_sqlite(engine)
    if auto_upgrade:
        upgrade(engine)
        return engine
    raise OrchestraError(
        f"the database schema is at revision {revision or 'none'}, this Orchestra needs {HEAD_REVISION}; "
        "run `orchestra db upgrade`"
    )
