"""Issue 18: a short pass gives `policy_input` the running counts and holds it already knows
instead of reading them; the input it builds so must be exactly what reading the database gives
(what `maestro queue` shows), pass after pass: ends, retries, a user's cap, a second user."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from orchestra.backends.null import NullBackend
from orchestra.db.models import User
from orchestra.scheduler import cycle
from orchestra.scheduler.cycle import Scheduler
from orchestra.services.queue import policy_input
from tests.helpers import Cli


def submit(cli: Cli, storage: Path, user: str, n: int) -> None:
    (storage / user).mkdir()
    for i in range(n):
        (storage / user / f"c{i:02d}").write_text(str(i))
    (storage / f"{user}.data").write_text("d")
    cli.ok(f"orchestra_registry -d user.{user}.configs -p {storage / user} --cluster LPS", user=user)
    cli.ok(f"orchestra_registry -d user.{user}.data -p {storage / f'{user}.data'} --cluster LPS", user=user)
    cli.ok(f"maestro task create -c user.{user}.configs -d user.{user}.data -t user.{user}.t "
           "--containerImage x/img --exec 'run %DATA %IN %OUT' --bypass", user=user)


def same_input(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.tasks == b.tasks and a.owner_ids == b.owner_ids and a.holds == b.holds
    assert dict(a.user_running) == dict(b.user_running) and dict(a.user_charge) == pytest.approx(dict(b.user_charge))
    for name in ("free", "slots", "busy"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name, value in vars(a.inp).items():
        np.testing.assert_array_equal(value, getattr(b.inp, name), err_msg=name)


def test_a_short_pass_builds_the_input_a_fresh_read_gives(
        cli: Cli, storage: Path, sched: tuple[Scheduler, NullBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, backend = sched
    submit(cli, storage, "alice", 10)
    submit(cli, storage, "bob", 6)
    with scheduler.ctx.transaction() as session:
        session.execute(update(User).where(User.name == "bob").values(max_running=1))
    compared = 0

    def checked(session, settings, now, **known):  # type: ignore[no-untyped-def]
        nonlocal compared
        view = policy_input(session, settings, now, **known)
        if known.get("running") is not None:
            same_input(view, policy_input(session, settings, now))
            compared += 1
        return view

    monkeypatch.setattr(cycle, "policy_input", checked)
    report = scheduler.cycle()  # full: expands both tasks, fills the 4 cpu slots (bob: 1, his cap)
    assert report.counts["started"] == 4
    exit_code = 0
    while backend.running:
        backend.finish(sorted(backend.running)[:2], exit_code=exit_code)
        exit_code = 1 - exit_code  # every other pair fails once: retried, back in the queue
        scheduler.cycle(full=False)
    assert compared >= 5
