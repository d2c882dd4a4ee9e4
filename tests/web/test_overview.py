"""The Overview page (`/`), its live stream and `/api/status`, `/api/usage`, on SQLite and
PostgreSQL, over a world made by real scheduler cycles (tests/db/listing_world.py): the numbers are
`orchestra status`'s and `maestro usage`'s, a stale scheduler is said loudly, holds show their
reason, and the stream sends the changed fragment when a job ends."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from orchestra.db.models import ChangeCounter
from orchestra.scheduler import holds
from orchestra.services.context import Context
from orchestra.web import overview
from tests.db.listing_world import World, listing_world  # noqa: F401  (the fixture)
from tests.helpers import Cli
from tests.web.conftest import WebClient
from tests.web.test_queue_pages import one_line_error, same, table, tsv

DEADLINE = 60.0  # seconds a live update may take on a loaded machine (it comes in ~2)


def status_json(cli: Cli) -> dict[str, Any]:
    return json.loads(cli.ok("orchestra status --json").out)


def test_the_overview_shows_what_orchestra_status_and_maestro_usage_say(web: WebClient, listing_world: World,
                                                                        cli: Cli) -> None:
    response = web.get("/")
    assert response.status_code == 200, response.text[:500]
    page = response.text
    status = status_json(cli)
    for q in status["queues"]:
        card = re.search(rf'id="slots-{q["cluster"]}-{q["queue"]}".*?<span class="slots-used">(\d+)</span> of '
                         rf'<span class="slots-total">(\d+)</span> slots in use, <span class="slots-free">(\d+)', page, re.S)
        assert card and card.groups() == (str(q["busy"]), str(q["slots"]), str(q["free"])), q
    header, counts = table(page, "job-totals")
    jobs = dict(zip(header, (int(n) for n in counts)))
    assert list(jobs) == ["held", "queued", "starting", "running"]
    assert jobs["queued"] == sum(u["queued"] for u in status["users"]) == 4  # busy's 4 queued jobs
    assert jobs["held"] == sum(u["held"] for u in status["users"]) == 0
    assert jobs["starting"] + jobs["running"] == sum(u["running"] for u in status["users"]) == 4
    assert 'data-state="killed">killed 1</span>' in page and 'data-state="completed">completed 1</span>' in page

    users = table(page, "user-table")
    assert users[0] == ["user", "share", "usage_h", "fairshare", "running", "queued", "held", "see"]
    printed = tsv(cli.ok("maestro usage -o user,share,usage_h,fairshare,running,queued,held").out)
    assert [row[:-1] for row in users[1:]] == [row for row in printed[1:] if row[0] == "alice"]
    assert 'href="/queue?user=alice"' in page and 'href="/tasks?user=alice"' in page
    assert 'data-live="/live/overview"' in page and 'id="scheduler-state"' in page


def test_a_stale_scheduler_is_said_loudly(web: WebClient, env: dict[str, str], cli: Cli) -> None:
    fresh = web.get("/").text
    assert 'id="scheduler-state" data-state="never"' in fresh and "no scheduler has ever run" in fresh
    ctx = Context.from_env()
    try:
        with ctx.transaction() as session:
            session.execute(insert(ChangeCounter).values(name="heartbeat", value=int((time.time() - 7200) * 1000)))
    finally:
        ctx.engine.dispose()
    page = web.get("/").text
    assert 'id="scheduler-state" data-state="stale">NOT SEEN (stale)</span>' in page
    warning = re.search(r'<p class="error" id="scheduler-warning" role="alert"><strong>(.*?)</strong>', page, re.S)
    assert warning and "the scheduler has not been seen for 2h00m" in warning.group(1)
    assert status_json(cli)["scheduler"]["state"] == "stale"


def test_holds_show_their_reason(web: WebClient, env: dict[str, str]) -> None:
    assert '<p class="muted" id="holds">none</p>' in web.get("/").text
    ctx = Context.from_env()
    try:
        with ctx.transaction() as session:
            holds.record(session, {("LPS", "gpu"): "cannot start jobs: disk full"}, [], time.time())
    finally:
        ctx.engine.dispose()
    page = web.get("/").text
    assert re.search(r'<li class="warn" data-target="LPS/gpu"><strong>queue LPS/gpu</strong> since [^:]+:\d\d:\d\d'
                     r'\+00:00: cannot start jobs: disk full; 1 launch\(es\) refused', page), page
    assert 'data-queue="LPS/gpu">' in page and 'class="state state-held" data-state="held">held</span>' in page


# ---------------------------------------------------------------------------------------- the API
def test_api_status_is_orchestra_status_json(web: WebClient, listing_world: World, cli: Cli) -> None:
    same(web.json("/api/status"), status_json(cli))


@pytest.mark.parametrize("query, args", [("", ""), ("?user=alice", "-u alice")])
def test_api_usage_is_maestro_usage_json(web: WebClient, listing_world: World, cli: Cli, query: str,
                                         args: str) -> None:
    api = web.json(f"/api/usage{query}")
    same(api, json.loads(cli.ok(f"maestro usage --json {args}").out))
    assert [r["user"] for r in api["rows"]] == (["alice"] if query else [r["user"] for r in api["rows"]])


def test_api_usage_of_an_unknown_user_is_a_one_line_404(web: WebClient) -> None:
    one_line_error(web.get("/api/usage?user=nobody"), 404, "user 'nobody' is unknown")


# ---------------------------------------------------------------------------------------- live
class Events:
    """The server-sent events of one stream, read as they come (each: {element id: inner HTML})."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next(self) -> dict[str, str]:
        for line in self.lines:
            if line.startswith("data: "):
                return json.loads(line[len("data: "):])
        raise AssertionError("the stream ended")

    def until(self, condition: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            event = self.next()
            if condition(event):
                return event
        raise AssertionError(f"no event {what} within {DEADLINE:.0f} s")


def test_the_live_stream_sends_the_jobs_fragment_when_jobs_end(web: WebClient, listing_world: World,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overview, "LIVE_INTERVAL", 0.2)
    with httpx.Client(base_url=web.url, timeout=DEADLINE) as client, \
            client.stream("GET", "/live/overview") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        first = events.next()
        assert set(first) == set(overview.FRAGMENTS)  # the whole page's live parts, at once
        assert '<td class="num" data-state="running">4</td>' in first["ov-jobs"]
        listing_world.finish(listing_world.running(), 0)
        listing_world.cycle()  # 4 succeed, the 4 queued start
        listing_world.finish(listing_world.running(), 0)
        listing_world.cycle()  # those succeed too: nothing live, nothing queued
        events.until(lambda e: '<td class="num" data-state="running">0</td>' in e.get("ov-jobs", "")
                     and '<td class="num" data-state="queued">0</td>' in e.get("ov-jobs", ""),
                     "with no job running or queued")
