"""The Usage page (`/usage?hours=6|24|168|720`) and its JSON twin (`/api/usage/history?hours=`):
who used the slots over the last hours or days, and how long the jobs that started waited.

One function builds both (`window`: `services.history.series` over the chosen window); the page
draws it as two server-rendered SVG charts (orchestra/web/charts.py: running slots per user,
stacked; mean queue wait, overall and per user) and a table of per-user totals, the API returns the
same numbers as JSON (docs/json.md, `GET /api/usage/history`). Nothing here is private: usage is
everyone's to see, as `maestro usage` shows it.

Cost: one aggregate query over the window's rollup rows (at most `BUCKETS` per active user, at
the width the window reads: 5 min for 6 hours ... 6 h for 30 days), independent of the number of
jobs and of the record interval; see services/history.py.
"""
from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from orchestra.cli.jsonout import iso, plain
from orchestra.errors import OrchestraError
from orchestra.services.history import OTHERS, Series, series
from orchestra.web import charts
from orchestra.web.app import context_of, json_document
from orchestra.web.render import page

WINDOWS = {6: "6 hours", 24: "24 hours", 168: "7 days", 720: "30 days"}  # ?hours= -> its label
DEFAULT_HOURS = 24
BUCKETS = 120  # points per chart at most (6 h: 72 of 5 min, 24 h: 96 of 15 min, 7 d: 84 of 2 h, 30 d: 120 of 6 h)
TOP = 8  # users drawn on their own; the rest are "others"


def hours_param(request: Request) -> int:
    """`?hours=`: one of WINDOWS, or a one-line refusal naming them."""
    raw = request.query_params.get("hours", "").strip()
    if not raw:
        return DEFAULT_HOURS
    if not raw.isdigit() or int(raw) not in WINDOWS:
        choices = ", ".join(str(h) for h in WINDOWS)
        raise OrchestraError(f"hours={raw!r} is not a window the usage history offers; use one of {choices} "
                             f"(e.g. hours={DEFAULT_HOURS})")
    return int(raw)


def window(request: Request, hours: int, now: float | None = None) -> Series:
    """The usage series of the last `hours` (what the page draws and the API returns); a bucket
    narrower than the scheduler's interval between records holds the slots of the one before."""
    until = time.time() if now is None else now
    ctx = context_of(request)
    with ctx.transaction() as session:
        return series(session, until - hours * 3600.0, until, buckets=BUCKETS, top=TOP,
                      hold=ctx.settings.scheduler.interval)


def document(s: Series) -> dict[str, Any]:
    """The JSON document of a series (docs/json.md): times in ISO 8601 UTC."""
    return {
        "since_at": iso(s.since_at),
        "until_at": iso(s.until_at),
        "bucket_seconds": s.bucket_seconds,
        "records": s.records,
        "users": list(s.users),
        "points": [{"at": iso(p.at), "running": dict(p.running), "wait_seconds": p.wait_seconds,
                    "user_wait_seconds": dict(p.user_wait_seconds)} for p in s.points],
        "totals": [plain(t) for t in s.totals],
    }


def _charts(s: Series, hours: int) -> tuple[Any, Any]:
    x0 = s.points[0].at if s.points else s.since_at
    x1 = s.points[-1].at + s.bucket_seconds if s.points else s.until_at
    label = WINDOWS[hours]
    if not s.records:
        return (charts.empty(f"Running slots per user, last {label}", x0, x1, "slots"),
                charts.empty(f"Mean queue wait, last {label}", x0, x1, "seconds"))
    times = [p.at + s.bucket_seconds / 2 for p in s.points]
    running = charts.stacked_area(times, [(u, [p.running.get(u, 0.0) for p in s.points]) for u in s.users],
                                  x0=x0, x1=x1, label=f"Running slots per user, last {label}", unit="slots",
                                  others=OTHERS)
    waits = [("all users", [p.wait_seconds for p in s.points])]
    waits += [(u, [p.user_wait_seconds.get(u) for p in s.points]) for u in s.users]
    wait = charts.lines(times, waits, x0=x0, x1=x1, label=f"Mean queue wait, last {label}", unit="seconds",
                        others=OTHERS)
    return running, wait


def usage_page(request: Request) -> Response:
    hours = hours_param(request)
    s = window(request, hours)
    running_chart, wait_chart = _charts(s, hours)
    return page(request, "usage.html", hours=hours, windows=WINDOWS, series=s, running_chart=running_chart,
                wait_chart=wait_chart)


def usage_history_api(request: Request) -> Response:
    """The usage history of the last `hours` as JSON."""
    return json_document(document(window(request, hours_param(request))))


routes: list[BaseRoute] = [
    Route("/usage", usage_page, name="usage"),
    Route("/api/usage/history", usage_history_api, name="api-usage-history"),
]
