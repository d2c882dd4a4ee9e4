"""`maestro queue` positions are allocate's own order: with N free slots in one queue, allocate
grants exactly the jobs at positions 1..N (random inputs, ties, caps, scouts; no database)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from orchestra.config import FairShareConfig
from orchestra.fairshare import PolicyInput, allocate
from orchestra.services.queue import QueueOrder

CFG = FairShareConfig()


def random_input(rng: np.random.Generator, n_users: int, n_tasks: int, n_queues: int, ties: bool) -> PolicyInput:
    usage = np.zeros(n_users) if ties else np.where(rng.random(n_users) < 0.3, 0.0, rng.exponential(1e6, n_users))
    running = rng.integers(0, 3, n_users) if ties else rng.integers(0, 8, n_users)
    charge = rng.choice([1.0, 4.0, 11.0], n_queues)
    return PolicyInput(
        now=1e9, user_usage=usage, user_share=rng.choice([0.5, 1.0, 2.0, 3.0], n_users),
        user_running=running,
        user_cap=np.where(rng.random(n_users) < 0.4, rng.integers(0, 12, n_users), 0),
        task_user=rng.integers(0, n_users, n_tasks), task_queue=rng.integers(0, n_queues, n_tasks),
        task_queued=rng.integers(0, 9, n_tasks), task_priority=rng.integers(-100, 101, n_tasks),
        task_created=1e9 - rng.uniform(0, 10 * 86400, n_tasks), task_scouting=rng.random(n_tasks) < 0.2,
        queue_free=np.zeros(n_queues, dtype=np.int64), queue_charge=charge,
        user_running_charge=running * rng.choice([1.0, 4.0], n_users),
    )


def job_positions(inp: PolicyInput, q: int) -> dict[int, list[int]]:
    """Per task of queue q: the positions of its queued jobs (0: none)."""
    order = QueueOrder(inp, CFG, q)
    out = {}
    for t in np.flatnonzero(inp.task_queue == q).tolist():
        n = int(inp.task_queued[t])
        if order.offset[t] < 0:
            out[t] = [0] * n
        else:
            out[t] = order.positions([int(inp.task_user[t])] * n, [int(order.offset[t]) + k for k in range(n)]).tolist()
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_first_n_positions_are_what_n_free_slots_dispatch(ties: bool) -> None:
    rng = np.random.default_rng(21 if ties else 22)
    for _ in range(120):
        n_queues = int(rng.integers(1, 3))
        inp = random_input(rng, int(rng.integers(1, 6)), int(rng.integers(1, 12)), n_queues, ties)
        for q in range(n_queues):
            pos = job_positions(inp, q)
            flat = sorted(p for ps in pos.values() for p in ps if p)
            assert flat == list(range(1, len(flat) + 1)), "positions are 1..n with no gap or repeat"
            by_position = sorted((p, t, k) for t, ps in pos.items() for k, p in enumerate(ps) if p)
            order = QueueOrder(inp, CFG, q)
            for n in (1, 3, len(flat)):
                assert order.first(n) == [(t, k) for _, t, k in by_position[:n]]
            for n in range(0, len(flat) + 2):
                free = np.zeros(n_queues, dtype=np.int64)
                free[q] = n
                take = allocate(dataclasses.replace(inp, queue_free=free), CFG)
                for t, ps in pos.items():
                    assert take[t] == sum(1 for p in ps if 0 < p <= n), (n, t, ps, take)
                    placed = [p for p in ps if p]
                    assert placed == sorted(placed) and all(p for p in ps[: len(placed)])  # job-id order


def test_caps_leave_jobs_without_a_position() -> None:
    inp = PolicyInput(now=1e9, user_usage=np.zeros(2), user_share=np.ones(2), user_running=np.array([3, 0]),
                      user_cap=np.array([5, 0]), task_user=np.array([0, 1]), task_queue=np.zeros(2, np.int64),
                      task_queued=np.array([4, 3]), task_priority=np.zeros(2, np.int64),
                      task_created=np.full(2, 1e9), task_scouting=np.zeros(2, bool),
                      queue_free=np.zeros(1, np.int64), queue_charge=np.ones(1),
                      user_running_charge=np.array([3.0, 0.0]))
    pos = job_positions(inp, 0)
    assert pos[1] == [1, 2, 3]  # the fresh user first
    assert pos[0] == [4, 5, 0, 0]  # two more under the cap, then none
