"""The Tasks pages: `/tasks` (every task, paged and filtered in SQL) and `/tasks/{ref}` (one task:
settings, job states, scouts, failures, dependencies, its jobs paged), with their /api/ twins and
the live stream of a task's state, counts and jobs (`/live/tasks/{id}`).

Every number comes from the functions `maestro task list|show` and `maestro job list` call, and the
JSON is built by the same converters as their `--json`, so the page, the API and the CLI agree.
What is private (the command, failure log tails, the command in the edit history) is shown only
when `viewer.sees_private(owner)`; elsewhere it is a note on the page and null in the JSON.
"""
from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from orchestra.cli import jsonout
from orchestra.errors import NotFound
from orchestra.services import dependencies, jobs, task_notes, tasks
from orchestra.states import JobStatus, TaskStatus
from orchestra.web.app import context_of, json_document
from orchestra.web.params import page_number, state_filter, user_filter
from orchestra.web.live import stream
from orchestra.web.render import fragment, page
from orchestra.web.viewer import hidden_note

TASKS_PER_PAGE = 50
JOBS_PER_PAGE = 200  # `maestro job list`'s default --limit: page 1 of the API is exactly its output
FAILURES_SHOWN = 5  # `maestro task show`'s default --limit
JOB_STATES = [s.value for s in JobStatus]
TASK_STATES = [s.value for s in TaskStatus]
# The progress bar's segments, ended first (left), then live, then pending.
BAR_ORDER = ("succeeded", "failed", "killed", "running", "starting", "queued", "held")


def pages(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))


def bar(counts: dict[str, int]) -> list[tuple[str, int]]:
    """The progress bar's (state, count) segments, non-empty ones, in BAR_ORDER (their widths:
    count / the task's jobs, in the template)."""
    return [(s, counts.get(s, 0)) for s in BAR_ORDER if counts.get(s, 0)]


# ---------------------------------------------------------------- /tasks

def tasks_list(request: Request) -> Response:
    number, user = page_number(request), user_filter(request)
    state = state_filter(request, TASK_STATES)
    found = tasks.task_page(context_of(request), user, state, limit=TASKS_PER_PAGE,
                            offset=(number - 1) * TASKS_PER_PAGE, newest_first=True)
    return page(request, "tasks.html", rows=found.rows, total=found.total, page=number,
                pages=pages(found.total, TASKS_PER_PAGE), user=user or "", state=state or "",
                states=TASK_STATES, bar=bar, query=_query(user=user, state=state))


def api_tasks(request: Request) -> Response:
    """`maestro task list --json` (with ?page=: that page of it, TASKS_PER_PAGE tasks)."""
    user, state = user_filter(request), state_filter(request, TASK_STATES)
    ctx = context_of(request)
    if "page" in request.query_params:
        number = page_number(request)
        rows = tasks.task_page(ctx, user, state, limit=TASKS_PER_PAGE, offset=(number - 1) * TASKS_PER_PAGE).rows
    else:
        rows = tasks.list_tasks(ctx, user, state)
    return json_document([jsonout.task_summary(r) for r in rows])


def _query(**values: str | None) -> str:
    """The filters as a query string prefix for the pager's links (`user=a&state=b&`)."""
    from urllib.parse import urlencode

    kept = {k: v for k, v in values.items() if v}
    return urlencode(kept) + "&" if kept else ""


# ---------------------------------------------------------------- /tasks/{ref}

def task_document(request: Request, ref: str) -> tuple[tasks.TaskDetail, task_notes.TaskNotes, dict[str, Any]]:
    """`maestro task show --json` for `ref`, with its private fields null unless the viewer may
    read them; also the detail and notes it was built from (for the page)."""
    ctx = context_of(request)
    detail = tasks.show(ctx, ref, failures=FAILURES_SHOWN)
    notes = task_notes.notes(ctx, detail.summary.id)
    data = {**jsonout.task_detail(detail), **jsonout.plain(notes.as_json())}
    if not request.state.viewer.sees_private(detail.summary.owner):
        data["command"] = None
        for failure in data["failed"]:
            failure["log_tail"] = None
        for event in data["history"]:
            if "command" in (event.get("changes") or {}):
                event["changes"]["command"] = {"from": None, "to": None}
    return detail, notes, data


