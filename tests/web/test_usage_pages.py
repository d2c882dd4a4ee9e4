"""The Usage page (`/usage?hours=`) and `/api/usage/history` over a real server, on SQLite and
PostgreSQL: window links, both charts (or "no data yet"), the per-user totals, the JSON document
as docs/json.md describes it and as the history service computes it, and a bad window refused in
one line. Nothing on these routes is private: every viewer gets the same numbers."""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from orchestra.db.models import UsageHistory
from orchestra.services import history
from orchestra.services.context import Context
from orchestra.web.usage_pages import document
from tests.db.test_json_schema import CHECKS, DOC, covers, printed_paths, resolve
from tests.web.conftest import WebClient

SVG = "{http://www.w3.org/2000/svg}"


def record(ctx: Context, at: float, users: dict[str, tuple[float, int, int, float]]) -> None:
    """One record at `at`: user -> (running, queued, started, wait sum), and the totals row."""
    with ctx.transaction() as session:
        ids = {name: ctx.user_id(session, name) for name in users}
        rows: list[dict[str, Any]] = [
            {"at": at, "user_id": ids[name], "running": r, "queued": q, "started": s, "wait_seconds_sum": w,
             "max_wait_seconds": w / s if s else 0.0} for name, (r, q, s, w) in users.items()]
        rows.append({"at": at, "user_id": None, "running": sum(v[0] for v in users.values()),
                     "queued": sum(v[1] for v in users.values()), "started": sum(v[2] for v in users.values()),
                     "wait_seconds_sum": sum(v[3] for v in users.values()), "max_wait_seconds": 0.0})
        session.execute(insert(UsageHistory), rows)
        history.roll_up(session, rows)  # as the recorder does


@pytest.fixture
def recorded(web_env: dict[str, str]) -> Context:
    """Two records an hour and half an hour ago: alice runs 4 then 2, bob 1; alice started 2 jobs
    that waited 30 s each, bob one of 90 s."""
    ctx = Context.from_env()
    now = time.time()
    record(ctx, now - 3600, {"alice": (4.0, 6, 2, 60.0), "bob": (1.0, 0, 0, 0.0)})
    record(ctx, now - 1800, {"alice": (2.0, 3, 0, 0.0), "bob": (1.0, 1, 1, 90.0)})
    return ctx


def svg_of(html: str, element_id: str) -> ET.Element:
    match = re.search(rf'<div id="{element_id}"[^>]*>(<svg.*?</svg>)</div>', html, re.S)
    assert match, f"no chart in #{element_id}"
    return ET.fromstring(match.group(1))


def documented_api() -> list[tuple[str, str]]:
    """The field table of docs/json.md's `GET /api/usage/history` section."""
    text = DOC.read_text().split("## `GET /api/usage/history`", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2).replace("\\|", "|").strip())
            for m in re.finditer(r"^\| `([^`]+)` \| ([^|]+?(?:\\\|[^|]+?)*) \|", text, re.M)]


def test_an_empty_history_says_no_data_yet(web: WebClient) -> None:
    page = web.get("/usage")
    assert page.status_code == 200
    for chart in ("usage-running-chart", "usage-wait-chart"):
        root = svg_of(page.text, chart)
        assert root.get("viewBox", "").startswith("0 0 720 ") and root.get("class") == "chart"
        assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "empty"] == ["no data yet"]
    assert 'id="usage-totals-empty"' in page.text
    api = web.json("/api/usage/history")
    assert isinstance(api, dict) and api["records"] == 0 and api["users"] == [] and len(api["points"]) in (96, 97)


