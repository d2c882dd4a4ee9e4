"""A small discrete-time simulator of the fair-share policy: no database, no backend.

Users with shares, tasks (user, submit time, jobs, job duration, queue), queues with slot counts.
Each cycle, at ``t = k * cycle_seconds``, it does what the scheduler does, in the same order:

1. decay every user's usage to ``t`` and charge the slot-seconds its jobs ran since the last cycle
   (times the queue's charge);
2. end the jobs whose duration has elapsed (a job started at s ends at s + duration);
3. show the submitted tasks' queued jobs to `fairshare.allocate` and start what it grants.

A task with ``scouts > 0`` first exposes only that many jobs, marked as scouting; the rest are
queued once every scout has finished (as the scheduler releases a task after its scouts).

It records, after each cycle's dispatch, the running slots and the usage of every user, and per
task when its first and last jobs were dispatched. `write_csv` writes the per-cycle series.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from orchestra.config import FairShareConfig
from orchestra.fairshare import PolicyInput, allocate, decay


@dataclass(frozen=True)
class SimQueue:
    slots: int
    charge: float = 1.0  # usage per slot-second (cpu * cpu_weight + gpu * gpu_weight)


@dataclass(frozen=True)
class SimTask:
    user: int
    submit: float  # seconds since the start of the simulation
    n_jobs: int
    duration: float  # seconds each job runs
    queue: int = 0
    priority: int = 0
    scouts: int = 0


@dataclass
class SimResult:
    times: np.ndarray  # float64 [C] time of each cycle
    running: np.ndarray  # int64 [C, U] running jobs per user after the cycle's dispatch
    usage: np.ndarray  # float64 [C, U] decayed usage per user at the cycle
    queue_running: np.ndarray  # int64 [C, Q] running jobs per queue after dispatch
    first_start: np.ndarray  # float64 [T] when the task's first job started (nan: never)
    last_start: np.ndarray  # float64 [T] when its last job started (nan: not all started)
    started: np.ndarray  # int64 [T] jobs started so far
    user_names: list[str] = field(default_factory=list)


def simulate(
    shares: Sequence[float],
    tasks: Sequence[SimTask],
    queues: Sequence[SimQueue],
    cycles: int,
    *,
    cycle_seconds: float = 300.0,
    cfg: FairShareConfig | None = None,
    caps: Sequence[int] | None = None,
    initial_usage: Sequence[float] | None = None,
    user_names: Sequence[str] | None = None,
    start: float = 1_000_000.0,
) -> SimResult:
    """Run `cycles` scheduler cycles; see the module docstring for what one cycle does."""
    cfg = cfg or FairShareConfig()
    n_users, n_tasks, n_queues = len(shares), len(tasks), len(queues)
    share = np.asarray(shares, dtype=np.float64)
    cap = np.zeros(n_users, dtype=np.int64) if caps is None else np.asarray(caps, dtype=np.int64)
    usage = np.zeros(n_users) if initial_usage is None else np.asarray(initial_usage, dtype=np.float64).copy()
    slots = np.array([q.slots for q in queues], dtype=np.int64)
    charge = np.array([q.charge for q in queues], dtype=np.float64)
    half_life_s = cfg.half_life_days * 86400.0

    t_user = np.array([t.user for t in tasks], dtype=np.int64)
    t_queue = np.array([t.queue for t in tasks], dtype=np.int64)
    t_submit = start + np.array([t.submit for t in tasks], dtype=np.float64)
    t_dur = np.array([t.duration for t in tasks], dtype=np.float64)
    t_prio = np.array([t.priority for t in tasks], dtype=np.int64)
    t_jobs = np.array([t.n_jobs for t in tasks], dtype=np.int64)
    t_scouts = np.minimum(np.array([t.scouts for t in tasks], dtype=np.int64), t_jobs)
    started = np.zeros(n_tasks, dtype=np.int64)
    ended = np.zeros(n_tasks, dtype=np.int64)
    first_start = np.full(n_tasks, np.nan)
    last_start = np.full(n_tasks, np.nan)

    # running jobs, in batches: (task, start, count); a batch ends at start + duration of its task
    b_task = np.zeros(0, dtype=np.int64)
    b_start = np.zeros(0, dtype=np.float64)
    b_count = np.zeros(0, dtype=np.int64)

    times = start + cycle_seconds * np.arange(cycles, dtype=np.float64)
    rec_running = np.zeros((cycles, n_users), dtype=np.int64)
    rec_usage = np.zeros((cycles, n_users), dtype=np.float64)
    rec_queue = np.zeros((cycles, n_queues), dtype=np.int64)
    prev = start
    for c, now in enumerate(times):
        # 1. decay, then charge what ran in (prev, now]
        b_end = b_start + t_dur[b_task]
        ran = np.clip(np.minimum(b_end, now) - np.maximum(b_start, prev), 0.0, None)
        usage = decay(usage, now - prev, half_life_s)
        usage += np.bincount(t_user[b_task], weights=ran * b_count * charge[t_queue[b_task]], minlength=n_users)
        # 2. end jobs whose duration elapsed
        done = b_end <= now
        ended += np.bincount(b_task[done], weights=b_count[done], minlength=n_tasks).astype(np.int64)
        b_task, b_start, b_count = b_task[~done], b_start[~done], b_count[~done]
        # 3. queued jobs of submitted tasks; scouts first, the rest once the scouts have ended
        scouting = (t_scouts > 0) & (ended < t_scouts)
        visible = np.where(scouting, t_scouts, t_jobs)
        queued = np.where(t_submit <= now, np.maximum(visible - started, 0), 0)
        user_running = np.bincount(t_user[b_task], weights=b_count, minlength=n_users).astype(np.int64)
        user_running_charge = np.bincount(t_user[b_task], weights=b_count * charge[t_queue[b_task]], minlength=n_users)
        busy = np.bincount(t_queue[b_task], weights=b_count, minlength=n_queues).astype(np.int64)
        sel = np.flatnonzero(queued > 0)
        if sel.size:
            inp = PolicyInput(
                now=float(now), user_usage=usage.copy(), user_share=share, user_running=user_running,
                user_cap=cap, task_user=t_user[sel], task_queue=t_queue[sel], task_queued=queued[sel],
                task_priority=t_prio[sel], task_created=t_submit[sel], task_scouting=scouting[sel],
                queue_free=np.maximum(slots - busy, 0), queue_charge=charge,
                user_running_charge=user_running_charge,
            )
            take = allocate(inp, cfg, slot_seconds=cycle_seconds)
            go = take > 0
            if go.any():
                tasks_go = sel[go]
                first_start[tasks_go] = np.where(started[tasks_go] == 0, now, first_start[tasks_go])
                started[tasks_go] += take[go]
                last_start[tasks_go[started[tasks_go] == t_jobs[tasks_go]]] = now
                b_task = np.r_[b_task, tasks_go]
                b_start = np.r_[b_start, np.full(tasks_go.size, now)]
                b_count = np.r_[b_count, take[go]]
        rec_running[c] = np.bincount(t_user[b_task], weights=b_count, minlength=n_users).astype(np.int64)
        rec_queue[c] = np.bincount(t_queue[b_task], weights=b_count, minlength=n_queues).astype(np.int64)
        rec_usage[c] = usage
        prev = now
    names = list(user_names) if user_names is not None else [f"user{i}" for i in range(n_users)]
    return SimResult(times=times, running=rec_running, usage=rec_usage, queue_running=rec_queue,
                     first_start=first_start, last_start=last_start, started=started, user_names=names)


def write_csv(result: SimResult, out: Path | str | TextIO) -> None:
    """One row per cycle: cycle, time (s from the start), running.<user>..., usage.<user>..."""
    names = result.user_names or [f"user{i}" for i in range(result.running.shape[1])]
    if isinstance(out, (str, Path)):
        with open(out, "w", newline="", encoding="utf-8") as fh:
            _write_rows(result, names, fh)
    else:
        _write_rows(result, names, out)


def _write_rows(result: SimResult, names: list[str], fh: TextIO) -> None:
    writer = csv.writer(fh)
    writer.writerow(["cycle", "time"] + [f"running.{n}" for n in names] + [f"usage.{n}" for n in names])
    t0 = result.times[0] if result.times.size else 0.0
    for c in range(result.times.size):
        writer.writerow([c, f"{result.times[c] - t0:g}"] + result.running[c].tolist()
                        + [f"{u:.6g}" for u in result.usage[c]])
