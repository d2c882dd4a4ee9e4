"""Fixtures of the database tests: a scheduler in this process on a backend the test drives."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

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
