"""Interim order (round-robin over users, then task priority, then age) until fairshare lands."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolicyInput:
    now: float
    user_usage: np.ndarray
    user_share: np.ndarray
    user_running: np.ndarray
    user_cap: np.ndarray
    task_user: np.ndarray
    task_queue: np.ndarray
    task_queued: np.ndarray
    task_priority: np.ndarray
    task_created: np.ndarray
    task_scouting: np.ndarray
    queue_free: np.ndarray
    queue_charge: np.ndarray


def decay(usage, elapsed, half_life_s):  # type: ignore[no-untyped-def]
    return usage * np.exp2(-np.asarray(elapsed) / half_life_s)


def allocate(inp: PolicyInput, cfg, slot_seconds: float = 300.0) -> np.ndarray:  # type: ignore[no-untyped-def]
    take = np.zeros(len(inp.task_user), dtype=np.int64)
    free = inp.queue_free.copy()
    left = inp.task_queued.copy()
    room = np.where(inp.user_cap > 0, inp.user_cap - inp.user_running, 1 << 40)
    order = np.lexsort((inp.task_created, -inp.task_priority, ~inp.task_scouting))
    progress = True
    while progress and free.sum() > 0:
        progress = False
        for u in np.unique(inp.task_user):
            if room[u] <= 0:
                continue
            for t in order:
                if inp.task_user[t] == u and left[t] > 0 and free[inp.task_queue[t]] > 0:
                    take[t] += 1
                    left[t] -= 1
                    free[inp.task_queue[t]] -= 1
                    room[u] -= 1
                    progress = True
                    break
    return take
