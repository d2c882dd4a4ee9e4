"""The Queue page (`/queue`) and `/api/queue` on SQLite and PostgreSQL, over a world made by real
scheduler cycles (tests/db/listing_world.py): the page shows exactly the cells `maestro queue`
prints, the API is exactly `maestro queue --json`, filters narrow both, bad input is a one-line 4xx.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import time
from html.parser import HTMLParser
from typing import Any

import pytest

from orchestra.config import load_settings
from orchestra.web import queue_pages
from tests.db.listing_world import World, listing_world  # noqa: F401  (the fixture)
from tests.helpers import Cli
from tests.web.conftest import WebClient

TIME_KEYS = {"now", "heartbeat_age_seconds"}  # they differ between two reports made moments apart


# ---------------------------------------------------------------------------------------- helpers
class _Tables(HTMLParser):
    """Every <table id=...> of a page as rows of cell texts (whitespace folded), header row first."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(text: str, element_id: str) -> list[list[str]]:
    """The rows of the table with this id (header first), as a person reads them."""
    parser = _Tables()
    parser.feed(text)
    assert element_id in parser.tables, f"no table #{element_id} in the page"
    return parser.tables[element_id]


def tsv(out: str) -> list[list[str]]:
    """The CLI's piped output (header, then rows) as cells."""
    return [line.split("\t") for line in out.splitlines() if line]


def same(a: Any, b: Any, path: str = "", drift: float = 0.0) -> None:
    """Two JSON documents made moments apart are the same: equal, but for `now` (and ages) and
    floats that drift with time (decayed usage, age factors) by a millionth, or by `drift` more
    (what a factor can grow in the time between the two, see `age_drift`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            if key not in TIME_KEYS:
                same(a[key], b[key], f"{path}.{key}", drift)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]", drift)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3 + drift), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def age_drift(seconds: float) -> float:
    """How much a task's weighted age factor (and so its total) grows in `seconds`: weight_age
    over age_max, per second (1000 / 7 days: 0.0017 a second). Two reports made a CLI start-up
    apart on a busy machine differ by that much, which a fixed tolerance cannot bound."""
    fair = load_settings(dict(os.environ)).fairshare
    return fair.weight_age * seconds / (fair.age_max_days * 86400)


def one_line_error(response: Any, status: int, *words: str) -> None:
    """A refusal: the status, one line naming the problem, no traceback."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    if "application/json" in response.headers["content-type"]:
        message = response.json()["error"]
    else:
        found = re.search(r'<p class="error" id="error-message">(.*?)</p>', response.text, re.S)
        assert found, response.text[:500]
        message = html.unescape(found.group(1))
    assert "\n" not in message.strip() and "Traceback" not in response.text, message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------------------------------- the page
@pytest.mark.parametrize("query, args", [
    ("", ""),
    ("?user=alice", "-u alice"),
    ("?task=user.alice.busy", "-t user.alice.busy"),
    ("?jobs=1&limit=3", "--jobs --limit 3"),
    ("?jobs=1", "--jobs"),
])
def test_the_page_shows_the_cells_maestro_queue_prints(web: WebClient, listing_world: World, cli: Cli,
                                                      query: str, args: str) -> None:
    response = web.get(f"/queue{query}")
    assert response.status_code == 200, response.text[:500]
    printed = tsv(cli.ok(f"maestro queue {args}").out)
    assert len(printed) > 1, "the world has pending work"
    assert table(response.text, "queue-table") == printed


def test_rows_link_to_their_task_and_user_and_show_their_state(web: WebClient, listing_world: World) -> None:
    page = web.get("/queue").text
    assert 'href="/tasks/user.alice.busy"' in page and 'href="/queue?user=alice"' in page
    assert 'data-task="user.alice.busy" data-state="queued"' in page
    assert 'class="state state-queued" data-state="queued"' in page
    assert '<form class="filters" method="get" action="/queue">' in page
    assert '<div class="table-wrap">' in page and "hide-narrow" in page
    card = re.search(r'id="slots-LPS-cpu".*?<span class="slots-used">(\d+)</span> of <span class="slots-total">(\d+)',
                     page, re.S)
    assert card and card.groups() == ("4", "4")


def test_the_queue_never_shows_a_command(web: WebClient, listing_world: World) -> None:
    """Nothing on the queue is private, and commands (the exec line) stay off it for everyone."""
    for user, trusted in ((None, True), ("bob", True), ("alice", False), ("alice", True)):
        page = web.get("/queue?jobs=1", user, trusted=trusted).text
        assert "run %DATA" not in page and "%OUT" not in page


def test_a_long_queue_is_paged_on_the_server(web: WebClient, listing_world: World, cli: Cli,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_pages, "PAGE_ROWS", 2)
    printed = tsv(cli.ok("maestro queue --jobs --limit 3").out)
    assert len(printed) == 4  # header + 3 job rows: two pages of two
    first = web.get("/queue?jobs=1&limit=3")
    assert table(first.text, "queue-table") == printed[:3]
    assert 'href="/queue?jobs=1&amp;limit=3&amp;page=2"' in first.text
    last = web.get("/queue?jobs=1&limit=3&page=2")
    assert table(last.text, "queue-table") == [printed[0], printed[3]]
    one_line_error(web.get("/queue?jobs=1&limit=3&page=3"), 400, "page=3", "page=1..2")


def test_an_empty_queue_says_so(web: WebClient) -> None:
    page = web.get("/queue").text
    assert 'id="queue-empty"' in page and "no pending jobs" in page


# ---------------------------------------------------------------------------------------- the API
@pytest.mark.parametrize("query, args", [
    ("", ""),
    ("?user=alice", "-u alice"),
    ("?task=user.alice.busy&jobs=1&limit=2", "-t user.alice.busy --jobs --limit 2"),
    ("?jobs=true", "--jobs"),
])
def test_the_api_is_maestro_queue_json(web: WebClient, listing_world: World, cli: Cli, query: str, args: str) -> None:
    started = time.monotonic()
    api = web.json(f"/api/queue{query}")
    printed = json.loads(cli.ok(f"maestro queue --json {args}").out)
    same(api, printed, drift=age_drift(time.monotonic() - started))
    assert api["rows"], "the world has pending work"


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("query, status, words", [
    ("?user=nobody", 404, ("user 'nobody' is unknown", "maestro usage")),
    ("?task=user.alice.nothing", 404, ("task 'user.alice.nothing' does not exist",)),
    ("?task=99999999999999999999999", 404, ("does not exist",)),
    ("?jobs=maybe", 400, ("jobs='maybe'", "jobs=1")),
    ("?jobs=1&limit=0", 400, ("limit='0'", "1..200")),
    ("?jobs=1&limit=lots", 400, ("limit='lots'",)),
    ("?page=0", 400, ("page='0'",)),
    ("?page=two", 400, ("page='two'",)),
])
def test_bad_input_is_a_one_line_4xx(web: WebClient, query: str, status: int, words: tuple[str, ...]) -> None:
    one_line_error(web.get(f"/queue{query}"), status, *words)
    if "page=" not in query:
        one_line_error(web.get(f"/api/queue{query}"), status, *words)
