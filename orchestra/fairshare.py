"""Fair-share priority and slot allocation: pure numpy, arrays in, dispatch counts out.

Slurm-style multifactor priority with decayed usage, used at two levels: the fair-share factor
decides *which user* gets the next free slot; the age and task-priority factors decide *which of
that user's tasks* it goes to (a task's --priority orders a user's own tasks, it never buys slots
from other users). Scouting tasks go before everything else.

Usage and its decay
    A user's usage is the weighted slot-seconds its jobs ran: a job in queue q charges
    ``queue_charge[q] = cpu * cpu_weight + gpu * gpu_weight`` per second (the caller builds it from
    FairShareConfig.cpu_weight / gpu_weight and the queue's resources). Usage halves every
    ``half_life_s = half_life_days * 86400`` seconds:  ``decay(u, dt) = u * 2**(-dt / half_life_s)``.

Effective usage (what the ranking uses)
    ``eff_u = usage_u + tau * running_charge_u``,  ``tau = half_life_s / ln 2``,
    where running_charge_u is the charge of the user's live jobs (user_running_charge, or
    user_running times the charge of the user's queues) plus the charge of the slots granted in
    this cycle. A job running forever settles at ``tau * charge`` of decayed usage, so one running
    job weighs exactly what it will weigh in the history: the running term keeps the *running*
    shares at the target within one slot from the first cycle, and the usage term makes a user who
    ran more than their share recently yield to the others until it decays (time scale: the
    half-life). If half_life_days <= 0 usage is not remembered and only running jobs count.

Factors, each normalised to [0, 1]
    fairshare  F_u = 2 ** (-U_u / S_u)  (Slurm's classic formula) with U_u = eff_u / sum(eff)
               and S_u = share_u / sum(share) over the users in the input; F = 1 when sum(eff) = 0.
    age        A_t = clip((now - created_t) / (age_max_days * 86400), 0, 1)  (saturates).
    priority   P_t = (clip(task_priority_t, -100, 100) + 100) / 200.
    total_t    = weight_fairshare * F + weight_age * A + weight_task_priority * P
                 (+ bonus = 1 + |wF| + |wA| + |wP| for scouting tasks: above every non-scout).

Allocation (`allocate`), one slot at a time, exactly equivalent to:
    repeat while a slot is free and some task can take it:
      1. candidates: tasks with queued jobs, a free slot in their queue, and a user under its cap;
      2. pick by (scouting first, highest F_u — i.e. lowest eff_u / share_u —, lowest user index);
      3. within that user, the task with the highest weight_age * A + weight_task_priority * P
         (scouts first; ties: older, then lower task index);
      4. grant it one slot; the user's eff grows by tau * queue_charge of that queue.
    F is monotone in eff_u / share_u and the normalisations are common to all users, so ranking
    by the key eff_u / share_u is ranking by F recomputed after every grant. `total` is the
    Slurm-style number to display; the allocation uses this lexicographic order instead, so
    weight_fairshare only scales the display and age/priority never move slots between users.
    With several queues the choice is greedy per slot (a user with tasks in two queues may take a
    slot another user could only use in one); later cycles hand freed slots back toward balance. Cost:
    O(T log T) to sort tasks, O(slots log U) heap operations (runs of grants to one user are
    batched without changing the result); never anything per queued job.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestra.config import FairShareConfig

_TINY_SHARE = 1e-12
_NO_CAP = 1 << 62


@dataclass(frozen=True)
class PolicyInput:
    """One cycle's view: users (U), tasks with queued jobs (T), queues (Q)."""

    now: float
    user_usage: np.ndarray  # float64 [U] decayed usage (weighted slot-seconds) as of `now`
    user_share: np.ndarray  # float64 [U] shares (>0), default 1
    user_running: np.ndarray  # int64 [U] live jobs of the user right now (all queues)
    user_cap: np.ndarray  # int64 [U] max running jobs per user; <= 0 means no cap
    task_user: np.ndarray  # int64 [T] index into users
    task_queue: np.ndarray  # int64 [T] index into queues
    task_queued: np.ndarray  # int64 [T] jobs of the task waiting for a slot
    task_priority: np.ndarray  # int64 [T] the task's own priority, -100..100
    task_created: np.ndarray  # float64 [T] epoch seconds (age factor)
    task_scouting: np.ndarray  # bool [T] the task is still scouting: its jobs go first
    queue_free: np.ndarray  # int64 [Q] free slots per queue
    queue_charge: np.ndarray  # float64 [Q] usage charged per slot-second in that queue
    # float64 [U] optional: sum of queue_charge over the user's live jobs. When None, each live job
    # is assumed to cost the mean charge of the queues the user has tasks in.
    user_running_charge: np.ndarray | None = None


