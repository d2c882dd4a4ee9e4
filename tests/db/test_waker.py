"""The loop's wake-up path for backend events, on SQLite and PostgreSQL: `Waker.poke` from another
thread ends a wait at once with reason "event" (a short pass), is harmless after `close`, and the
Scheduler hands its callback only to backends that take one."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from orchestra.backends.null import NullBackend
from orchestra.scheduler.cycle import Scheduler
from orchestra.scheduler.loop import Waker
from orchestra.services.context import Context


@pytest.fixture
def ctx(env: dict[str, str]) -> Iterator[Context]:
    context = Context.from_env()
    yield context
    context.engine.dispose()


def test_poke_from_a_thread_wakes_the_wait_as_an_event(ctx: Context) -> None:
    waker = Waker(ctx, poll=5.0)
    try:
        timer = threading.Timer(0.1, waker.poke)
        timer.start()
        assert waker.wait(30) == "event"  # not "interval": the poke, not the 5 s poll, ended the wait
        timer.join()
        for _ in range(10_000):  # more pokes than the pipe holds: none blocks, one wait drains them
            waker.poke()
        assert waker.wait(30) == "event"
        assert waker.wait(0.05) == "interval"
        os.write(waker._write, bytes([17]))  # what set_wakeup_fd writes for SIGCHLD
        waker.poke()
        assert waker.wait(30) == "signal"
    finally:
        waker.close()
    waker.poke()  # after close: nothing written (the descriptor may be another file's by now)


class Wakeable(NullBackend):
    def __init__(self) -> None:
        super().__init__()
        self.wakeup: Callable[[], None] | None = None

    def set_wakeup(self, callback: Callable[[], None]) -> None:
        self.wakeup = callback


def test_scheduler_hands_the_callback_to_backends_that_take_it(ctx: Context,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    early, plain = Wakeable(), NullBackend()
    scheduler = Scheduler(ctx, backends={"A": early, "B": plain})
    made = Wakeable()
    monkeypatch.setattr("orchestra.scheduler.cycle.make_backend", lambda cluster, *_: made)
    scheduler.set_wakeup(callback := lambda: None)
    assert early.wakeup is callback  # existing backends get it at once
    assert scheduler.backend("LPS") is made and made.wakeup is callback  # new ones when made
    assert scheduler.poll_after() is None  # no backend asks to be polled
