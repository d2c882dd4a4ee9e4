"""Accounts: groups of users with a share of their own, like one level of Slurm's account tree.

A user's normalised share, as in Slurm's classic fair share with accounts:

    S_u = (share_a / sum of the shares of the accounts in play) * (share_u / sum of the shares of a's users in play)

where `a` is the user's account. A user in no account is an account of its own whose share is the
user's share, so with no accounts configured S_u = share_u / sum(share): the flat policy,
unchanged. "In play" means the users being ranked (those with queued work), the same set the
usage is normalised over: an idle account's share goes to the active ones and no slot idles.

Accounts live in the configuration (`[accounts.<name>] share = 2, users = [...]`), next to the
queues they share: the admin edits one file, and `orchestra config show` prints them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from orchestra.config import AccountConfig

_TINY = 1e-12


def account_of(accounts: Mapping[str, AccountConfig]) -> dict[str, str]:
    """user name -> account name, for the users listed in some account."""
    return {user: name for name, account in accounts.items() for user in account.users}


def effective_shares(names: Sequence[str], shares: np.ndarray, accounts: Mapping[str, AccountConfig]) -> np.ndarray:
    """Per user of `names`, a share whose normalisation over them is S_u above.

    `fairshare.allocate` normalises the shares it is given over the users in its input, so
    returning share_a * share_u / sum(shares of a's users here) for account members (and share_u
    for the others) makes its normalised share exactly S_u.
    """
    raw = np.maximum(np.asarray(shares, dtype=np.float64), _TINY)
    if not accounts:
        return raw
    member = account_of(accounts)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        account = member.get(name)
        if account is not None:
            groups.setdefault(account, []).append(i)
    out = raw.copy()
    for account, members in groups.items():
        idx = np.array(members, dtype=np.int64)
        out[idx] = accounts[account].share * raw[idx] / raw[idx].sum()
    return out