def decay(usage: np.ndarray, elapsed: float | np.ndarray, half_life_s: float) -> np.ndarray:
    """Usage after `elapsed` seconds of exponential decay (half-life `half_life_s`).

    Negative elapsed times count as 0 (usage never grows by decay); half_life_s <= 0 forgets
    everything, an infinite half-life keeps everything.
    """
    u = np.asarray(usage, dtype=np.float64)
    dt = np.maximum(np.asarray(elapsed, dtype=np.float64), 0.0)
    if not half_life_s > 0:
        return np.zeros(np.broadcast(u, dt).shape, dtype=np.float64)
    return u * np.exp2(-dt / half_life_s)


def decayed(usage: Sequence[float] | np.ndarray, usage_at: Sequence[float] | np.ndarray, now: float,
            cfg: FairShareConfig) -> np.ndarray:
    """Stored usage, each value as of its `usage_at` (the database keeps both), decayed to `now`."""
    return decay(np.asarray(usage, dtype=np.float64), now - np.asarray(usage_at, dtype=np.float64),
                 cfg.half_life_days * 86400.0)


def fairshare_factor(usage: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Slurm's fair-share factor 2**(-usage_norm / share_norm), in [0, 1].

    usage_norm = usage / sum(usage) (0 when nobody has usage, so everyone gets 1);
    share_norm = share / sum(share), shares <= 0 counting as a tiny positive share.
    """
    u = np.maximum(np.nan_to_num(np.asarray(usage, dtype=np.float64), nan=0.0, posinf=0.0), 0.0)
    s = np.maximum(np.nan_to_num(np.asarray(share, dtype=np.float64), nan=0.0), _TINY_SHARE)
    total_u = u.sum()
    if u.size == 0 or total_u <= 0:
        return np.ones(u.shape, dtype=np.float64)
    s_norm = s / s.sum()
    ratio = (u / total_u) / s_norm
    return np.clip(np.exp2(-ratio), 0.0, 1.0)


def _memory(cfg: FairShareConfig) -> tuple[float, float]:
    """(weight of the decayed usage, tau: seconds of usage one running unit of charge is worth)."""
    half_life_s = cfg.half_life_days * 86400.0
    if not half_life_s > 0:  # no memory (also NaN): only running jobs count
        return 0.0, 1.0
    return 1.0, min(half_life_s, 1e15) / math.log(2.0)


def _running_charge(inp: PolicyInput) -> np.ndarray:
    n_users = len(inp.user_usage)
    if inp.user_running_charge is not None:
        return np.maximum(np.asarray(inp.user_running_charge, dtype=np.float64), 0.0)
    charge = np.asarray(inp.queue_charge, dtype=np.float64)
    fallback = float(charge.mean()) if charge.size else 1.0
    users = np.asarray(inp.task_user, dtype=np.int64)
    count = np.bincount(users, minlength=n_users).astype(np.float64)
    total = np.bincount(users, weights=charge[np.asarray(inp.task_queue, dtype=np.int64)], minlength=n_users)
    per_job = np.divide(total, count, out=np.full(n_users, fallback), where=count > 0)
    return np.maximum(np.asarray(inp.user_running, dtype=np.float64), 0.0) * per_job


def _shares(inp: PolicyInput) -> np.ndarray:
    s = np.nan_to_num(np.asarray(inp.user_share, dtype=np.float64), nan=0.0)
    return np.maximum(s, _TINY_SHARE)


def effective_usage(inp: PolicyInput, cfg: FairShareConfig) -> tuple[np.ndarray, float]:
    """(eff_u = usage_u + tau * running_charge_u, tau): the usage the ranking uses, public because
    `maestro usage` and `maestro queue` show it and must show the very number allocate ranks by."""
    weight, tau = _memory(cfg)
    usage = np.maximum(np.nan_to_num(np.asarray(inp.user_usage, dtype=np.float64), nan=0.0, posinf=0.0), 0.0)
    return weight * usage + tau * _running_charge(inp), tau


def _task_terms(inp: PolicyInput, cfg: FairShareConfig) -> tuple[np.ndarray, np.ndarray]:
    """(age factor, priority factor) per task, both in [0, 1]."""
    created = np.asarray(inp.task_created, dtype=np.float64)
    age_max_s = cfg.age_max_days * 86400.0
    if age_max_s > 0:
        age = np.clip(np.nan_to_num((inp.now - created) / age_max_s, nan=0.0), 0.0, 1.0)
    else:
        age = np.zeros(created.shape, dtype=np.float64)
    prio = (np.clip(np.asarray(inp.task_priority, dtype=np.float64), -100.0, 100.0) + 100.0) / 200.0
    return age, prio


def task_factors(inp: PolicyInput, cfg: FairShareConfig) -> dict[str, np.ndarray]:
    """Per task: "fairshare", "age", "priority" in [0, 1], and their weighted "total" (see module doc)."""
    eff, _ = effective_usage(inp, cfg)
    user_f = fairshare_factor(eff, _shares(inp))
    users = np.asarray(inp.task_user, dtype=np.int64)
    fair = user_f[users] if users.size else np.zeros(0, dtype=np.float64)
    age, prio = _task_terms(inp, cfg)
    w_f, w_a, w_p = cfg.weight_fairshare, cfg.weight_age, cfg.weight_task_priority
    bonus = 1.0 + abs(w_f) + abs(w_a) + abs(w_p)
    total = w_f * fair + w_a * age + w_p * prio + bonus * np.asarray(inp.task_scouting, dtype=bool)
    return {"fairshare": fair, "age": age, "priority": prio, "total": total}


@dataclass(frozen=True)
class Ranking:
    """How `allocate` ranks an input; `services.queue.QueueOrder` replays the same ranking to tell
    users their positions, so both take it from here (exact positions need the same arithmetic).

    Users are served lowest `key` first (scouting tasks before everything); each grant raises its
    user's key by its task's `step`; within a user, tasks go in `tasks_in_order`.
    """

    task_user: np.ndarray  # int64 [T]
    key: np.ndarray  # float [U]: effective usage / share
    step: np.ndarray  # float [T]: tau * queue charge / share of the task's user
    room: np.ndarray  # int64 [U]: jobs each user may still start (cap - running; _NO_CAP without a cap)
    scout: np.ndarray  # bool [T]
    within: np.ndarray  # float [T]: age and task-priority weight, which order one user's tasks
    created: np.ndarray  # float [T]: submission time (NaN: last)

    def tasks_in_order(self, live: np.ndarray) -> np.ndarray:
        """The `live` task indices grouped by user, each user's best first: scouts, higher
        within-user priority, older, lower index."""
        return live[np.lexsort((live, self.created[live], -self.within[live], ~self.scout[live],
                                self.task_user[live]))]


def ranking(inp: PolicyInput, cfg: FairShareConfig) -> Ranking:
    """The ranking terms of `inp` (see `Ranking`)."""
    task_user = np.asarray(inp.task_user, dtype=np.int64)
    task_queue = np.asarray(inp.task_queue, dtype=np.int64)
    cap = np.asarray(inp.user_cap, dtype=np.int64)
    running = np.asarray(inp.user_running, dtype=np.int64)
    eff, tau = effective_usage(inp, cfg)
    share = _shares(inp)
    age, prio = _task_terms(inp, cfg)
    return Ranking(
        task_user=task_user,
        key=eff / share,
        step=tau * np.asarray(inp.queue_charge, dtype=np.float64)[task_queue] / share[task_user],
        room=np.where(cap > 0, np.maximum(cap - running, 0), _NO_CAP),
        scout=np.asarray(inp.task_scouting, dtype=bool),
        within=cfg.weight_age * age + cfg.weight_task_priority * prio,
        created=np.nan_to_num(np.asarray(inp.task_created, dtype=np.float64), nan=np.inf),
    )


def allocate(inp: PolicyInput, cfg: FairShareConfig, slot_seconds: float = 300.0) -> np.ndarray:
    """int64 [T]: how many jobs to dispatch from each task this cycle.

    Never more than queue_free per queue, task_queued per task, or cap - running per capped user;
    leaves a slot free only if no task that could use it remains. `slot_seconds` (the cycle length)
    does not change the result: a granted slot is charged as a running job, tau * queue_charge.
    """
    del slot_seconds
    n_tasks = len(inp.task_user)
    take = np.zeros(n_tasks, dtype=np.int64)
    if n_tasks == 0:
        return take
    rank = ranking(inp, cfg)
    task_user, room, key, step, scout = rank.task_user, rank.room, rank.key, rank.step, rank.scout
    task_queue = np.asarray(inp.task_queue, dtype=np.int64)
    queued = np.maximum(np.asarray(inp.task_queued, dtype=np.int64), 0)
    free = np.maximum(np.asarray(inp.queue_free, dtype=np.int64), 0)

    live = np.flatnonzero((queued > 0) & (free[task_queue] > 0) & (room[task_user] > 0))
    if live.size == 0:
        return take
    order = rank.tasks_in_order(live)  # each user's candidate tasks, best first
    seg_user = task_user[order]
    starts = np.flatnonzero(np.r_[True, seg_user[1:] != seg_user[:-1]])
    ends = np.r_[starts[1:], order.size]

    order_l = order.tolist()
    tq = task_queue.tolist()
    left = queued.tolist()
    free_l = free.tolist()
    room_l = room.tolist()
    step_l = step.tolist()
    flag_l = (~scout).astype(np.int8).tolist()  # 0: scouting (goes first), 1: not
    key_l = key.tolist()
    seg_users = seg_user[starts].tolist()
    pos = dict(zip(seg_users, starts.tolist()))  # next candidate task of each user, in order_l
    end = dict(zip(seg_users, ends.tolist()))
    taken = [0] * n_tasks
    slots_left = int(free.sum())

    heap = [(flag_l[order_l[pos[u]]], key_l[u], u) for u in pos]
    heapq.heapify(heap)
    while heap and slots_left > 0:
        flag, x, u = heapq.heappop(heap)
        if room_l[u] <= 0:
            continue
        p, e = pos[u], end[u]
        while p < e and (left[order_l[p]] <= 0 or free_l[tq[order_l[p]]] <= 0):
            p += 1
        pos[u] = p
        if p == e:
            continue
        t = order_l[p]
        f = flag_l[t]
        if f != flag:  # its scouts are done: queue it again with its real (larger) key
            heapq.heappush(heap, (f, x, u))
            continue
        q = tq[t]
        most = min(left[t], free_l[q], room_l[u])
        dx = step_l[t]
        if not heap:
            k = most
            x += dx * most
        else:  # grant while u stays ahead of the next user (exactly what one-by-one would do)
            nxt = heap[0]
            k = 1
            x += dx
            while k < most and (f, x, u) < nxt:
                k += 1
                x += dx
        taken[t] += k
        left[t] -= k
        free_l[q] -= k
        room_l[u] -= k
        slots_left -= k
        if room_l[u] > 0:
            heapq.heappush(heap, (f, x, u))
    take[:] = taken
    return take
