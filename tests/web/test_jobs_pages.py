"""The Job page (`/jobs/{id}`), its API twins and its live stream, on SQLite and PostgreSQL: the
page shows the task, state, attempts, why a queued job waits and the log's tail; the API is exactly
`maestro job show --json`; the log (page, stream and /api/jobs/{id}/log) and the command are
private; and a running job seen through `/live/jobs/{id}` becomes succeeded without a reload."""
from __future__ import annotations

import json
from html import unescape
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestra.db.models import Attempt
from tests.db.listing_world import World, listing_world  # noqa: F401 - the fixture
from tests.web.conftest import WebClient, admin_name, read_events

SECRET = "a line only alice may read"


def log_of(w: World, job_id: int) -> Path:
    """The latest attempt's log file of a job (the null backend writes none: the test does)."""
    with w.scheduler.ctx.transaction() as session:
        path = session.scalar(select(Attempt.log_path).where(Attempt.job_id == job_id)
                              .order_by(Attempt.number.desc()).limit(1))
    assert path
    log = Path(path)
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def running_job(w: World) -> tuple[int, str]:
    """A running job of `busy` and its backend object's name."""
    return sorted(w.attempts("running"))[0]


def without_live_runtimes(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "attempts": [{k: v for k, v in a.items() if not (k == "runtime_seconds" and a["ended_at"] is None)}
                                 for a in data["attempts"]]}


def test_the_job_page_shows_task_state_attempts_and_log(web: WebClient, listing_world: World) -> None:
    w = listing_world
    failed = w.ids["failed_job"]
    log_of(w, failed).write_text("".join(f"line {i}\n" for i in range(300)) + SECRET + "\n")
    html = web.get(f"/jobs/{failed}", "alice").text
    assert 'id="job-state" data-state="failed"' in html and 'href="/tasks/user.alice.busy"' in html
    assert 'id="attempts"' in html and '<tr data-attempt="1" data-state="failed">' in html and "exit code 3" in html
    tail = html[html.index('id="log-tail"'):]
    assert SECRET in tail and "line 299" in tail and "line 101\n" in tail and "line 100\n" not in tail  # last 200
    assert 'data-live="/live/jobs/' in html and "run " in html  # the command, to its owner


def test_a_queued_job_says_why_it_waits(web: WebClient, listing_world: World) -> None:
    w = listing_world
    queued = w.ids["queued_job"]
    why = json.loads(w.cli.ok(f"maestro job why {queued} --json").out)["reason"]
    html = web.get(f"/jobs/{queued}", "alice").text
    assert 'id="job-state" data-state="queued"' in html and 'id="job-why-reason"' in html and why in html
    assert "No attempt yet." in html and "No log yet: the job has not started." in html


def test_the_job_api_is_the_cli_json(web: WebClient, listing_world: World) -> None:
    w = listing_world
    for job_id in (w.ids["failed_job"], w.ids["queued_job"], running_job(w)[0]):
        cli = json.loads(w.cli.ok(f"maestro job show {job_id} --json").out)
        api = web.json(f"/api/jobs/{job_id}", "alice")
        assert isinstance(api, dict) and without_live_runtimes(api) == without_live_runtimes(cli)
        hidden = web.json(f"/api/jobs/{job_id}", "bob")
        assert isinstance(hidden, dict) and hidden["command"] is None and cli["command"]


def test_the_log_api_gives_the_last_lines(web: WebClient, listing_world: World) -> None:
    w = listing_world
    failed = w.ids["failed_job"]
    log_of(w, failed).write_text("one\ntwo\nthree\n")
    assert web.json(f"/api/jobs/{failed}/log?lines=2", "alice") == {"job_id": failed, "attempt": 1,
                                                                      "lines": ["two", "three"]}
    assert web.json(f"/api/jobs/{failed}/log", "alice") == {"job_id": failed, "attempt": 1,
                                                              "lines": ["one", "two", "three"]}
    queued = w.ids["queued_job"]
    assert web.json(f"/api/jobs/{queued}/log", "alice") == {"job_id": queued, "attempt": None, "lines": []}
    bad = web.get(f"/api/jobs/{failed}/log?lines=many", "alice")
    assert bad.status_code == 400 and bad.json() == {"error": "lines 'many' is not a line count; use ?lines=0 to 10000"}


def test_the_log_and_command_of_a_job_are_hidden_from_everyone_else(web: WebClient, listing_world: World) -> None:
    w = listing_world
    failed = w.ids["failed_job"]
    log_of(w, failed).write_text(SECRET + "\n")
    for user, trusted in ((None, True), ("bob", True), ("alice", False)):
        html = web.get(f"/jobs/{failed}", user, trusted=trusted).text
        assert SECRET not in html and "run " not in html, (user, trusted)
        assert 'class="hidden-note">hidden: sign in as alice through the proxy, or set [web] public = true on a private dashboard<' in html
        api = web.get(f"/api/jobs/{failed}/log", user, trusted=trusted)
        assert api.status_code == 403 and SECRET not in api.text
        assert api.json() == {"error": f"the log of job {failed} is private; hidden: sign in as alice through the proxy, or set [web] public = true on a private dashboard"}
        assert web.get(f"/api/jobs/{failed}", user, trusted=trusted).json()["command"] is None
        with closing(read_events(web, f"/live/jobs/{failed}", user)) as events:
            if trusted:
                first = next(events)
                assert SECRET not in json.dumps(first) and "hidden-note" in first["log-tail"]

    for user in ("alice", admin_name()):
        assert SECRET in web.get(f"/jobs/{failed}", user).text
        assert web.json(f"/api/jobs/{failed}/log", user) == {"job_id": failed, "attempt": 1, "lines": [SECRET]}


@pytest.mark.parametrize("ref", ["987654", "abc", "99999999999999999999999"])
def test_an_unknown_job_is_a_404_with_one_line(web: WebClient, listing_world: World, ref: str) -> None:
    page = web.get(f"/jobs/{ref}")
    shown = ref if ref == "987654" else repr(ref)
    assert page.status_code == 404 and f"job {shown} does not exist" in unescape(page.text)
    for path in (f"/api/jobs/{ref}", f"/api/jobs/{ref}/log"):
        response = web.get(path)
        assert response.status_code == 404 and "does not exist" in response.json()["error"]
        assert "\n" not in response.json()["error"]
    assert web.get(f"/live/jobs/{ref}").status_code == 404


def test_the_live_job_stream_shows_a_running_job_succeed(web: WebClient, listing_world: World) -> None:
    w = listing_world
    job_id, name = running_job(w)
    log = log_of(w, job_id)
    log.write_text("working\n")
    with closing(read_events(web, f"/live/jobs/{job_id}")) as events:
        first = next(events)
        assert set(first) == {"job-state-slot", "job-why", "attempts", "log-tail"}
        assert 'id="job-state" data-state="running"' in first["job-state-slot"] and "working" in first["log-tail"]
        with log.open("a") as handle:
            handle.write("all done\n")
        w.finish([name], 0)
        w.cycle()
        seen: dict[str, str] = dict(first)
        for event in events:
            seen.update(event)
            if 'data-state="succeeded"' in seen["job-state-slot"]:
                break
    assert 'id="job-state" data-state="succeeded"' in seen["job-state-slot"]
    assert '<tr data-attempt="1" data-state="succeeded">' in seen["attempts"] and "all done" in seen["log-tail"]
