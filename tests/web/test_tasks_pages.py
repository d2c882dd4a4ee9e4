"""The Tasks pages (`/tasks`, `/tasks/{ref}`) and their API twins, on SQLite and PostgreSQL: pages
render the listing world's real tasks, the API is exactly the CLI's `--json`, paging is done on the
server, bad input is one 4xx line, and private parts (the command, failure log tails) are shown
only to the owner, an admin, or everyone with `[web] public = true`."""
from __future__ import annotations

import json
from html import unescape
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestra.db.models import Attempt, Task
from orchestra.web import tasks_pages
from tests.db.listing_world import LONG, World, listing_world  # noqa: F401 - the fixture
from tests.web.conftest import WebClient, admin_name, read_events

BUSY = "user.alice.busy"
COMMAND = "run %DATA %IN %OUT"  # the World's tasks' command
SECRET = "secret-output-of-a-failed-job"


def write_failure_logs(w: World) -> list[int]:
    """A log with SECRET in it for each failed attempt of `busy` (the null backend writes none)."""
    with w.scheduler.ctx.transaction() as session:
        rows = session.execute(select(Attempt.job_id, Attempt.log_path).where(Attempt.status == "failed")).all()
    for _, path in rows:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(f"starting\n{SECRET}\nTraceback: boom\n")
    return [job_id for job_id, _ in rows]


def task_id(w: World, name: str) -> int:
    with w.scheduler.ctx.transaction() as session:
        found = session.scalar(select(Task.id).where(Task.name == name))
    assert found is not None
    return found


def cli_json(w: World, line: str) -> Any:
    return json.loads(w.cli.ok(line).out)


