"""The Overview page (`/`), its live stream (`/live/overview`) and the JSON twins of what it shows
(`/api/status` = `orchestra status --json`, `/api/usage` = `maestro usage --json`).

What it shows, and where it comes from (the CLI's own services, so the numbers agree):
- the scheduler's liveness (`services.status.liveness`: heartbeat, last cycle; "stale" loudly);
- slots per queue and the holds (`services.status.status`, as `orchestra status`);
- jobs per state across the cluster: queued and held from the per-task counters `status` reads,
  starting and running from the live attempts, tasks per state (`services.status.activity`): no
  scan of the job rows, which would cost seconds at 1M jobs;
- the users with something running, queued or held, with their share, usage and fair-share factor
  (`services.usage.usage_report`, the cells `maestro usage` prints).

Live: the page's sections are fragments (`_overview_*.html`) that `/live/overview` re-renders every
LIVE_INTERVAL seconds and sends when they change (orchestra/web/live.py). Nothing here is private
(no command, no log): every viewer sees the same page.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from orchestra.cli import jsonout, tables
from orchestra.cli.listing import shown
from orchestra.services.context import Context
from orchestra.services.status import Activity, StatusReport, activity, status
from orchestra.web.app import context_of, json_document
from orchestra.web.live import stream
from orchestra.web.params import text_param
from orchestra.web.render import fragment, page

LIVE_URL = "/live/overview"
LIVE_INTERVAL = 2.0  # seconds between re-renders of an open overview (two small reads each)
# element id -> fragment template: the page's live sections
FRAGMENTS = {
    "ov-scheduler": "_overview_scheduler.html",
    "ov-queues": "_overview_queues.html",
    "ov-jobs": "_overview_jobs.html",
    "ov-holds": "_overview_holds.html",
    "ov-users": "_overview_users.html",
}
TOP_USERS = 50  # users listed (the busiest; `/usage` lists them all): a page, not 1,000 rows per update
USER_COLUMNS = ("share", "usage_h", "fairshare", "running", "queued", "held")  # of `maestro usage`'s cells


@dataclass
class UserLine:
    """A user on the overview: `maestro usage`'s row and its cells as the CLI prints them."""

    user: str
    cells: dict[str, str]


@dataclass
class Overview:
    status: StatusReport
    activity: Activity
    jobs: dict[str, int]  # held, queued, starting, running across the cluster
    users: list[UserLine]  # the TOP_USERS busiest users with running, queued or held jobs
    users_busy: int  # users with running, queued or held jobs
    users_total: int  # every user `maestro usage` lists
    half_life_days: float


def overview(ctx: Context) -> Overview:
    """Everything the overview shows: `orchestra status` + `maestro usage` + `activity`."""
    from orchestra.services.queue import pending_by_user, policy_input  # numpy: only when asked
    from orchestra.services.usage import usage_report

    now = time.time()
    with ctx.transaction() as session:  # one policy input and one pending count for both reports
        view = policy_input(session, ctx.settings, now)
        pending = pending_by_user(session)
    report = status(ctx, now, view=view, pending=pending)
    usage = usage_report(ctx, now=now, view=view, pending=pending)
    act = activity(ctx)
    listing = tables.usage(usage)
    busy = [i for i, r in enumerate(usage.rows) if r.running or r.queued or r.held]
    top = sorted(busy, key=lambda i: (-usage.rows[i].running, -usage.rows[i].queued, -usage.rows[i].held,
                                      usage.rows[i].user))[:TOP_USERS]
    users = [UserLine(usage.rows[i].user, {k: shown(v) for k, v in listing.rows[i].items()}) for i in top]
    jobs = {"held": sum(u.held for u in report.users), "queued": sum(u.queued for u in report.users), **act.live}
    return Overview(report, act, jobs, users, len(busy), len(usage.rows), usage.half_life_days)


def _values(o: Overview) -> dict[str, Any]:
    return {"o": o, "live": o.status.scheduler, "user_columns": USER_COLUMNS}


def fragments(ctx: Context) -> dict[str, str]:
    """The live sections, re-rendered: {element id: inner HTML}."""
    values = _values(overview(ctx))
    return {element: fragment(template, **values) for element, template in FRAGMENTS.items()}


# ---------------------------------------------------------------------------------------- routes
def overview_page(request: Request) -> Response:
    return page(request, "overview.html", fragments=FRAGMENTS, live_url=LIVE_URL, **_values(overview(context_of(request))))


def overview_live(request: Request) -> Response:
    ctx = context_of(request)
    return stream(request, lambda: fragments(ctx), interval=LIVE_INTERVAL)


def status_api(request: Request) -> Response:
    """`orchestra status --json`."""
    return json_document(jsonout.status_report(status(context_of(request))))


def usage_api(request: Request) -> Response:
    """`maestro usage --json [-u USER]`."""
    from orchestra.services.usage import usage_report

    return json_document(jsonout.usage_report(usage_report(context_of(request), text_param(request, "user"))))


routes: list[BaseRoute] = [
    Route("/", overview_page, name="overview"),
    Route(LIVE_URL, overview_live, name="live-overview"),
    Route("/api/status", status_api, name="api-status"),
    Route("/api/usage", usage_api, name="api-usage"),
]
