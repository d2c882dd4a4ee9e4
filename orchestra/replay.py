"""Replay a workload trace through the REAL scheduler cycle, on a simulated clock.

`orchestra simulate TRACE` builds a throwaway SQLite database in a temp directory, registers
generated config files as datasets (orchestra.services.datasets.register), creates each task
through orchestra.services.tasks.create when its submit time comes (with --bypass unless the
trace asks for scouts), and runs `orchestra.scheduler.cycle.Scheduler.cycle` every `cycle`
simulated seconds with `Scheduler.clock` replaced by a SimClock and the cluster's backend by
`SimulatedBackend` (an attempt of `sim-sleep SECONDS` ends SECONDS after it started). Expansion,
scouts, usage charging and decay, fair-share ordering, caps: all the real code. After each cycle
it records, per user, the running jobs, the pending jobs (queued + held) and the decayed usage.

orchestra/simulation.py is the policy-only engine (no database, microseconds per cycle) used by
the property tests; a test checks that both give the same running slots on the same trace.

Trace files: TOML or JSON with the keys below, or CSV (one task per row, one queue `cpu`).

    cycle = "5m"            # scheduler interval (seconds or a duration); --cycle overrides
    until = "6h"            # stop then; default: when every task is done
    sample = 2              # the printed table shows every Nth cycle; --every overrides
    [scheduler]             # optional: scouts, scout_success_threshold, max_running_per_user
    [fairshare]             # optional: any [fairshare] setting (half_life_days, weights...)
    [queues.cpu]            # one or more queues: slots, cpu, gpu (default: cpu with 64 slots)
    slots = 64
    [users.alice]           # optional per user: share (default 1), max_running (0: no cap)
    share = 2
    [accounts.physics]      # optional: share = 2, users = ["alice", "bob"] (as in the configuration)
    [[tasks]]               # user, submit (s or "1h"), jobs, duration (s or "10m"); optional:
    user = "alice"          # queue, priority (-100..100), jitter (0.2: durations +-20 %),
    submit = 0              # scouts (true: scout first; default false), repeat and every
    jobs = 500              # (this many copies, one every so long), name
    duration = "10m"

CSV header: user,submit,jobs,duration and optionally queue,priority,jitter,scouts,share,name.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from orchestra.config import AccountConfig, FairShareConfig, build_accounts, load_settings
from orchestra.db.engine import connect
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.errors import OrchestraError
from orchestra.naming import owner_of

CLUSTER = "SIM"
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC: simulated time starts here (output is in seconds from it)
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")
TASK_KEYS = {"user", "submit", "jobs", "duration", "queue", "priority", "jitter", "scouts", "repeat", "every", "name"}
TOP_KEYS = {"cycle", "until", "sample", "scheduler", "fairshare", "accounts", "queues", "users", "tasks",
            "description"}
SCHEDULER_KEYS = {"scouts", "scout_success_threshold", "max_running_per_user"}


# ---------------------------------------------------------------------------------------- the trace
@dataclass(frozen=True)
class TraceQueue:
    name: str
    slots: int
    cpu: float = 1.0
    gpu: int = 0


@dataclass(frozen=True)
class TraceUser:
    name: str
    share: float = 1.0
    max_running: int = 0


@dataclass(frozen=True)
class TraceTask:
    user: str
    submit: float  # seconds from the start
    jobs: int
    duration: float  # seconds per job
    queue: str
    priority: int = 0
    jitter: float = 0.0
    scouts: bool = False
    name: str = ""


@dataclass(frozen=True)
class Trace:
    path: str
    queues: list[TraceQueue]
    users: list[TraceUser]
    tasks: list[TraceTask]
    cycle: float = 300.0
    until: float | None = None
    sample: int = 0  # 0: choose
    scheduler: dict[str, Any] = field(default_factory=dict)
    fairshare: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    accounts: dict[str, AccountConfig] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return sum(q.slots for q in self.queues)


def seconds(value: Any, where: str) -> float:
    """A number of seconds, or a duration like "90m", "1h30m", "1d", "2.5h"."""
    if isinstance(value, bool):
        raise OrchestraError(f"{where} must be a number of seconds or a duration like 10m, got {value!r}")
    if isinstance(value, (int, float)):
        result = float(value)
    else:
        text = str(value).strip().lower()
        try:
            result = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or not match or not any(match.groups()):
                raise OrchestraError(f"{where} is {value!r}: use seconds or a duration like 10m, 1h30m, 2d") from None
            d, h, m, s = (float(g or 0) for g in match.groups())
            result = ((d * 24 + h) * 60 + m) * 60 + s
    if not result >= 0 or result == float("inf"):
        raise OrchestraError(f"{where} must be >= 0 and finite, got {value!r}")
    return result


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OrchestraError(f"{where} must be an integer, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except ValueError:
        raise OrchestraError(f"{where} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise OrchestraError(f"{where} must be an integer, got {value!r}")
    if number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise OrchestraError(f"{where} must be {bound}, got {number}")
    return number


def _float(value: Any, where: str, low: float = 0.0, strict: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OrchestraError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not (number > low if strict else number >= low) or number == float("inf"):
        raise OrchestraError(f"{where} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return number


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y"):
        return True
    if text in ("", "0", "false", "no", "n"):
        return False
    raise OrchestraError(f"{where} must be true or false, got {value!r}")


def _user_name(name: Any, where: str) -> str:
    text = str(name).strip()
    try:
        owner_of(f"user.{text}.x")
    except OrchestraError:
        raise OrchestraError(f"{where}: user name {text!r} is not valid (letters, digits, _ and -)") from None
    if owner_of(f"user.{text}.x") != text:
        raise OrchestraError(f"{where}: user name {text!r} is not valid")
    return text


def load_trace(path: str | Path, slots: int | None = None) -> Trace:
    """Read and check a trace file (.toml, .json or .csv); every problem is one OrchestraError line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OrchestraError(f"trace file {p} does not exist; see examples/traces/ for the format") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OrchestraError(f"cannot read trace file {p}: {getattr(exc, 'strerror', None) or exc}") from None
    suffix = p.suffix.lower()
    if suffix == ".toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise OrchestraError(f"trace file {p} is not valid TOML: {exc}") from None
    elif suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OrchestraError(f"trace file {p} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise OrchestraError(f"trace file {p}: the JSON must be an object with queues, users and tasks")
    elif suffix == ".csv":
        raw = _csv_trace(p, text)
    else:
        raise OrchestraError(f"trace file {p}: use a .toml, .json or .csv file")
    return _build(str(p), raw, slots)


def _csv_trace(p: Path, text: str) -> dict[str, Any]:
    rows = list(csv.DictReader(text.splitlines()))
    header = set(rows[0].keys()) if rows else set()
    missing = {"user", "submit", "jobs", "duration"} - header
    if not rows or missing:
        raise OrchestraError(f"trace file {p}: a CSV trace needs a header with user,submit,jobs,duration "
                             f"(missing: {', '.join(sorted(missing)) or 'rows'})")
    unknown = header - TASK_KEYS - {"share"} - {None}  # type: ignore[operator]
    if None in header or unknown:
        raise OrchestraError(f"trace file {p}: unknown CSV column(s) {sorted(str(u) for u in unknown)}; known: "
                             f"{', '.join(sorted(TASK_KEYS | {'share'}))}")
    users: dict[str, dict[str, Any]] = {}
    tasks = []
    for i, row in enumerate(rows, start=2):
        if any(v is None for v in row.values()):
            raise OrchestraError(f"trace file {p}, line {i}: fewer columns than the header")
        task = {k: v for k, v in row.items() if k != "share" and v not in ("", None)}
        tasks.append(task)
        if row.get("share") not in (None, ""):
            users.setdefault(row["user"].strip(), {})["share"] = row["share"]
    return {"users": users, "tasks": tasks}


def _build(path: str, raw: dict[str, Any], slots: int | None) -> Trace:
    where = f"trace {path}"
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise OrchestraError(f"{where}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(TOP_KEYS))}")
    queues_raw = raw.get("queues") or {"cpu": {"slots": 64}}
    if not isinstance(queues_raw, dict):
        raise OrchestraError(f"{where}: queues must be a table of [queues.<name>] with slots, cpu, gpu")
    queues = []
    for name, q in queues_raw.items():
        if not isinstance(q, dict) or set(q) - {"slots", "cpu", "gpu"}:
            raise OrchestraError(f"{where}: queues.{name} must be a table with slots, cpu, gpu")
        if not re.match(r"^[A-Za-z0-9_-]+$", str(name)):
            raise OrchestraError(f"{where}: queue name {name!r} must be letters, digits, _ or -")
        queues.append(TraceQueue(str(name), _int(q.get("slots", 64), f"{where}: queues.{name}.slots", 0),
                                 _float(q.get("cpu", 1.0), f"{where}: queues.{name}.cpu", strict=True),
                                 _int(q.get("gpu", 0), f"{where}: queues.{name}.gpu", 0)))
    if slots is not None:
        if len(queues) != 1:
            raise OrchestraError(f"--slots works with one queue; {path} has {len(queues)}: set slots in the trace")
        queues = [TraceQueue(queues[0].name, slots, queues[0].cpu, queues[0].gpu)]
    users_raw = raw.get("users") or {}
    if not isinstance(users_raw, dict):
        raise OrchestraError(f"{where}: users must be a table of [users.<name>] with share, max_running")
    users: dict[str, TraceUser] = {}
    for name, u in users_raw.items():
        if not isinstance(u, dict) or set(u) - {"share", "max_running"}:
            raise OrchestraError(f"{where}: users.{name} must be a table with share, max_running")
        uname = _user_name(name, where)
        users[uname] = TraceUser(uname, _float(u.get("share", 1.0), f"{where}: users.{name}.share", strict=True),
                                 _int(u.get("max_running", 0), f"{where}: users.{name}.max_running", 0))
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise OrchestraError(f"{where}: no tasks; add [[tasks]] entries with user, submit, jobs, duration")
    queue_names = [q.name for q in queues]
    tasks: list[TraceTask] = []
    for i, t in enumerate(tasks_raw):
        w = f"{where}: tasks[{i}]"
        if not isinstance(t, dict):
            raise OrchestraError(f"{w} must be a table")
        bad = set(t) - TASK_KEYS
        if bad:
            raise OrchestraError(f"{w}: unknown key(s) {sorted(bad)}; known: {', '.join(sorted(TASK_KEYS))}")
        for key in ("user", "jobs", "duration"):
            if key not in t:
                raise OrchestraError(f"{w} has no {key}")
        user = _user_name(t["user"], w)
        users.setdefault(user, TraceUser(user))
        queue = str(t.get("queue", queue_names[0]))
        if queue not in queue_names:
            raise OrchestraError(f"{w}: queue {queue!r} is not one of the trace's queues ({', '.join(queue_names)})")
        repeat = _int(t.get("repeat", 1), f"{w}.repeat", 1, 100_000)
        every = seconds(t.get("every", 0), f"{w}.every")
        if repeat > 1 and every <= 0:
            raise OrchestraError(f"{w}: repeat = {repeat} needs every = <interval> (e.g. \"1h\")")
        base = TraceTask(
            user=user, submit=seconds(t.get("submit", 0), f"{w}.submit"),
            jobs=_int(t["jobs"], f"{w}.jobs", 1, 10_000_000), duration=seconds(t["duration"], f"{w}.duration"),
            queue=queue, priority=_int(t.get("priority", 0), f"{w}.priority", -100, 100),
            jitter=_float(t.get("jitter", 0.0), f"{w}.jitter"), scouts=_bool(t.get("scouts", False), f"{w}.scouts"),
            name=str(t.get("name", "")),
        )
        if base.jitter >= 1:
            raise OrchestraError(f"{w}.jitter must be below 1 (0.2 means durations within +-20 %)")
        if base.name and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", base.name):
            raise OrchestraError(f"{w}.name {base.name!r} must be letters, digits, '.', '_' or '-'")
        for k in range(repeat):
            tasks.append(TraceTask(**{**base.__dict__, "submit": base.submit + k * every,
                                      "name": f"{base.name}-{k}" if base.name and repeat > 1 else base.name}))
    names = [t.name for t in tasks if t.name]
    if len(names) != len(set(names)):
        raise OrchestraError(f"{where}: task names must be unique")
    scheduler = dict(raw.get("scheduler") or {})
    if set(scheduler) - SCHEDULER_KEYS:
        raise OrchestraError(f"{where}: [scheduler] may set only {', '.join(sorted(SCHEDULER_KEYS))}")
    fs = dict(raw.get("fairshare") or {})
    unknown_fs = set(fs) - set(FairShareConfig.__dataclass_fields__)
    if unknown_fs:
        raise OrchestraError(f"{where}: [fairshare] unknown key(s) {sorted(unknown_fs)}")
    cycle = seconds(raw.get("cycle", 300), f"{where}: cycle")
    if cycle <= 0:
        raise OrchestraError(f"{where}: cycle must be longer than zero")
    until = seconds(raw["until"], f"{where}: until") if "until" in raw else None
    tasks.sort(key=lambda t: t.submit)  # stable: trace order among equal times
    return Trace(path, queues, sorted(users.values(), key=lambda u: u.name), tasks, cycle, until,
                 _int(raw.get("sample", 0), f"{where}: sample", 0), scheduler, fs, str(raw.get("description", "")),
                 _trace_accounts(raw.get("accounts") or {}, where))


def _trace_accounts(raw: Any, where: str) -> dict[str, AccountConfig]:
    """`[accounts.<name>]` as in the configuration (share, users), checked by the same code."""
    try:
        return build_accounts(raw)
    except OrchestraError as exc:
        raise OrchestraError(str(exc).replace("config:", f"{where}:", 1)) from None


# ---------------------------------------------------------------------------------------- the replay
@dataclass
class ReplayResult:
    trace: Trace
    cycle: float
    users: list[str]
    shares: list[float]
    times: np.ndarray  # float64 [C] seconds from the start
    running: np.ndarray  # int64 [C, U] after the cycle's dispatch
    pending: np.ndarray  # int64 [C, U] queued + held (+ not expanded yet)
    usage: np.ndarray  # float64 [C, U] decayed usage (weighted slot-seconds) at the cycle
    started: np.ndarray  # int64 [C] jobs started by the cycle
    cycle_wall: np.ndarray  # float64 [C] wall seconds per cycle (the real scheduler's cost)
    setup_wall: float  # seconds to build the database, generate and register the config files
    submit_wall: float  # seconds spent creating tasks through the services
    finished: bool  # every task done before the end

    @property
    def slots(self) -> int:
        return self.trace.slots

    def arrival(self, user: str) -> float:
        return min(t.submit for t in self.trace.tasks if t.user == user)

    def fair_slice(self) -> dict[str, dict[str, Any]]:
        """Per user: arrival cycle, and the first cycle at or after it in which the user runs within one
        slot of its share of the busy slots among the users then running or waiting (None: never)."""
        out = {}
        active = (self.running > 0) | (self.pending > 0)
        shares = np.array(self.shares)
        busy = self.running.sum(axis=1)
        for j, user in enumerate(self.users):
            arrive = int(np.searchsorted(self.times, self.arrival(user) - 1e-9))
            reached = None
            target_at = None
            for c in range(arrive, len(self.times)):
                if not active[c, j]:
                    continue
                target = busy[c] * shares[j] / shares[active[c]].sum()
                if self.running[c, j] >= target - 1:
                    reached, target_at = c, target
                    break
            out[user] = {"arrives_cycle": arrive, "arrives_at": float(self.times[arrive]) if arrive < len(self.times)
                         else None, "fair_cycle": reached, "target": target_at,
                         "cycles_to_fair": None if reached is None else reached - arrive}
        return out

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time", "user", "running", "queued", "usage"])
            for c, t in enumerate(self.times.tolist()):
                for j, user in enumerate(self.users):
                    writer.writerow([f"{t:g}", user, int(self.running[c, j]), int(self.pending[c, j]),
                                     f"{self.usage[c, j]:.6g}"])

    def write_png(self, path: str | Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4.5))
        hours = self.times / 3600.0
        ax.stackplot(hours, self.running.T, labels=self.users, step="post")
        ax.set_xlabel("hours")
        ax.set_ylabel("running slots")
        ax.set_ylim(0, max(1, self.slots))
        ax.set_title(f"{Path(self.trace.path).name}: running slots per user")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _config_text(trace: Trace, cycle: float, storage: Path) -> str:
    def toml_value(v: Any) -> str:
        return json.dumps(v) if isinstance(v, str) else repr(v).lower() if isinstance(v, bool) else repr(v)

    lines = ["[scheduler]", f"interval = {cycle!r}", "max_retries = 0", "lease_ttl = 600"]
    scheduler = {"scouts": 10, **trace.scheduler}
    lines += [f"{k} = {toml_value(v)}" for k, v in scheduler.items()]
    if trace.fairshare:
        lines += ["[fairshare]"] + [f"{k} = {toml_value(v)}" for k, v in trace.fairshare.items()]
    lines += [f"[clusters.{CLUSTER}]", 'backend = "local"', f"storage = {json.dumps(str(storage))}",
              f'default_queue = "{trace.queues[0].name}"']
    for q in trace.queues:
        lines += [f"[clusters.{CLUSTER}.queues.{q.name}]", f"slots = {q.slots}", f"cpu = {q.cpu!r}", f"gpu = {q.gpu}"]
    for u in trace.users:
        lines += [f"[users.{u.name}]", f"share = {u.share!r}"]
    for name, account in trace.accounts.items():
        lines += [f"[accounts.{name}]", f"share = {account.share!r}", f"users = {json.dumps(list(account.users))}"]
    return "\n".join(lines) + "\n"