def without_live_runtimes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Job rows with the runtime of running jobs dropped (it grows between the two reads)."""
    return [{k: v for k, v in r.items() if not (k == "runtime_seconds" and r.get("ended_at") is None)} for r in rows]


def test_the_tasks_page_shows_every_task_newest_first_with_bars_and_counts(web: WebClient, listing_world: World) -> None:
    response = web.get("/tasks")
    assert response.status_code == 200
    html = response.text
    order = [html.index(f'href="/tasks/{name}"') for name in ("user.alice.stopped", BUSY, LONG)]
    assert order == sorted(order)  # newest first
    assert 'class="table-wrap"' in html and 'class="filters"' in html and "hide-narrow" in html
    assert 'data-state="running"' in html and 'data-state="killed"' in html and 'data-state="completed"' in html
    busy_row = html[html.index(f'href="/tasks/{BUSY}"'):].split("</tr>")[0]
    # busy: 2 failed, 2 succeeded, 4 running, 4 queued of 12: a bar segment per state, its width its share
    assert 'class="succeeded" data-state="succeeded" style="width: 16.67%"' in busy_row
    assert 'class="running" data-state="running" style="width: 33.33%"' in busy_row
    assert ">4/12<" in busy_row


def test_the_tasks_page_filters_by_user_and_state(web: WebClient, listing_world: World) -> None:
    killed = web.get("/tasks?state=killed").text
    assert "user.alice.stopped" in killed and BUSY not in killed
    assert BUSY in web.get("/tasks?user=alice&state=running").text
    nobody = web.get("/tasks?user=bob").text
    assert "No task matches." in nobody and BUSY not in nobody


def test_the_api_task_list_is_the_cli_json(web: WebClient, listing_world: World) -> None:
    w = listing_world
    assert web.json("/api/tasks") == cli_json(w, "maestro task list --json")
    assert web.json("/api/tasks?state=killed") == cli_json(w, "maestro task list --status killed --json")
    assert web.json("/api/tasks?user=alice&state=running") == cli_json(w, "maestro task list -u alice -s running --json")
    assert web.json("/api/tasks?user=bob") == cli_json(w, "maestro task list -u bob --json") == []


def test_tasks_are_paged_on_the_server(web: WebClient, listing_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_pages, "TASKS_PER_PAGE", 2)
    first, second = web.get("/tasks").text, web.get("/tasks?page=2").text
    assert "user.alice.stopped" in first and BUSY in first and LONG not in first and "page 1 of 2" in first
    assert LONG in second and BUSY not in second and 'rel="prev"' in second
    past = web.get("/tasks?page=9")
    assert past.status_code == 200 and 'id="past-end"' in past.text and "Page 9 is past the end" in past.text
    every = cli_json(listing_world, "maestro task list --json")  # the CLI's order, paged; counts from the counters
    assert web.json("/api/tasks?page=1") == every[:2] and web.json("/api/tasks?page=2") == every[2:] == \
        [t for t in every if t["name"] == "user.alice.stopped"]


@pytest.mark.parametrize("path, message", [
    ("/tasks?page=0", "page '0' is not a page number; use ?page=1 or more"),
    ("/tasks?page=two", "page 'two' is not a page number; use ?page=1 or more"),
    ("/tasks?state=sleeping", "state 'sleeping' is unknown; use one of: registered"),
    ("/tasks?user=Bob%20Smith", "user 'Bob Smith' is not a user name"),
    (f"/tasks/{BUSY}?page=-1", "page '-1' is not a page number"),
    (f"/tasks/{BUSY}?state=done", "state 'done' is unknown; use one of: held, queued"),
])
def test_bad_input_is_a_400_with_one_line(web: WebClient, listing_world: World, path: str, message: str) -> None:
    page = web.get(path)
    assert page.status_code == 400 and message in unescape(page.text) and "Traceback" not in page.text
    api = web.get("/api" + path.replace(f"{BUSY}?", f"{BUSY}/jobs?"))  # a task's jobs are filtered there
    assert api.status_code == 400 and message in api.json()["error"] and "\n" not in api.json()["error"]


def test_an_unknown_task_is_a_404_with_one_line(web: WebClient, listing_world: World) -> None:
    for ref in ("user.alice.nope", "987654", "99999999999999999999999"):
        page = web.get(f"/tasks/{ref}")
        assert page.status_code == 404 and f"task '{ref}' does not exist" in unescape(page.text)
        for api in (f"/api/tasks/{ref}", f"/api/tasks/{ref}/jobs"):
            response = web.get(api)
            assert response.status_code == 404
            assert response.json() == {"error": f"task '{ref}' does not exist; `maestro task list` shows your tasks"}
    assert web.get("/live/tasks/abc").status_code == 404


def test_the_task_page_shows_settings_states_failures_and_jobs(web: WebClient, listing_world: World) -> None:
    w = listing_world
    failed = write_failure_logs(w)
    html = web.get(f"/tasks/{BUSY}", "alice").text
    assert 'id="task-state" data-state="running"' in html and 'id="task-jobs"' in html
    assert 'data-live="/live/tasks/' in html
    assert COMMAND in html and SECRET in html  # the owner sees the command and the failure logs
    for job_id in failed:
        assert f'href="/jobs/{job_id}"' in html
    assert "exit code 3" in html
    assert html.count('<tr data-job-id="') == 12 + len(failed)  # the jobs table, and the failures
    # The same page by id, and the jobs filtered by state
    assert 'id="task-state" data-state="running"' in web.get(f"/tasks/{task_id(w, BUSY)}").text
    queued = web.get(f"/tasks/{BUSY}?state=queued").text
    jobs_table = queued[queued.index('id="task-jobs"'):]
    assert jobs_table.count('<tr data-job-id="') == 4 and 'data-state="running"' not in jobs_table.split("</table>")[0]


def test_the_task_api_is_the_cli_json_with_private_fields_null_when_hidden(web: WebClient, listing_world: World) -> None:
    w = listing_world
    write_failure_logs(w)
    cli = cli_json(w, f"maestro task show -t {BUSY} --json")
    assert cli["command"] == COMMAND and any(SECRET in f["log_tail"] for f in cli["failed"])
    assert web.json(f"/api/tasks/{BUSY}", "alice") == cli
    hidden = web.json(f"/api/tasks/{BUSY}", "bob")
    assert isinstance(hidden, dict) and hidden["command"] is None
    assert [f["log_tail"] for f in hidden["failed"]] == [None] * len(cli["failed"])
    assert {**hidden, "command": cli["command"], "failed": cli["failed"]} == cli


def test_the_task_jobs_api_is_the_cli_job_list(web: WebClient, listing_world: World,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    w = listing_world
    assert without_live_runtimes(web.json(f"/api/tasks/{BUSY}/jobs")) == \
        without_live_runtimes(cli_json(w, f"maestro job list -t {BUSY} --json"))
    assert web.json(f"/api/tasks/{BUSY}/jobs?state=failed") == cli_json(w, f"maestro job list -t {BUSY} -s failed --json")
    monkeypatch.setattr(tasks_pages, "JOBS_PER_PAGE", 5)
    assert without_live_runtimes(web.json(f"/api/tasks/{BUSY}/jobs?page=1")) == \
        without_live_runtimes(cli_json(w, f"maestro job list -t {BUSY} --limit 5 --json"))
    every = cli_json(w, f"maestro job list -t {BUSY} --limit 0 --json")
    third = web.json(f"/api/tasks/{BUSY}/jobs?page=3")
    assert isinstance(third, list) and [j["id"] for j in third] == [j["id"] for j in every[10:]]
    assert web.json(f"/api/tasks/{BUSY}/jobs?page=4") == []


def test_the_jobs_of_a_task_are_paged_on_the_server(web: WebClient, listing_world: World,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_pages, "JOBS_PER_PAGE", 5)
    pages = [web.get(f"/tasks/{BUSY}?page={n}").text for n in (1, 2, 3)]
    rows = [p[p.index('id="task-jobs"'):].count('<tr data-job-id="') for p in pages]
    assert rows == [5, 5, 2] and "page 1 of 3" in pages[0] and 'rel="next"' in pages[0]
    past = web.get(f"/tasks/{BUSY}?page=4")
    assert past.status_code == 200 and 'id="jobs-past-end"' in past.text
    failed = web.get(f"/tasks/{BUSY}?state=failed").text
    assert "2 jobs failed; page 1 of 1" in failed


def test_scouts_and_dependencies_are_shown_and_linked(web: WebClient, listing_world: World) -> None:
    w = listing_world
    w.cli.ok("maestro task create -c user.alice.few -d user.alice.data -t user.alice.scouted "
             "--containerImage x/img --exec 'run %DATA %IN %OUT'")
    w.cli.ok("maestro task create -c user.alice.few -d user.alice.data -t user.alice.later "
             "--containerImage x/img --exec 'run %DATA %IN %OUT' --after user.alice.scouted")
    w.cycle()
    scouted = web.get("/tasks/user.alice.scouted").text
    assert 'id="task-scouts"' in scouted and "0 of 3 scouts succeeded" in scouted and 'data-verdict="undecided"' in scouted
    assert 'id="task-waited-by"' in scouted and 'href="/tasks/user.alice.later"' in scouted
    later = web.get("/tasks/user.alice.later").text
    assert 'id="task-after"' in later and 'href="/tasks/user.alice.scouted"' in later
    assert "waiting for user.alice.scouted" in later


def test_private_parts_of_a_task_are_hidden_from_everyone_else(web: WebClient, listing_world: World) -> None:
    write_failure_logs(listing_world)
    for user, trusted in ((None, True), ("bob", True), ("alice", False)):
        html = web.get(f"/tasks/{BUSY}", user, trusted=trusted).text
        assert COMMAND not in html and SECRET not in html, (user, trusted)
        assert 'class="hidden-note">hidden: sign in as alice through the proxy, or set [web] public = true on a private dashboard<' in html
        api = web.get(f"/api/tasks/{BUSY}", user, trusted=trusted).json()
        assert api["command"] is None and all(f["log_tail"] is None for f in api["failed"])
    for user in ("alice", admin_name()):
        html = web.get(f"/tasks/{BUSY}", user).text
        assert COMMAND in html and SECRET in html and "hidden-note" not in html, user
        assert web.json(f"/api/tasks/{BUSY}", user)["command"] == COMMAND  # type: ignore[index]


def test_a_public_dashboard_shows_private_parts_to_everyone(listing_world: World, public_web: WebClient) -> None:
    write_failure_logs(listing_world)
    html = public_web.get(f"/tasks/{BUSY}").text
    assert COMMAND in html and SECRET in html
    assert public_web.json(f"/api/tasks/{BUSY}")["command"] == COMMAND  # type: ignore[index]


def test_the_live_task_stream_sends_state_counts_and_jobs(web: WebClient, listing_world: World) -> None:
    with closing(read_events(web, f"/live/tasks/{task_id(listing_world, BUSY)}?state=failed")) as events:
        first = next(events)
    assert set(first) == {"task-state-slot", "task-counts", "task-jobs"}
    assert 'id="task-state" data-state="running"' in first["task-state-slot"]
    assert first["task-jobs"].count('<tr data-job-id="') == 2
    assert web.get(f"/live/tasks/{task_id(listing_world, BUSY)}?page=0").status_code == 400
