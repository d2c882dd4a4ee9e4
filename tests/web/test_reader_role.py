"""The dashboard as it runs in production on PostgreSQL: logged in as a role of the read-only
group `orchestra_readers` (migration 0011; docs/web.md), which may SELECT what users read and
nothing else — no writes, no EXECUTE on the owner's functions. Every page and API route must
answer with only that, for an anonymous viewer and for an owner vouched for by the proxy."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from orchestra.db.models import Job, Task
from orchestra.services.context import Context
from tests.db.listing_world import World, listing_world  # noqa: F401 - the fixture
from tests.db.conftest import readers_login
from tests.db.test_security import role_url
from tests.web.conftest import WebClient, read_events, serving


@pytest.fixture
def reader_web(web_env: dict[str, str], db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebClient]:
    if db_url.startswith("sqlite"):
        pytest.skip("roles are PostgreSQL's (SQLite: the file's owner reads it)")
    with readers_login(db_url) as role:
        monkeypatch.setenv("ORCHESTRA_DATABASE_URL", role_url(db_url, role))
        monkeypatch.delenv("ORCHESTRA_USER", raising=False)
        probe = Context.from_env()
        assert probe.engine.url.username == role  # the server's login: the read-only one
        probe.engine.dispose()
        with serving() as client:
            yield client


def test_every_route_answers_to_a_read_only_login(listing_world: World, reader_web: WebClient) -> None:
    with listing_world.scheduler.ctx.transaction() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == "user.alice.busy"))
        job_id = session.scalar(select(Job.id).where(Job.task_id == task_id).order_by(Job.id))
    routes = ["/", "/queue", "/queue?jobs=1", "/tasks", "/tasks/user.alice.busy", f"/jobs/{job_id}", "/usage",
              "/usage?hours=720", "/api/status", "/api/queue", "/api/usage", "/api/tasks",
              "/api/tasks/user.alice.busy", "/api/tasks/user.alice.busy/jobs", f"/api/jobs/{job_id}",
              f"/api/jobs/{job_id}/log", "/api/usage/history"]
    for user in (None, "alice"):
        for route in routes:
            response = reader_web.get(route, user)
            expected = 403 if route.endswith("/log") and user is None else 200  # a log is private
            assert response.status_code == expected, f"{route} as {user}: {response.status_code} {response.text[:300]}"
    for stream in ("/live/overview", f"/live/tasks/{task_id}", f"/live/jobs/{job_id}"):
        with closing(read_events(reader_web, stream)) as events:
            assert next(events), stream


def test_the_read_only_login_cannot_read_e_mail_addresses(reader_web: WebClient) -> None:
    """The users' addresses are for the postman, not for a dashboard (nor whoever runs it)."""
    reader = create_engine(os.environ["ORCHESTRA_DATABASE_URL"])
    try:
        with reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM users")).scalar() is not None  # the rest is readable
            conn.execute(text("SELECT id, name, share, usage FROM users")).all()
            with pytest.raises(DBAPIError, match="permission denied"):
                conn.execute(text("SELECT email FROM users"))
    finally:
        reader.dispose()