def _scratch(trace: Trace) -> str | None:
    """A RAM disk (/dev/shm) when there is one with room: creating 100,000 files there takes 0.6 s
    instead of 3-15 s on this machine's disk. Else the default temp directory."""
    shm = Path("/dev/shm")
    need = 64 * 1024 * 1024 + 2048 * sum(t.jobs for t in trace.tasks)
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * need:
            return str(shm)
    except OSError:
        pass
    return None


def _make_files(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    flags = os.O_CREAT | os.O_WRONLY
    for i in range(n):
        os.close(os.open(directory / f"c{i:07d}", flags, 0o644))


def replay(trace: Trace, *, cycle: float | None = None, until: float | None = None,
           on_cycle: Callable[[int, float, dict[str, int]], None] | None = None,
           max_cycles: int = 200_000) -> ReplayResult:
    """Run the trace through the real scheduler (see the module docstring)."""
    from orchestra.backends.simulated import SimClock, SimulatedBackend
    from orchestra.scheduler.cycle import Scheduler
    from orchestra.services import datasets, tasks
    from orchestra.security.identity import Identity
    from orchestra.services.context import Context
    from orchestra.services.queue import pending_by_user

    cycle = float(cycle if cycle is not None else trace.cycle)
    if not cycle > 0:
        raise OrchestraError("--cycle must be longer than zero")
    until = until if until is not None else trace.until
    if until is None:
        empty = sorted({t.queue for t in trace.tasks} & {q.name for q in trace.queues if q.slots == 0})
        if empty:
            raise OrchestraError(f"queue(s) {', '.join(empty)} have no slots, so their tasks never finish; "
                                 "give them slots or set `until` (or --until)")
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="orchestra-sim-", dir=_scratch(trace)) as tmp:
        work = Path(tmp)
        storage = work / "storage"
        storage.mkdir()
        (work / "orchestra.toml").write_text(_config_text(trace, cycle, storage), encoding="utf-8")
        env = {"ORCHESTRA_HOME": str(work), "ORCHESTRA_DATABASE_URL": f"sqlite:///{work / 'sim.db'}",
               "ORCHESTRA_USER": "sim", "ORCHESTRA_CONFIG": str(work / "orchestra.toml")}
        settings = load_settings(env)
        # A throwaway database of the simulator's own: it is its admin and submits for every user.
        ctx = Context(settings, connect(settings.database_url),
                      _identity=Identity(user="sim", actor="sim", admin=True, scheduler=True))
        try:
            (storage / "data").write_text("simulated data\n")
            datasets.register(ctx, "user.sim.data", str(storage / "data"), CLUSTER)
            for n in sorted({t.jobs for t in trace.tasks}):
                _make_files(storage / f"n{n}", n)
                datasets.register(ctx, f"user.sim.n{n}", str(storage / f"n{n}"), CLUSTER)
            with ctx.transaction() as session:
                for u in trace.users:
                    uid = ctx.user_id(session, u.name)
                    session.execute(update(User).where(User.id == uid).values(
                        max_running=u.max_running or None, usage=0.0, usage_at=T0))
                ids = {name: uid for name, uid in session.execute(select(User.name, User.id))}
            users = [u.name for u in trace.users]
            column = {ids[name]: j for j, name in enumerate(users)}
            clock = SimClock(T0)
            scheduler = Scheduler(ctx, backends={CLUSTER: SimulatedBackend(clock)})
            scheduler.clock = clock
            if not scheduler.lease.try_acquire():
                raise OrchestraError("could not take the scheduler lease of the simulation's own database")
            setup_wall = time.perf_counter() - wall
            submit_wall = 0.0
            n_users = len(users)
            rec_t: list[float] = []
            rec_running: list[np.ndarray] = []
            rec_pending: list[np.ndarray] = []
            rec_usage: list[np.ndarray] = []
            rec_started: list[int] = []
            rec_wall: list[float] = []
            next_task = 0
            finished = False
            for k in range(max_cycles):
                t = k * cycle
                if until is not None and t > until + 1e-9:
                    break
                now = T0 + t
                clock.t = now
                started_submit = time.perf_counter()
                while next_task < len(trace.tasks) and trace.tasks[next_task].submit <= t + 1e-9:
                    _submit(ctx, tasks, trace.tasks[next_task], next_task)
                    next_task += 1
                submit_wall += time.perf_counter() - started_submit
                started_cycle = time.perf_counter()
                report = scheduler.cycle()
                rec_wall.append(time.perf_counter() - started_cycle)
                running, pending, usage = _observe(ctx, column, n_users, now, settings.fairshare, pending_by_user)
                rec_t.append(t)
                rec_running.append(running)
                rec_pending.append(pending)
                rec_usage.append(usage)
                rec_started.append(report.counts["started"])
                if on_cycle is not None:
                    on_cycle(k, t, {u: int(running[j]) for j, u in enumerate(users)})
                if next_task == len(trace.tasks) and not running.any() and not pending.any():
                    finished = True
                    break
            scheduler.lease.release()
        finally:
            ctx.engine.dispose()
    return ReplayResult(
        trace=trace, cycle=cycle, users=users, shares=[u.share for u in trace.users], times=np.array(rec_t),
        running=np.array(rec_running, dtype=np.int64).reshape(-1, n_users),
        pending=np.array(rec_pending, dtype=np.int64).reshape(-1, n_users),
        usage=np.array(rec_usage, dtype=np.float64).reshape(-1, n_users), started=np.array(rec_started),
        cycle_wall=np.array(rec_wall), setup_wall=setup_wall, submit_wall=submit_wall, finished=finished,
    )