def test_the_page_draws_both_charts_and_the_totals(web: WebClient, recorded: Context) -> None:
    page = web.get("/usage?hours=6")
    assert page.status_code == 200
    window = re.search(r'<nav class="pager" id="usage-window".*?</nav>', page.text, re.S)
    assert window and '<strong data-hours="6" aria-current="true">6 hours</strong>' in window.group(0)
    assert all(f'href="/usage?hours={h}"' in window.group(0) for h in (24, 168, 720))
    running = svg_of(page.text, "usage-running-chart")
    assert [p.get("data-series") for p in running.iter(f"{SVG}path")] == ["alice", "bob"]
    assert "alice" in [g.get("data-series") for g in running.iter(f"{SVG}g")]  # the legend
    wait = svg_of(page.text, "usage-wait-chart")
    assert [g.get("data-series") for g in wait.iter(f"{SVG}g") if g.get("class") == "line"][0] == "all users"
    table = re.search(r'<div class="table-wrap">\s*<table id="usage-totals">.*?</table>', page.text, re.S)
    assert table and 'class="num hide-narrow"' in table.group(0)  # a phone drops the less important columns
    rows = re.findall(r'<tr data-user="([^"]+)">(.*?)</tr>', table.group(0), re.S)
    assert [u for u, _ in rows] == ["alice", "bob"]
    alice = re.findall(r"<td[^>]*>([^<]*)</td>", rows[0][1])
    assert alice == ["alice", "3.0", "4", "6", "2", "30s", "30s"]


def test_the_api_is_the_documented_document_of_the_same_series(web: WebClient, recorded: Context) -> None:
    api = web.json("/api/usage/history?hours=24")
    assert isinstance(api, dict)
    fields = documented_api()
    for path, kind in fields:
        values = resolve(api, path)
        assert values is not None, f"{path} is documented but not printed"
        nullable = kind.endswith("|null")
        for where, value in values:
            assert (value is None and nullable) or (value is not None and CHECKS[kind.removesuffix("|null")](value)), \
                f"{where} = {value!r} is not {kind}"
    assert not [p for p in printed_paths(api) if not any(covers(pattern, p) for pattern, _ in fields)]
    with recorded.transaction() as session:  # the same query in this process: the same numbers
        until = time.time()
        mine = document(history.series(session, until - 24 * 3600, until, buckets=120, top=8))
    assert api["users"] == mine["users"] == ["alice", "bob"]
    assert api["totals"] == mine["totals"] and api["bucket_seconds"] == mine["bucket_seconds"] == 900  # 15 min
    assert api["records"] == 2
    busy = [p for p in api["points"] if p["wait_seconds"] is not None]
    assert [p["wait_seconds"] for p in busy] == [30.0, 90.0]
    assert [p["running"] for p in busy] == [{"alice": 4.0, "bob": 1.0}, {"alice": 2.0, "bob": 1.0}]
    assert busy[1]["user_wait_seconds"] == {"alice": None, "bob": 90.0}
    assert api["since_at"].endswith("+00:00") and api["points"][0]["at"].endswith("+00:00")


@pytest.mark.parametrize("bad", ["5", "abc", "-6", "24.0", "100000000000000000000"])
def test_a_bad_window_is_a_one_line_400(web: WebClient, bad: str) -> None:
    page = web.get(f"/usage?hours={bad}")
    assert page.status_code == 400 and "Traceback" not in page.text
    message = re.search(r'<p class="error" id="error-message">(.*?)</p>', page.text, re.S)
    assert message and "\n" not in message.group(1) and "use one of 6, 24, 168, 720" in message.group(1)
    api = web.get(f"/api/usage/history?hours={bad}")
    assert api.status_code == 400
    assert api.json() == {"error": f"hours={bad!r} is not a window the usage history offers; use one of "
                                   "6, 24, 168, 720 (e.g. hours=24)"}


def test_every_viewer_sees_the_same_usage(web: WebClient, recorded: Context, tmp_path: Path) -> None:
    """Usage is not private (as `maestro usage`): anonymous, a user through the proxy and the
    header from an untrusted address get the same numbers."""
    def table(response: Any) -> str:
        found = re.search(r'<table id="usage-totals">.*?</table>', response.text, re.S)
        assert response.status_code == 200 and found
        return found.group(0)

    assert table(web.get("/usage")) == table(web.get("/usage", "bob")) == table(web.get("/usage", "alice", trusted=False))
