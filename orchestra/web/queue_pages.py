"""The Queue page (`/queue`) and its JSON twin (`/api/queue`): what `maestro queue` shows.

One function builds both: `services.queue.queue_report` gives the rows, and `cli.tables.queue`
turns them into the very cells `maestro queue` prints (position, priority and its factors rounded
the CLI's way, why it waits); the page lays those cells out as HTML, so a number cannot differ
between the terminal and the browser. `/api/queue` is `maestro queue --json` for the same options.

Cost: the report reads the active tasks and the live attempts, never the queued jobs (one row per
group of a task's pending jobs; `?jobs=1` expands at most `limit` jobs, MAX_LIMIT at most here: the
CLI's `--limit 0`, every pending job, is for a terminal, not for a page). The page then shows
PAGE_ROWS rows of it at a time (`?page=N`).
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from orchestra.cli import jsonout, tables
from orchestra.cli.listing import NUMBER, Listing, shown
from orchestra.errors import OrchestraError
from orchestra.web.app import context_of, json_document
from orchestra.web.params import flag_param, int_param, text_param
from orchestra.web.render import page

PAGE_ROWS = 100  # rows of the report per page
DEFAULT_LIMIT = 50  # `maestro queue --jobs` default
MAX_LIMIT = 200  # job rows one request may ask for (each costs an index probe and a row of HTML)
NARROW = 5  # columns of this CLI priority and less important are hidden on a phone


# ---------------------------------------------------------------------------------------- the data
class QueueQuery:
    """The options of `maestro queue` as the page and the API take them (`?user=&task=&jobs=&limit=`)."""

    def __init__(self, request: Request) -> None:
        self.user = text_param(request, "user")
        self.task = text_param(request, "task")
        self.jobs = flag_param(request, "jobs")
        self.limit = int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)

    def report(self, request: Request) -> Any:
        from orchestra.services.queue import queue_report  # numpy: only when asked

        return queue_report(context_of(request), self.user, self.task, jobs=self.jobs, limit=self.limit)

    def link(self, **changes: Any) -> str:
        """This query's URL with `changes` (None drops a parameter)."""
        from urllib.parse import urlencode

        values = {"user": self.user, "task": self.task, "jobs": "1" if self.jobs else None,
                  "limit": str(self.limit) if self.jobs and self.limit != DEFAULT_LIMIT else None}
        values.update({k: (None if v is None else str(v)) for k, v in changes.items()})
        query = urlencode({k: v for k, v in values.items() if v})
        return f"/queue?{query}" if query else "/queue"


def cells(listing: Listing, index: int) -> dict[str, str]:
    """Row `index` of a listing as the text a terminal table shows in each column."""
    return {name: shown(cell) for name, cell in listing.rows[index].items()}


# ---------------------------------------------------------------------------------------- routes
def queue_page(request: Request) -> Response:
    query = QueueQuery(request)
    number = int_param(request, "page", 1, 1)
    report = query.report(request)
    listing = tables.queue(report, query.jobs, query.limit)
    pages = max(1, -(-len(report.rows) // PAGE_ROWS))
    if number > pages:
        raise OrchestraError(f"page={number} is past the last page ({pages}); use page=1..{pages}")
    first = (number - 1) * PAGE_ROWS
    shown_rows = [(report.rows[i], cells(listing, i)) for i in range(first, min(first + PAGE_ROWS, len(report.rows)))]
    return page(request, "queue.html", query=query, report=report, listing=listing, rows=shown_rows,
                columns=listing.columns, number_kind=NUMBER, narrow=NARROW, page_number=number, pages=pages,
                first=first, total=len(report.rows), max_limit=MAX_LIMIT)


def queue_api(request: Request) -> Response:
    """`maestro queue --json [-u USER] [-t TASK] [--jobs] [--limit N]`."""
    query = QueueQuery(request)
    return json_document(jsonout.plain(query.report(request)))


routes: list[BaseRoute] = [
    Route("/queue", queue_page, name="queue"),
    Route("/api/queue", queue_api, name="api-queue"),
]