def _jobs_page(request: Request, task_id: int, counts: dict[str, int]) -> dict[str, Any]:
    """The values of the jobs table (`_task_jobs.html`): one page of the task's jobs, in SQL."""
    number, state = page_number(request), state_filter(request, JOB_STATES)
    total = counts.get(state, 0) if state else sum(counts.values())
    found = jobs.job_page(context_of(request), str(task_id), state, JOBS_PER_PAGE, (number - 1) * JOBS_PER_PAGE,
                          count=False)
    return dict(job_rows=found.rows, job_total=total, job_page=number, job_pages=pages(total, JOBS_PER_PAGE),
                job_state=state or "", job_states=JOB_STATES, task_id=task_id)


def task_page(request: Request) -> Response:
    ref = request.path_params["ref"]
    detail, notes, _ = task_document(request, ref)
    s = detail.summary
    ctx = context_of(request)
    with ctx.transaction() as session:
        waited_by = dependencies.dependents(session, s.id)
    return page(request, "task.html", d=detail, s=s, notes=notes, scouts=tasks.scouts(ctx, s.id),
                waited_by=waited_by, private=request.state.viewer.sees_private(s.owner), hidden=hidden_note(s.owner),
                bar=bar, states=JOB_STATES, live=_live_url(request, s.id), **_jobs_page(request, s.id, s.counts))


def _live_url(request: Request, task_id: int) -> str:
    query = request.url.query
    return f"/live/tasks/{task_id}" + (f"?{query}" if query else "")


def api_task(request: Request) -> Response:
    """`maestro task show --json` (command and log tails null when hidden)."""
    return json_document(task_document(request, request.path_params["ref"])[2])


def api_task_jobs(request: Request) -> Response:
    """`maestro job list -t REF --json` (?page=N: the N-th JOBS_PER_PAGE of it; ?state=: --status)."""
    number, state = page_number(request), state_filter(request, JOB_STATES)
    found = jobs.job_page(context_of(request), request.path_params["ref"], state, JOBS_PER_PAGE,
                          (number - 1) * JOBS_PER_PAGE)
    return json_document(jsonout.jobs(found.rows))


def task_fragments(request: Request, task_id: int) -> dict[str, str]:
    """The live parts of a task's page: its state badge, counts and bar, and its jobs table."""
    try:
        summary = tasks.summary(context_of(request), str(task_id))
    except NotFound:
        return {"task-state-slot": '<span class="state" id="task-state" data-state="deleted">deleted</span>'}
    return {
        "task-state-slot": fragment("_task_state.html", s=summary),
        "task-counts": fragment("_task_counts.html", s=summary, bar=bar),
        "task-jobs": fragment("_task_jobs.html", **_jobs_page(request, task_id, summary.counts)),
    }


def task_live(request: Request) -> Response:
    raw = request.path_params["task_id"]
    if not raw.isdigit():
        raise NotFound(f"task {raw!r} does not exist; live updates take a task's numeric id")
    task_id = int(raw)
    page_number(request), state_filter(request, JOB_STATES)  # refused now, not inside the stream
    return stream(request, lambda: task_fragments(request, task_id))


routes: list[BaseRoute] = [
    Route("/tasks", tasks_list),
    Route("/tasks/{ref}", task_page),
    Route("/live/tasks/{task_id}", task_live),
    Route("/api/tasks", api_tasks),
    Route("/api/tasks/{ref}", api_task),
    Route("/api/tasks/{ref}/jobs", api_task_jobs),
]
