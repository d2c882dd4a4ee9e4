"""Issue 18, the cycle's write steps: on SQLite `bulk_update` runs its statement compiled once
through the driver's executemany, and `one_of_param` binds a list as one JSON text read back by
`json_each`; both must mean exactly what they mean on PostgreSQL (unnest, = ANY(array))."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from orchestra.db.bulk import bulk_update, one_of_param
from orchestra.db.engine import connect, is_sqlite
from orchestra.db.models import User

USERS = User.__table__
_TWICE_SHARE = USERS.c.share * 2  # a fixed SQL expression built once, as the scheduler's are
_NAMED = USERS.c.name.like("u%")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = connect(db_url)
    with Session(engine) as session, session.begin():
        session.execute(USERS.insert(), [{"name": f"u{i}", "share": 1.0 + i, "usage": 0.0, "usage_at": 0.0,
                                          "created_at": 0.0, "notify": True} for i in range(40)])
    yield engine
    engine.dispose()


def rows(engine: Engine) -> dict[str, tuple]:
    with Session(engine) as session:
        return {r.name: (r.share, r.usage, r.usage_at, r.max_running, r.notify) for r in session.execute(
            select(User.name, User.share, User.usage, User.usage_at, User.max_running, User.notify))}


@pytest.mark.parametrize("count", [1, 3, 30])  # below and above UNNEST_MIN_ROWS on PostgreSQL
def test_rows_fixed_values_expressions_and_guards_mean_the_same(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        ids = dict(session.execute(select(User.name, User.id)).all())
    changed = [{"id": ids[f"u{i}"], "usage": 0.5 * i, "max_running": None if i % 2 else i} for i in range(count)]
    for _ in range(2):  # the second call runs the statement compiled by the first
        with Session(engine) as session, session.begin():
            bulk_update(session, USERS, changed, where=[_NAMED],
                        fixed={"usage_at": 7.0, "notify": False, "share": _TWICE_SHARE}, add=["usage"])
    after = rows(engine)
    for i in range(40):
        if i < count:
            assert after[f"u{i}"] == (4.0 * (1 + i), i * 1.0, 7.0, None if i % 2 else i, False)
        else:
            assert after[f"u{i}"] == (1.0 + i, 0.0, 0.0, None, True)


def test_a_row_the_guard_excludes_is_left_alone(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        uid = session.scalar(select(User.id).where(User.name == "u5"))
        session.execute(USERS.update().where(USERS.c.id == uid).values(name="x5"))
        bulk_update(session, USERS, [{"id": uid, "usage": 9.0}], where=[_NAMED])
    assert rows(engine)["x5"][1] == 0.0


@pytest.mark.parametrize("values", ["none", "first three", "numpy"])
def test_one_of_param_binds_any_list_as_one_parameter(engine: Engine, values: str) -> None:
    with Session(engine) as session:
        all_ids = sorted(session.scalars(select(User.id)).all())
    wanted = {"none": [], "first three": all_ids[:3], "numpy": list(np.array(all_ids[5:9]))}[values]
    statement = select(USERS.c.id).where(one_of_param(USERS.c.id, "ids", is_sqlite(engine))).order_by(USERS.c.id)
    with engine.connect() as conn:
        if values == "numpy" and not is_sqlite(engine):
            wanted = [int(v) for v in wanted]  # psycopg2 adapts Python ints; SQLite's JSON takes numpy's too
        assert conn.execute(statement, {"ids": wanted}).scalars().all() == sorted(int(v) for v in wanted)
        assert conn.execute(statement, {"ids": all_ids}).scalars().all() == all_ids  # the same SQL, any count
