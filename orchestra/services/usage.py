"""Per-user fair-share accounting, like Slurm's sshare: usage, shares, the fair-share factor, load.

Numbers come from the same `policy_input` the scheduler uses (see orchestra/services/queue.py).
The fair-share factor is normalised over the users the scheduler is ranking (those with queued
jobs), so for them it is exactly the factor `maestro queue` shows. A user with nothing queued is
not ranked; for them the factor shown is the one they would have if they queued a job now (the
ranked users plus them), marked so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from orchestra import fairshare
from orchestra.accounts import account_of, effective_shares
from orchestra.db.models import User
from orchestra.services.context import Context
from orchestra.services.queue import PolicyView, _user_id, pending_by_user, policy_input


@dataclass
class UserUsage:
    user: str
    account: str | None  # its account (config [accounts.*]); None: an account of its own
    share: float
    norm_share: float  # share / sum of shares over the ranked users (plus this one if idle)
    usage: float  # decayed usage as of now, weighted slot-seconds (1 CPU-core-second = cpu_weight)
    effective: float  # usage + tau * charge of its running jobs: what the ranking uses
    norm_usage: float  # effective / sum of effective over the same users
    fairshare: float  # 2 ** (-norm_usage / norm_share)
    ranked: bool  # the scheduler ranks it now (it has queued jobs); else `fairshare` is "if it queued now"
    running: int
    queued: int
    held: int  # behind scouts, or in tasks not expanded yet
    cap: int  # 0: none
    cap_from: str  # "user" (orchestra user set) or "default" (scheduler.max_running_per_user)


@dataclass
class UsageReport:
    now: float
    half_life_days: float
    rows: list[UserUsage]


def usage_report(ctx: Context, user: str | None = None, now: float | None = None, *, view: PolicyView | None = None,
                 pending: dict[int, tuple[int, int]] | None = None) -> UsageReport:
    """`maestro usage [-u USER]`. `view` and `pending`: the policy input at `now` and
    `pending_by_user`, when the caller has read them already (the dashboard's overview shares one
    read with `status`); else read here."""
    now = time.time() if now is None else now
    settings = ctx.settings
    fs = settings.fairshare
    with ctx.transaction() as session:
        only = _user_id(session, user) if user else None
        if view is None:
            view = policy_input(session, settings, now)
        if pending is None:
            pending = pending_by_user(session)
        users = session.execute(
            select(User.id, User.name, User.share, User.max_running, User.usage, User.usage_at).order_by(User.name)
        ).all()
    ids = [u.id for u in users]
    index = {uid: i for i, uid in enumerate(ids)}
    n = len(ids)
    # Every user's numbers with the policy's own formulas (an input with all users and no tasks).
    everyone = fairshare.PolicyInput(
        now=now,
        user_usage=fairshare.decayed([u.usage for u in users], [u.usage_at for u in users], now, fs),
        user_share=np.array([max(u.share, 1e-9) for u in users], dtype=float),
        user_running=np.array([view.user_running[u] for u in ids], dtype=np.int64),
        user_cap=np.zeros(n, dtype=np.int64),
        task_user=np.zeros(0, dtype=np.int64), task_queue=np.zeros(0, dtype=np.int64),
        task_queued=np.zeros(0, dtype=np.int64), task_priority=np.zeros(0, dtype=np.int64),
        task_created=np.zeros(0), task_scouting=np.zeros(0, dtype=bool),
        queue_free=view.free, queue_charge=view.inp.queue_charge,
        user_running_charge=np.array([view.user_charge.get(u, 0.0) for u in ids], dtype=float),
    )
    eff, _ = fairshare.effective_usage(everyone, fs)
    names = [u.name for u in users]
    raw_share = np.array([u.share for u in users], dtype=float)
    member = account_of(settings.accounts)
    ranked = np.array([index[u] for u in view.owner_ids], dtype=np.int64)
    is_ranked = np.zeros(n, dtype=bool)
    is_ranked[ranked] = True
    default_cap = settings.scheduler.max_running_per_user
    # The ranked users share one group: its shares and factors once, not once per user (1,000
    # ranked users: 1,000 x 1,000 steps otherwise). An idle user's group is the ranked ones plus it.
    ranked_names = [names[j] for j in ranked]
    ranked_share = effective_shares(ranked_names, raw_share[ranked], settings.accounts)
    ranked_factor = fairshare.fairshare_factor(eff[ranked], ranked_share)
    ranked_eff = float(eff[ranked].sum())
    place = {j: k for k, j in enumerate(ranked.tolist())}
    rows = []
    for i, u in enumerate(users):
        if only is not None and u.id != only:
            continue
        if is_ranked[i]:
            share, factor, me, total_eff = ranked_share, ranked_factor, place[i], ranked_eff
        else:
            group = np.r_[ranked, i]
            share = effective_shares(ranked_names + [names[i]], raw_share[group], settings.accounts)
            factor = fairshare.fairshare_factor(eff[group], share)
            me = len(ranked)
            total_eff = float(eff[group].sum())
        queued, held = pending.get(u.id, (0, 0))
        rows.append(UserUsage(
            user=u.name, account=member.get(u.name), share=float(u.share), norm_share=float(share[me] / share.sum()),
            usage=float(everyone.user_usage[i]), effective=float(eff[i]),
            norm_usage=float(eff[i] / total_eff) if total_eff > 0 else 0.0, fairshare=float(factor[me]),
            ranked=bool(is_ranked[i]), running=int(view.user_running[u.id]), queued=queued, held=held,
            cap=int(u.max_running if u.max_running is not None else default_cap),
            cap_from="user" if u.max_running is not None else "default",
        ))
    return UsageReport(now, fs.half_life_days, rows)
