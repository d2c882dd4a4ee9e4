"""Who a job runs as: its owner's account (uid, gid, groups, home), never root.

One lookup for every backend (Kubernetes pods' securityContext, local processes). The source of
truth, in order:

1. the config: `[users.<name>] uid = 1001, gid = 1001` (optional `groups = [...]`, `home = "..."`);
   for clusters whose nodes do not share the scheduler host's account database;
2. the OS account database on this host: `pwd.getpwnam`, `os.getgrouplist` (supplementary
   groups, through NSS: LDAP and SSSD accounts count), `pw_dir`.

A user with neither has no account, and uid 0 or gid 0 (in any group list) is refused: both raise
`NoAccount` with a one-line reason, before anything is started. `groups` is the whole group list
the job runs with, the primary gid first.

OS lookups are cached per process (a scheduler restart sees changed group memberships); a failed
lookup is not cached, so an account added later is found by the next launch. Config entries are
read from the settings on every call, so they always win over the cache.
"""
from __future__ import annotations

import functools
import os
import pwd
from dataclasses import dataclass

from orchestra.config import Settings
from orchestra.errors import OrchestraError

NO_HOME = "/"  # the home of an account from the config that names none


@dataclass(frozen=True)
class OwnerAccount:
    """The ids a job of `name` runs with; `groups` holds every group, the primary `gid` first."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class NoAccount(OrchestraError):
    """The user has no account a job may run as (none known, or root's); the message says why and how to fix it."""


def owner_account(settings: Settings, user: str) -> OwnerAccount:
    """The account `user`'s jobs run as: the config's `[users.<user>]` ids, else the OS account's."""
    configured = settings.user_accounts.get(user)
    if configured is not None:
        groups = (configured.gid, *(g for g in configured.groups if g != configured.gid))
        account = OwnerAccount(user, configured.uid, configured.gid, tuple(dict.fromkeys(groups)),
                               configured.home or NO_HOME)
        where = f"[users.{user}] in the config"
    else:
        account = _os_account(user)
        where = "its OS account on this host"
    _refuse_root(account, where)
    return account


def _refuse_root(account: OwnerAccount, where: str) -> None:
    fix = (f"give the user an account of its own, or set [users.{account.name}] uid = ..., gid = ... "
           "in the config (ids of 1 or more)")
    if account.uid == 0:
        raise NoAccount(f"user {account.name!r} maps to uid 0 (root) through {where}; a job never runs as root: {fix}")
    if 0 in (account.gid, *account.groups):
        raise NoAccount(f"user {account.name!r} has group 0 (root) through {where}; a job never runs with root's "
                        f"group: {fix}")


@functools.lru_cache(maxsize=4096)
def _os_account(user: str) -> OwnerAccount:
    """The OS account database's entry (exceptions are not cached: a later lookup tries again)."""
    try:
        entry = pwd.getpwnam(user)
    except (KeyError, ValueError):  # unknown, or a name no account can have (a NUL byte)
        raise NoAccount(
            f"user {user!r} has no OS account on this host and no uid/gid in [users.{user}]; create the account "
            f"(useradd, LDAP) or set [users.{user}] uid = ..., gid = ... in the config") from None
    try:
        listed = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:  # some NSS back-ends fail here: the primary group still holds
        listed = [entry.pw_gid]
    groups = tuple(dict.fromkeys([entry.pw_gid, *listed]))
    return OwnerAccount(user, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or NO_HOME)
