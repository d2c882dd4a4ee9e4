"""The machine's own limits, measured by the bench in the same run as the figures judged against them.

Absolute goals do not travel between machines (issue 18): a figure means something only beside
what this machine can do at best, measured the same minute. Three kinds of limit live here:

- spawn: the local backend's own supervisor (`local.WRAPPER`, the same `/bin/sh -c WRAPPER` argv,
  the same clean environment from `local.job_environment` plus the `_ORC_*` control variables, a
  flock'ed lock as its stdin and an append-only log as its stdout, a new state directory for its
  pid and exit files, its own session) around the command `:`, started and waited for, serially
  and with one launcher thread per core. What it leaves out, and Orchestra pays on top: the state
  directory and its checks, the lock and log files and the storage probe written into the lock,
  the job's output directory (here it exists already; Orchestra makes it before the spawn), cgroups
  (none here: `_ORC_JOIN` is empty, as on a machine without delegated cgroups) and the database.
  The same with the cgroups (prepared, joined, removed, as for an attempt of a queue with the
  default memory limit) is measured too and shown beside it, not judged: what containment itself
  costs on this machine.
- raw set-based UPDATE: one Core statement that marks 1,000 queued job rows running (what the
  cycle's record step does, without its bookkeeping), committed; the mean of a few.
- raw cycle writes: the row changes of one scheduler cycle's write steps (1,000 ends recorded,
  1,000 dispatches recorded, their launches acknowledged), made by raw set-based statements, one
  per table touched, on the same database and the same kind of rows, right after the measured
  cycles (`raw_cycle_writes`): what the cycle's own write statements are judged against.
- minimal commit: a transaction that changes one row and commits, through Orchestra's own engine
  (`make_engine`: SQLite in WAL mode with synchronous=NORMAL, which does not fsync at commit;
  PostgreSQL with its defaults, which flush and fsync the WAL): the mean of N.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

from sqlalchemy import select, text, update

from orchestra.backends.containment import Containment, parse_quantity
from orchestra.config import QueueConfig
from orchestra.backends.local import WRAPPER, job_environment
from orchestra.db.engine import is_sqlite, make_engine
from orchestra.db.models import Job

DEFAULT_MEMORY = parse_quantity(QueueConfig.memory)  # a queue's memory limit unless configured


class _Launcher:
    """One launcher's lock and log, reused spawn after spawn, and a fresh state directory for
    each spawn, made before the clock starts (`spawns` of them, plus one for the warm-up): the
    wrapper creates its pid and exit files there, as in an attempt's new state directory. Reused
    from spawn to spawn, those files were truncated and rewritten, which a launch never does:
    ext4 (auto_da_alloc) flushes a file truncated and rewritten when it is closed, and that cost
    the limit's wrapper a third of its rate here (2 launchers: 1,046 against 1,475 spawns/s,
    alternated, 2026-12-02), so the limit read lower than what a launch's wrapper costs."""

    def __init__(self, root: Path, spawns: int) -> None:
        self.state = root / "state"
        self.output = root / "output"
        self.state.mkdir(parents=True)
        self.output.mkdir()
        self.fresh = [str(self.state / f"s{i}") for i in range(spawns + 1)]
        for path in self.fresh:
            os.mkdir(path)
        self.fresh.reverse()  # popped from the end, in order
        self.env = job_environment(os.environ, home=os.environ.get("HOME", "/"), user="bench")
        self.env.update(ORCHESTRA_OUTPUT=str(self.output), ORCHESTRA_COMMAND=":", ORCHESTRA_TASK="bench.limits",
                        ORCHESTRA_JOB="0", ORCHESTRA_ATTEMPT="1", ORCHESTRA_USER="bench",
                        _ORC_STATE="", _ORC_JOIN="", _ORC_RUNAS="")
        self.lock = os.open(self.state / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.log = os.open(self.state / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def spawn(self, containment: Containment | None = None, name: str = "") -> None:
        """One spawn, waited for; with `containment`, inside groups of its own made before and
        removed after, as the local backend does for an attempt."""
        self.env["_ORC_STATE"] = self.fresh.pop()
        if containment is not None:
            self.env["_ORC_JOIN"] = " ".join(containment.prepare(name, pids_max=512, memory_max=DEFAULT_MEMORY))
        child = subprocess.Popen(["/bin/sh", "-c", WRAPPER], stdin=self.lock, stdout=self.log,
                                 stderr=subprocess.STDOUT, env=self.env, start_new_session=True, close_fds=True)
        if child.wait() != 0:
            raise RuntimeError(f"the wrapper around ':' exited {child.returncode}: see {self.state / 'log'}")
        if containment is not None:
            for _ in range(10_000):  # the wrapper exited: its groups empty at once, or very soon
                try:
                    containment.remove(name)
                    break
                except OSError:
                    time.sleep(0.0001)

    def close(self) -> None:
        os.close(self.log)
        os.close(self.lock)


def spawn_rate(spawns: int, threads: int, containment: Containment | None = None, *, root: Path) -> dict:
    """Wrapper runs around `:` per second, start to end, with `threads` launchers each spawning
    and waiting in turn (1: serially; one per core: what parallel slots can get at best).

    With `containment` (shown beside the judged limit, not judged itself): each run in cgroups of
    its own, prepared before and removed after, as the local backend contains an attempt: what
    containment costs on this machine.

    The launchers' directories are made in `root` (a new directory) and left there: the caller
    removes them once no timed run follows. Removed here, at once, they made the run measured next
    pay for it: on an ext4 without a journal (this machine's root file system), the inode
    allocator skips the inodes freed in the last minute (six, while their inode table is not
    written back), one candidate at a time, so every file or directory the next run created
    searched past the ~1,800 this limit had just freed. A 64-slot run spent 45 % of the
    scheduler's CPU there (perf, `find_inode_bit` and `recently_deleted`, 2026-12-02), and it
    creates three times as many inodes a job as the limit's wrapper does."""
    root.mkdir()
    each = [spawns // threads + (1 if i < spawns % threads else 0) for i in range(threads)]
    launchers = [_Launcher(root / str(i), count) for i, count in enumerate(each)]
    try:
        launchers[0].spawn()  # warm: the page cache holds /bin/sh from now on
        errors: list[BaseException] = []

        def run(launcher: _Launcher, count: int) -> None:
            try:
                for n in range(count):
                    launcher.spawn(containment, f"limit-{id(launcher)}-{n}")
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(launcher, count)) for launcher, count in zip(launchers, each)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - start
        if errors:
            raise errors[0]
    finally:
        for launcher in launchers:
            launcher.close()
    return {"seconds": seconds, "spawns": spawns, "threads": threads, "per_s": spawns / seconds}


def file_creation(root: Path, files: int = 200) -> float:
    """Mean seconds to create one empty file (and close it) in the new directory `root`; the files
    are kept (see `spawn_rate`: removing them would slow what follows).

    Not a limit, a reading of the file system's state, printed beside each throughput pair: on an
    ext4 without a journal a creation costs several times more for a minute or six after many
    files were removed (the inode allocator skips the recently freed ones, one at a time), and a
    launch creates four (its state directory, lock and log, the job's output directory) where the
    spawn limit's wrapper creates two."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        start = time.perf_counter()
        for i in range(files):
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=fd))
        return (time.perf_counter() - start) / files
    finally:
        os.close(fd)


def cpu_reading(repeats: int = 5, loops: int = 100) -> float:
    """Seconds one CPU takes for `sum(range(10_000))` in this interpreter: the best of `repeats`
    means of `loops` (about 20-30 ms in all). Not a limit, a reading of the VM's speed, printed
    beside each throughput pair and in the table's header line.

    This VM's speed drifts: on 2026-12-02 the same loop took 171-332 µs in one session (readings
    2 s apart on the idle machine: 209-329 µs) where the tables before were measured in faster
    phases, and the scheduler's CPU a job (2 slots, SQLite) read 6.7 ms where the table showed
    3.1. The spawn limit, mostly kernel work, moved less than the Python-heavy scheduler did, so
    a ratio taken in a slow phase reads low: the reading says which phase a figure was taken in."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            sum(range(10_000))
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def raw_update(url: str, rows: int = 1000, repeats: int = 5) -> float:
    """Mean seconds of one set-based UPDATE (one statement, `rows` job rows marked running, each a
    different set) plus its commit, on the throwaway database at `url` (rows * repeats jobs)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ids = conn.scalars(select(Job.id).order_by(Job.id.desc()).limit(rows * repeats)).all()
        if len(ids) < rows * repeats:
            raise RuntimeError(f"raw update: {len(ids)} jobs, {rows * repeats} needed")
        total = 0.0
        for r in range(repeats):
            chunk = ids[r * rows : (r + 1) * rows]
            start = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(update(Job).where(Job.id.in_(chunk))
                             .values(status="running", attempts=Job.attempts + 1, started_at=time.time()))
            total += time.perf_counter() - start
        return total / repeats
    finally:
        engine.dispose()


def minimal_commit(url: str, repeats: int) -> float:
    """Mean seconds of a transaction that changes one job row and commits (the smallest write a
    commit makes durable: an empty transaction writes nothing, so it waits for no disk)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            job_id = conn.scalar(select(Job.id).limit(1))
        assert job_id is not None, "minimal commit: no job row to change"
        with engine.begin() as conn:  # the connection opened, the pragmas set: not measured
            conn.execute(update(Job).where(Job.id == job_id).values(queued_at=Job.queued_at))
        start = time.perf_counter()
        for _ in range(repeats):
            with engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == job_id).values(queued_at=Job.queued_at))
        return (time.perf_counter() - start) / repeats
    finally:
        engine.dispose()


