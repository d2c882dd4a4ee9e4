"""Database faults in one line: what happened and what to do.

A lock held too long, a server that went away, a full disk, a read-only file: the CLIs print this
line instead of a traceback, and the scheduler service logs it and retries with a backoff (its
cycle stops where it is: every step's transaction is atomic).
"""
from __future__ import annotations

from sqlalchemy.exc import DBAPIError

# (what the driver says, lower case) -> what it means and what to do
KNOWN = (
    ("database is locked", "the database is locked by another process (SQLite waited 30 s); try again in a moment"),
    ("disk is full", "the database's disk is full; free space (or ask the admin), then try again"),
    ("no space left", "the database's disk is full; free space (or ask the admin), then try again"),
    ("readonly database", "the database is read-only here (file permissions or a read-only mount); "
                          "ask its owner"),
    ("read-only", "the database is read-only here; ask its owner"),
    ("terminating connection", "the database server closed the connection (a restart or an admin); "
                               "try again"),
    ("server closed the connection", "the database server closed the connection (a restart or a "
                                     "failover); try again"),
    ("could not connect", "cannot reach the database server; check that it runs and the URL"),
    ("connection refused", "cannot reach the database server; check that it runs and the URL"),
    ("the database system is starting up", "the database server is starting up; try again in a moment"),
    ("the database system is shutting down", "the database server is shutting down; try again later"),
    ("connection already closed", "the connection to the database was lost; try again"),
)


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def describe(exc: DBAPIError) -> str:
    """`database fault: <what the driver said>; <what it means and what to do>` on one line."""
    said = first_line(exc)
    lowered = str(getattr(exc, "orig", None) or exc).lower()
    for needle, meaning in KNOWN:
        if needle in lowered:
            return f"database fault: {said} ({meaning})"
    return f"database fault: {said}"


def is_outage(exc: BaseException) -> bool:
    """A fault of the database's environment (the service backs off and retries), as opposed to a
    bug (a wrong statement, a constraint violated), which must not be retried forever."""
    from sqlalchemy.exc import InterfaceError, InternalError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, InternalError) and "read-only" in str(exc).lower()
