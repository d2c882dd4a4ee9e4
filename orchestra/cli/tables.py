"""The listings of every command (columns, priorities, cells): what `listing.emit` lays out.

Column names are the words of `--format`, the TSV header and, for job counts, the state names of
the JSON (`counts.succeeded` is the `succeeded` column): one vocabulary. Priorities decide what an
80-column terminal drops first (1: never).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestra.cli.common import duration, size
from orchestra.cli.jsonout import iso
from orchestra.cli.listing import BAR, FIXED, NAME, NUMBER, TEXT, Bar, Cell, Column, Listing, Styled, shown_note
from orchestra.states import JobStatus

if TYPE_CHECKING:
    from orchestra.services.datasets import DatasetInfo
    from orchestra.services.jobs import JobPage
    from orchestra.services.queue import QueueReport
    from orchestra.services.tasks import TaskSummary
    from orchestra.services.usage import UsageReport

STATUS_STYLE = {
    "registered": "cyan", "scouting": "yellow", "running": "blue", "completed": "green",
    "partial": "magenta", "broken": "red", "killed": "red", "succeeded": "green", "failed": "red",
    "queued": "cyan", "held": "dim", "starting": "yellow",
}


def state(status: str) -> Styled:
    return Styled(status, STATUS_STYLE.get(status, ""))


def moment(ts: float | None) -> Cell:
    """A time: short and local in a table (16 cells, never cut), ISO 8601 in UTC when piped."""
    if not ts:
        return "-"
    return Styled(time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)), tsv=iso(ts))


# ------------------------------------------------------------------------------------- tasks
STATES = [s.value for s in JobStatus]  # held, queued, starting, running, succeeded, failed, killed
_STATE_PRIORITY = {"held": 5, "queued": 2, "starting": 7, "running": 2, "succeeded": 2, "failed": 2, "killed": 3}

TASK_COLUMNS = [
    Column("id", 1, NUMBER), Column("task", 1, NAME, fold=16), Column("user", 4, NAME, fold=8),
    Column("queue", 6, FIXED), Column("cluster", 8, FIXED, default=False),
    *(Column(s, _STATE_PRIORITY[s], NUMBER, zeros_drop=True) for s in STATES),
    Column("jobs", 6, NUMBER, default=False), Column("progress", 2, BAR), Column("status", 1, FIXED),
    Column("priority", 8, NUMBER, default=False), Column("created", 8, FIXED, default=False),
    Column("reason", 9, TEXT, default=False, fold=20),
]
PROGRESS_LEGEND = "progress: jobs ended of all (█ succeeded, ▒ failed or killed, ░ not ended)"


def progress(counts: dict[str, int], total: int) -> Bar:
    """Ended of all: succeeded filled, failed and killed shaded; a killed task never looks complete."""
    ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "killed"))
    bad = counts.get("failed", 0) + counts.get("killed", 0)
    return Bar(((counts.get("succeeded", 0), "█", "green"), (bad, "▒", "red")), total, f"{ended}/{total}")


def tasks(rows: Sequence[TaskSummary]) -> Listing:
    out: list[dict[str, Cell]] = []
    for r in rows:
        row: dict[str, Cell] = {
            "id": str(r.id), "task": r.name, "user": r.owner, "queue": r.queue, "cluster": r.cluster,
            **{s: str(r.counts.get(s, 0)) for s in STATES},
            "jobs": str(r.n_jobs), "progress": progress(r.counts, r.n_jobs), "status": state(r.status),
            "priority": str(r.priority), "created": moment(r.created_at), "reason": r.reason or "",
        }
        out.append(row)
    return Listing(TASK_COLUMNS, out, empty="no tasks", legend=PROGRESS_LEGEND)


# ------------------------------------------------------------------------------------- jobs
JOB_COLUMNS = [
    Column("id", 1, NUMBER), Column("index", 3, NUMBER), Column("scout", 6, FIXED), Column("status", 1, FIXED),
    Column("attempts", 4, NUMBER), Column("exit", 2, NUMBER), Column("host", 7, NAME, fold=8),
    Column("started", 5, FIXED), Column("ended", 8, FIXED, default=False), Column("runtime", 3, FIXED),
    Column("reason", 2, TEXT, fold=20), Column("log", 9, TEXT, default=False, fold=20),
]


def jobs(page: JobPage) -> Listing:
    out: list[dict[str, Cell]] = [{
        "id": str(r.id), "index": str(r.index), "scout": "yes" if r.is_scout else "", "status": state(r.status),
        "attempts": str(r.attempts), "exit": "" if r.exit_code is None else str(r.exit_code), "host": r.host or "",
        "started": moment(r.started_at), "ended": moment(r.ended_at), "runtime": duration(r.runtime),
        "reason": r.reason or "", "log": r.log_path or "",
    } for r in page.rows]
    return Listing(JOB_COLUMNS, out, empty="no jobs", notes=shown_note(len(page.rows), page.total))


# ------------------------------------------------------------------------------------- datasets
DATASET_COLUMNS = [
    Column("id", 1, NUMBER), Column("dataset", 1, NAME, fold=16), Column("owner", 3, NAME, fold=8),
    Column("cluster", 5, FIXED), Column("kind", 4, FIXED), Column("files", 2, NUMBER), Column("size", 2, FIXED),
    Column("path", 3, TEXT, fold=16), Column("created", 6, FIXED, default=False),
]


def datasets(rows: Sequence[DatasetInfo]) -> Listing:
    out: list[dict[str, Cell]] = [{
        "id": str(r.id), "dataset": r.name, "owner": r.owner, "cluster": r.cluster,
        "kind": "dir" if r.is_dir else "file", "files": str(r.n_files), "size": size(r.total_size), "path": r.path,
        "created": moment(r.created_at),
    } for r in rows]
    return Listing(DATASET_COLUMNS, out, empty="no datasets")


FILE_COLUMNS = [Column("size", 1, FIXED), Column("bytes", 3, NUMBER, default=False), Column("path", 1, TEXT, fold=20)]


def files(rows: Sequence[tuple[str, int]], total: int, name: str) -> Listing:
    out: list[dict[str, Cell]] = [{"size": size(n), "bytes": str(n), "path": p} for p, n in rows]
    return Listing(FILE_COLUMNS, out, empty="no files",
                   notes=shown_note(len(rows), total, f"maestro dataset show -d {name} --limit 0 for all"))


# ------------------------------------------------------------------------------------- the queue
def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def queue(report: QueueReport, per_job: bool, limit: int) -> Listing:
    what = "job" if per_job else "jobs"
    columns = [
        Column("pos", 1, NUMBER), Column("queue", 6, FIXED), Column("task", 1, NAME, fold=16),
        Column("user", 3, NAME, fold=8), Column("state", 2, FIXED), Column(what, 1, FIXED if per_job else NUMBER),
        Column("priority", 3, NUMBER), Column("fairshare", 5, NUMBER), Column("age", 5, NUMBER),
        Column("taskprio", 5, NUMBER), Column("scout", 6, NUMBER), Column("why", 1, TEXT, fold=24),
    ]
    out: list[dict[str, Cell]] = []
    for r in report.rows:
        w = r.weighted or {}
        if per_job and r.job_id is not None:
            count = f"{r.job_id} (#{r.job_index}{', scout' if r.scouts else ''})"
        else:
            count = f"{r.pending}{' scouts' if r.scouts else ''}"
        out.append({
            "pos": str(r.position) if r.position else "-", "queue": f"{r.cluster}/{r.queue}",
            "task": f"{r.task} ({r.task_id})", "user": r.user, "state": state(r.state), what: count,
            "priority": _num(r.total), "fairshare": _num(w.get("fairshare")), "age": _num(w.get("age")),
            "taskprio": _num(w.get("priority")), "scout": _num(w.get("scout")), "why": r.reason,
        })
    notes = []
    if per_job and report.jobs_truncated:
        notes = shown_note(report.jobs_shown, report.pending_jobs, "--limit 0 for all")
        if not notes:
            notes = [f"more pending jobs than {limit:,} shown (--limit 0 for all)"]
    wt = report.weights
    legend = (f"priority = {wt['fairshare']:g} x fairshare + {wt['age']:g} x age + {wt['priority']:g} x task priority "
              f"(+{wt['scout']:g} while scouting); pos = place in its queue's dispatch order")
    return Listing(columns, out, empty="no pending jobs", notes=notes, legend=legend)


# ------------------------------------------------------------------------------------- usage
USAGE_COLUMNS = [
    Column("user", 1, NAME, fold=10), Column("account", 3, NAME, fold=10), Column("share", 4, NUMBER),
    Column("norm_share", 6, NUMBER), Column("usage_h", 2, NUMBER), Column("effective_h", 5, NUMBER),
    Column("norm_usage", 6, NUMBER), Column("fairshare", 1, NUMBER), Column("running", 2, NUMBER),
    Column("queued", 2, NUMBER), Column("held", 4, NUMBER), Column("cap", 5, FIXED),
]


def usage(report: UsageReport) -> Listing:
    accounts = any(r.account for r in report.rows)
    columns = [c for c in USAGE_COLUMNS if c.name != "account" or accounts]
    out: list[dict[str, Cell]] = []
    for r in report.rows:
        cap = "none" if r.cap <= 0 else f"{r.cap}{'' if r.cap_from == 'user' else ' (default)'}"
        out.append({
            "user": r.user, "account": r.account or "-", "share": f"{r.share:g}", "norm_share": f"{r.norm_share:.3f}",
            "usage_h": f"{r.usage / 3600:.1f}", "effective_h": f"{r.effective / 3600:.1f}",
            "norm_usage": f"{r.norm_usage:.3f}", "fairshare": f"{r.fairshare:.3f}{'' if r.ranked else '*'}",
            "running": str(r.running), "queued": str(r.queued), "held": str(r.held), "cap": cap,
        })
    legend = (f"usage_h: weighted slot-hours, halved every {report.half_life_days:g} days; effective_h = usage + what "
              "the running jobs will weigh; * = nothing queued: the factor it would have if it queued now")
    return Listing(columns, out, empty="no users", legend=legend)


# ------------------------------------------------------------------------------------- admin
def users(rows: Sequence[Any]) -> Listing:
    columns = [Column("user", 1, NAME, fold=12), Column("login", 2, FIXED), Column("groups", 3, TEXT, fold=12),
               Column("share", 2, NUMBER), Column("cap", 2, NUMBER)]
    out: list[dict[str, Cell]] = [{
        "user": r.name, "login": "yes" if r.login else "no", "groups": ", ".join(r.groups) or "-",
        "share": "-" if r.share is None else f"{r.share:g}", "cap": str(r.max_running or "-"),
    } for r in rows]
    return Listing(columns, out, empty="no users")


def settings(rows: Sequence[tuple[str, str, str]]) -> Listing:
    columns = [Column("key", 1, NAME, fold=20), Column("value", 1, TEXT, fold=20), Column("source", 2, TEXT, fold=12)]
    return Listing(columns, [{"key": k, "value": v, "source": s} for k, v, s in rows], empty="no settings")


def slots(queues: Sequence[Any]) -> Listing:
    columns = [Column("queue", 1, FIXED), Column("used", 1, NUMBER), Column("total", 1, NUMBER),
               Column("free", 1, NUMBER), Column("held", 2, TEXT, default=False, fold=20)]
    out: list[dict[str, Cell]] = [{"queue": f"{q.cluster}/{q.queue}", "used": str(q.busy), "total": str(q.slots),
                                   "free": str(q.free), "held": q.held or ""} for q in queues]
    return Listing(columns, out, empty="no queues")


def loads(rows: Sequence[Any]) -> Listing:
    columns = [Column("user", 1, NAME, fold=12), Column("queued", 1, NUMBER), Column("held", 1, NUMBER),
               Column("running", 1, NUMBER)]
    out: list[dict[str, Cell]] = [{"user": u.user, "queued": str(u.queued), "held": str(u.held),
                                   "running": str(u.running)} for u in rows]
    return Listing(columns, out, empty="nothing queued or running")