def _among(column: str, ids: list[int], sqlite: bool) -> str:
    """`column` among `ids`, the ids written into the statement (integers read from the database):
    no parameter processing, the cheapest the driver can be asked."""
    listed = ",".join(str(int(i)) for i in ids) or "NULL"
    return f"{column} IN ({listed})" if sqlite else f"{column} = ANY(ARRAY[{listed}]::bigint[])"


def raw_cycle_writes(url: str, repeats: int = 3) -> dict[str, float]:
    """Mean seconds, per cycle step, of raw set-based statements making the row changes of that
    step's writes (`CycleReport.writes`) in a measured cycle (1,000 slots end and are refilled),
    on the database the cycle just ran on, its commit not included (nor is it in the cycle's):

    - `reconcile`: the live attempts end (one UPDATE of `attempts`: status, exit code, reason, end,
      charged up to it), their jobs succeed (one UPDATE of `jobs`), every user with usage is
      decayed and charged (one UPDATE of `users`);
    - `dispatch`: the head job of as many tasks is marked starting (one UPDATE of `jobs`), its
      attempt recorded (one INSERT ... SELECT into `attempts`), its task's queued count lowered
      (one UPDATE of `tasks`);
    - `launch`: those attempts and jobs are marked running (one UPDATE each).

    Each repeat runs in one transaction that is rolled back (the same rows, the database as the
    cycle left it), every statement timed on its own."""
    engine = make_engine(url)
    try:
        sqlite = is_sqlite(engine)
        with engine.connect() as conn:
            live = conn.execute(text(
                "SELECT a.id, a.job_id, t.owner_id FROM attempts a JOIN jobs j ON j.id = a.job_id "
                "JOIN tasks t ON t.id = j.task_id WHERE a.status IN ('starting', 'running')")).all()
            # As many queued jobs as the cycle dispatches, spread over the tasks as its fill spreads them.
            heads = conn.execute(text(
                'SELECT id, task_id FROM jobs WHERE status = \'queued\' ORDER BY "index", task_id LIMIT :n'),
                {"n": len(live)}).all()
            users = conn.scalars(text("SELECT id FROM users WHERE usage > 0")).all()
        if not live or len(heads) < len(live):
            raise RuntimeError(f"raw cycle writes: {len(live)} live attempts, {len(heads)} queued jobs")
        attempts, jobs = [r[0] for r in live], [r[1] for r in live]
        charged = sorted(set(users) | {r[2] for r in live})
        heads_jobs, heads_tasks = [r[0] for r in heads], sorted({r[1] for r in heads})
        totals = {"reconcile": 0.0, "dispatch": 0.0, "launch": 0.0}
        for _ in range(repeats):
            now = time.time()
            statements = {
                "reconcile": [
                    f"UPDATE attempts SET status = 'succeeded', exit_code = 0, reason = NULL, ended_at = {now!r}, "
                    f"charged_until = {now!r} WHERE {_among('id', attempts, sqlite)}",
                    f"UPDATE jobs SET status = 'succeeded', failures = failures, exit_code = 0, reason = NULL, "
                    f"ended_at = {now!r}, queued_at = {now!r} WHERE {_among('id', jobs, sqlite)}",
                    f"UPDATE users SET usage = usage * 0.5 + 1.0, usage_at = {now!r} WHERE {_among('id', charged, sqlite)}",
                ],
                "dispatch": [
                    f"UPDATE jobs SET status = 'starting', attempts = attempts + 1, started_at = NULL, ended_at = NULL "
                    f"WHERE {_among('id', heads_jobs, sqlite)} AND status = 'queued'",
                    "INSERT INTO attempts (job_id, number, backend_name, cluster, status, log_path, weight, created_at) "
                    f"SELECT id, attempts, 'raw-' || id || '-' || attempts, 'LPS', 'starting', "
                    f"'/raw/' || id || '/log', 1.0, {now!r} FROM jobs WHERE {_among('id', heads_jobs, sqlite)}",
                    f"UPDATE tasks SET n_queued = n_queued - 1 WHERE {_among('id', heads_tasks, sqlite)}",
                ],
                "launch": [
                    f"UPDATE attempts SET status = 'running', host = 'null', pid = NULL, pid_start = NULL, "
                    f"started_at = {now!r} WHERE {_among('job_id', heads_jobs, sqlite)} AND status = 'starting'",
                    f"UPDATE jobs SET status = 'running', started_at = {now!r} "
                    f"WHERE {_among('id', heads_jobs, sqlite)} AND status = 'starting'",
                ],
            }
            with engine.connect() as conn:
                transaction = conn.begin()
                try:
                    for step, sqls in statements.items():
                        for sql in sqls:
                            start = time.perf_counter()
                            conn.exec_driver_sql(sql)
                            totals[step] += time.perf_counter() - start
                finally:
                    transaction.rollback()
        return {step: seconds / repeats for step, seconds in totals.items()}
    finally:
        engine.dispose()
