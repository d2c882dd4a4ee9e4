"""Issue 18: on PostgreSQL a short pass charges its owners in one statement, the decay computed
by the server (`cycle._CHARGE_DECAYED`). It must give what the Python path gives (SQLite, full
cycles: fairshare.decay, then the charge, then below 1e-6 kept as 0), including usage decayed
past float8's range, which PostgreSQL's power() would refuse as an underflow."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from orchestra.db.engine import connect
from orchestra.db.models import User
from orchestra.fairshare import decay
from orchestra.scheduler.cycle import _CHARGE_DECAYED

USERS = User.__table__
NOW = 2e9
DAY = 86400.0


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's short pass charges through the Python path (fairshare.decay)")
    made = connect(db_url)
    yield made
    made.dispose()


# (usage, usage_at, charge): recent, a week old, decayed far past float8's smallest value, in the
# future (a clock step back: no growth), nothing left (cut to 0), nothing charged.
CASES = [(100.0, NOW - 60, 5.0), (3600.0, NOW - 7 * DAY, 0.5), (1e6, NOW - 20000 * DAY, 0.0),
         (50.0, NOW + 30, 1.0), (1e-9, NOW - DAY, 0.0), (7.0, NOW, 0.0)]


@pytest.mark.parametrize("half_life_days", [7.0, 0.5, math.inf])
def test_the_servers_decay_is_the_python_decay(engine: Engine, half_life_days: float) -> None:
    with Session(engine) as session, session.begin():
        session.execute(USERS.insert(), [{"name": f"u{i}", "share": 1.0, "usage": u, "usage_at": at,
                                          "created_at": 0.0} for i, (u, at, _) in enumerate(CASES)])
        ids = session.scalars(select(User.id).order_by(User.id)).all()
        session.execute(_CHARGE_DECAYED, {"ids": ids, "charges": [c for _, _, c in CASES], "now": NOW,
                                          "half_life": half_life_days * DAY})
        got = session.execute(select(User.usage, User.usage_at).order_by(User.id)).all()
    usage = np.array([u for u, _, _ in CASES])
    elapsed = NOW - np.array([at for _, at, _ in CASES])
    expected = decay(usage, elapsed, half_life_days * DAY) + np.array([c for _, _, c in CASES])
    expected[expected < 1e-6] = 0.0
    assert [u for u, _ in got] == pytest.approx(expected.tolist(), rel=1e-12, abs=0)
    assert {at for _, at in got} == {NOW}
