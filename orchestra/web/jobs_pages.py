"""The Job page: `/jobs/{id}` (its task, state, every attempt, why it is pending, and a live tail
of its log), the live stream of those parts (`/live/jobs/{id}`), and the API twins
`/api/jobs/{id}` (= `maestro job show --json`) and `/api/jobs/{id}/log?lines=`.

The command (the job's exec line) and its log are private: shown only when the viewer
`sees_private(owner)`; otherwise a note on the page, null in the JSON, and a 403 for the log.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from orchestra.cli import views_jobs
from orchestra.errors import NotFound, OrchestraError, PermissionDenied
from orchestra.services import job_actions, jobs
from orchestra.states import JobStatus
from orchestra.web.app import context_of, json_document
from orchestra.web.live import stream
from orchestra.web.render import fragment, page
from orchestra.web.viewer import hidden_note

TAIL_LINES = 200  # the page's log tail
MAX_LINES = 10_000  # the most /api/jobs/{id}/log gives at once
PENDING = (JobStatus.HELD.value, JobStatus.QUEUED.value)


def job_id_of(request: Request) -> int:
    """The `{job_id}` of the path; not a number: no such job (404, one line)."""
    raw = request.path_params["job_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"job {raw!r} does not exist; job ids are numbers (a task's page lists them)")
    return int(raw)


def why(request: Request, detail: job_actions.JobDetail) -> str | None:
    """Why a pending job waits (`maestro job why`): None unless it is held or queued."""
    if detail.status not in PENDING:
        return None
    from orchestra.services import queue  # numpy and the fair-share policy: only when needed

    return queue.explain_job(context_of(request), detail.id).reason


def _tail(request: Request, detail: job_actions.JobDetail) -> jobs.LogTail | None:
    """The log's tail when the viewer may read it (None: hidden)."""
    if not request.state.viewer.sees_private(detail.owner):
        return None
    return jobs.log_tail(context_of(request), detail.id, TAIL_LINES)


def _values(request: Request, detail: job_actions.JobDetail) -> dict[str, Any]:
    return dict(j=detail, why=why(request, detail), tail=_tail(request, detail), hidden=hidden_note(detail.owner),
                private=request.state.viewer.sees_private(detail.owner))


def job_page(request: Request) -> Response:
    detail = job_actions.show(context_of(request), job_id_of(request))
    return page(request, "job.html", **_values(request, detail))


def job_fragments(request: Request, job_id: int) -> dict[str, str]:
    """The live parts of a job's page: state, why, attempts, log tail."""
    try:
        detail = job_actions.show(context_of(request), job_id)
    except NotFound:
        return {"job-state-slot": '<span class="state" id="job-state" data-state="deleted">deleted</span>'}
    values = _values(request, detail)
    return {
        "job-state-slot": fragment("_job_state.html", **values),
        "job-why": fragment("_job_why.html", **values),
        "attempts": fragment("_job_attempts.html", **values),
        "log-tail": fragment("_job_log.html", **values),
    }


def job_live(request: Request) -> Response:
    job_id = job_id_of(request)
    job_actions.show(context_of(request), job_id)  # an unknown job: 404 now, not an empty stream
    return stream(request, lambda: job_fragments(request, job_id))


def api_job(request: Request) -> Response:
    """`maestro job show --json` (the command null when hidden)."""
    detail = job_actions.show(context_of(request), job_id_of(request))
    data = views_jobs.job_json(detail)
    if not request.state.viewer.sees_private(detail.owner):
        data["command"] = None
    return json_document(data)


def _lines(request: Request) -> int:
    raw = request.query_params.get("lines", str(TAIL_LINES)).strip()
    if not raw.isdigit() or int(raw) > MAX_LINES:
        raise OrchestraError(f"lines {raw!r} is not a line count; use ?lines=0 to {MAX_LINES}")
    return int(raw)


def api_job_log(request: Request) -> Response:
    """{"job_id", "attempt", "lines"}: the last `?lines=` lines (default 200) of the latest
    attempt's log; 403 when the viewer may not read it."""
    lines = _lines(request)
    detail = job_actions.show(context_of(request), job_id_of(request))
    if not request.state.viewer.sees_private(detail.owner):
        raise PermissionDenied(f"the log of job {detail.id} is private; {hidden_note(detail.owner)}")
    tail = jobs.log_tail(context_of(request), detail.id, lines)
    return json_document({"job_id": tail.job_id, "attempt": tail.attempt, "lines": tail.lines})


routes: list[BaseRoute] = [
    Route("/jobs/{job_id}", job_page),
    Route("/live/jobs/{job_id}", job_live),
    Route("/api/jobs/{job_id}", api_job),
    Route("/api/jobs/{job_id}/log", api_job_log),
]
