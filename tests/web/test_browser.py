"""The dashboard in a real browser (headless Chromium, tests/web/browser.py) over real jobs: what
only a browser can show. A person follows links from the overview to a running job and sees it
become succeeded live, without a reload; every page loads with no console error (a script the CSP
blocks, a missing asset, a JS error) and fits a 390 px phone without the body scrolling sideways
(wide tables scroll inside their .table-wrap); the log tail is shown to its owner and hidden from
anonymous viewers. Screenshots of every page at both sizes land in the test's tmp dir (printed).

SQLite only: the browser adds nothing the database kind could change (the pages' own tests run on both).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra.services.context import Context
from orchestra.web.server import RunningServer, start_in_thread
from tests.e2e.scheduler_helpers import Service, cycles_until, job_states, task_status
from tests.e2e.test_job_actions import create, expand, job_ids, register
from tests.helpers import Cli
from tests.web import browser as harness
from tests.web.browser import SIZES, Browser, browser  # noqa: F401 - browser: a fixture

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FINAL = ("completed", "partial", "broken", "killed")


@pytest.fixture
def ctx(web_env: dict[str, str]) -> Iterator[Context]:
    context = Context.from_env()
    yield context
    context.engine.dispose()


@pytest.fixture
def server(ctx: Context) -> Iterator[RunningServer]:
    running = start_in_thread(ctx)
    yield running
    running.stop()


def wait_until(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@SQLITE_ONLY
def test_a_person_follows_links_to_a_running_job_and_sees_it_succeed_live(
        cli: Cli, storage: Path, ctx: Context, server: RunningServer, browser: Browser) -> None:
    register(cli, storage, 2)
    go = storage / "go"
    create(cli, "w", f"echo started %IN %DATA %OUT; while [ ! -e {go} ]; do sleep 0.05; done; echo finished %IN")
    service = Service()  # `orchestra scheduler run`, real processes on the local backend
    try:
        wait_until(lambda: set(job_states(ctx, "user.alice.w").values()) == {"running"}, "both jobs to run")
        browser.as_user("alice")  # through the trusted proxy (127.0.0.1): alice sees her own logs
        problems: list[str] = []

        browser.open(server.url + "/")
        problems += browser.check_page("overview")
        browser.click_link('a[href="/tasks?user=alice"]')
        problems += browser.check_page("tasks-of-alice")
        browser.click_link('a[href="/tasks/user.alice.w"]')
        assert browser.attribute("task-state", "data-state") == "running"
        problems += browser.check_page("task")
        job_url = browser.click_link('#task-jobs a[href^="/jobs/"]')
        assert browser.attribute("job-state", "data-state") == "running"
        browser.wait(lambda d: "started" in browser.text("log-tail"), "the running job's log in #log-tail")
        problems += browser.check_page("job-running")

        token = browser.mark()
        go.touch()  # the jobs end now, and the page must say so by itself
        browser.wait(lambda d: browser.attribute("job-state", "data-state") == "succeeded",
                     "#job-state to turn succeeded live", timeout=90)
        assert browser.still_marked(token), "the page was reloaded: the state must change in place"
        assert browser.driver.current_url == job_url
        browser.wait(lambda d: "finished" in browser.text("log-tail"), "the log tail to grow live")
        problems += browser.check_page("job-succeeded")
        assert problems == [], "\n".join(problems)
    finally:
        go.touch()
        service.stop()


@SQLITE_ONLY
def test_every_page_loads_cleanly_and_fits_a_phone_and_logs_stay_private(
        cli: Cli, storage: Path, ctx: Context, server: RunningServer, browser: Browser) -> None:
    register(cli, storage, 3)
    create(cli, "done", "echo ok %IN %DATA %OUT")
    create(cli, "bad", "echo oops-this-failed %IN %DATA %OUT; exit 3")
    scheduler = cycles_until(ctx, lambda: all(task_status(ctx, f"user.alice.{t}") in FINAL for t in ("done", "bad")))
    scheduler.lease.release()
    create(cli, "waiting", "echo later %IN %DATA %OUT")
    expand(ctx)  # queued jobs for the queue page; no scheduler runs them
    failed_job = job_ids(cli, "bad")[0]
    pages = {"overview": "/", "queue": "/queue", "queue-jobs": "/queue?jobs=1", "tasks": "/tasks",
             "task-done": "/tasks/user.alice.done", "task-bad": "/tasks/user.alice.bad",
             "job-done": f"/jobs/{job_ids(cli, 'done')[0]}", "job-failed": f"/jobs/{failed_job}", "usage": "/usage"}
    browser.as_user("alice")
    problems: list[str] = []
    for size in SIZES:
        browser.resize(size)
        for name, path in pages.items():
            browser.open(server.url + path)
            assert "<h1" in browser.driver.page_source, f"{path}: no heading"
            problems += browser.check_page(name)
    assert problems == [], "\n".join(problems)
    assert len(browser.shots) == 2 * len(pages)

    browser.resize("desktop")
    browser.open(f"{server.url}/jobs/{failed_job}")
    assert "oops-this-failed" in browser.text("log-tail")
    browser.as_user(None)  # anonymous: the log is somebody else's
    browser.open(f"{server.url}/jobs/{failed_job}")
    assert "oops-this-failed" not in browser.driver.page_source
    assert browser.driver.execute_script("return document.querySelectorAll('#log-tail .hidden-note').length") == 1
    problems = browser.check_page("job-failed-anonymous")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_browser_skips_here_and_fails_in_ci(required: bool, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """Without Chromium the browser tests skip, saying why; with ORCHESTRA_REQUIRE_BROWSER=1 (CI, once
    .ci/browser.sh installed it) they fail instead: a broken install must not pass as a skip."""
    monkeypatch.setattr(harness, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("ORCHESTRA_REQUIRE_BROWSER", "1" if required else "0")
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match="no-chromium is missing: apt-get install chromium chromium-driver"):
        harness.start(tmp_path)