def _submit(ctx: Any, tasks: Any, task: TraceTask, i: int) -> None:
    command = f"sim-sleep {task.duration!r}" + (f" --jitter {task.jitter!r}" if task.jitter else "") + " %DATA %IN %OUT"
    name = f"user.{task.user}.{task.name or f't{i:05d}'}"
    created = tasks.create(ctx, tasks.TaskRequest(
        name=name, config_dataset=f"user.sim.n{task.jobs}", data_dataset="user.sim.data", image="sim/sleep",
        command=command, bypass=not task.scouts, queue=task.queue, priority=task.priority))
    with ctx.transaction() as session:  # the task was submitted at its simulated time
        at = T0 + task.submit
        session.execute(update(Task).where(Task.id == created.id).values(created_at=at, updated_at=at))


def _observe(ctx: Any, column: dict[int, int], n_users: int, now: float, fs: FairShareConfig,
             pending_by_user: Callable[..., dict[int, tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from orchestra import fairshare

    running = np.zeros(n_users, dtype=np.int64)
    pending = np.zeros(n_users, dtype=np.int64)
    usage = np.zeros(n_users, dtype=np.float64)
    with ctx.transaction() as session:
        for owner, n in session.execute(
            select(Task.owner_id, func.count())
            .join(Job, Job.task_id == Task.id).join(Attempt, Attempt.job_id == Job.id)
            .where(Attempt.status.in_(["starting", "running"])).group_by(Task.owner_id)
        ):
            if owner in column:
                running[column[owner]] = n
        for owner, (queued, held) in pending_by_user(session).items():
            if owner in column:
                pending[column[owner]] = queued + held
        for uid, u, at in session.execute(select(User.id, User.usage, User.usage_at)):
            if uid in column:
                usage[column[uid]] = float(fairshare.decayed([u], [at], now, fs)[0])
    return running, pending, usage


def to_policy_simulation(trace: Trace, cycle: float | None = None) -> dict[str, Any]:
    """The same trace as keyword arguments of orchestra.simulation.simulate (policy only, no database).

    Scouting differs in detail (the real scheduler releases a task once enough scouts succeeded, the
    pure engine once all ended), so compare the two on traces without scouts."""
    if trace.accounts:
        raise OrchestraError(f"{trace.path}: the policy-only engine has no accounts; replay it with `orchestra simulate`")
    from orchestra.simulation import SimQueue, SimTask

    fs = FairShareConfig(**{k: type(getattr(FairShareConfig(), k))(v) for k, v in trace.fairshare.items()})
    users = [u.name for u in trace.users]
    qnames = [q.name for q in trace.queues]
    return {
        "shares": [u.share for u in trace.users],
        "tasks": [SimTask(user=users.index(t.user), submit=t.submit, n_jobs=t.jobs, duration=t.duration,
                          queue=qnames.index(t.queue), priority=t.priority) for t in trace.tasks],
        "queues": [SimQueue(q.slots, q.cpu * fs.cpu_weight + q.gpu * fs.gpu_weight) for q in trace.queues],
        "cycle_seconds": float(cycle if cycle is not None else trace.cycle),
        "cfg": fs,
        "caps": [u.max_running for u in trace.users],
        "user_names": users,
        "start": T0,
    }
