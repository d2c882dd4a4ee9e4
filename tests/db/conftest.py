"""Fixtures of the database tests: a scheduler in this process on a backend the test drives, and
a read-only login (the dashboard's, on PostgreSQL)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

from orchestra.backends.base import Backend
from orchestra.backends.null import NullBackend
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.context import Context


@contextmanager
def scheduler_on(backend: Backend) -> Iterator[Scheduler]:
    """A scheduler holding the lease, its cluster LPS on `backend` (the test decides every end)."""
    scheduler = Scheduler(Context.from_env(), backends={"LPS": backend})
    assert scheduler.lease.try_acquire()
    try:
        yield scheduler
    finally:
        scheduler.ctx.engine.dispose()


@pytest.fixture
def sched(env: dict[str, str]) -> Iterator[tuple[Scheduler, NullBackend]]:
    backend = NullBackend()
    with scheduler_on(backend) as scheduler:
        yield scheduler, backend


@contextmanager
def readers_login(db_url: str) -> Iterator[str]:
    """A login role of the read-only group orchestra_readers (PostgreSQL; password `pw-<role>`),
    as `orchestra web` logs in in production: its name; dropped afterwards."""
    role = f"web_{uuid.uuid4().hex[:8]}"
    owner = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"))
        conn.execute(text(f"GRANT orchestra_readers TO {role}"))
    try:
        yield role
    finally:
        with owner.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.dispose()
