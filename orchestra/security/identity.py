"""Who is asking, decided by something the caller cannot forge.

PostgreSQL (shared mode): the identity is `session_user`, the role the server authenticated (peer
authentication on the Unix socket = the OS login; or a password / certificate). `ORCHESTRA_USER`
is refused unless that role is an admin, who may then act for a user like `sudo -u`: with that
user's powers, and every write records both names in the audit log.

SQLite (personal mode): the database file belongs to one OS account and nobody else can open it,
so the OS login is the admin; `ORCHESTRA_USER` lets that person play other made-up users for
demos and tests, with those users' (non-admin) powers.
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass

from sqlalchemy import Engine, text

from orchestra.db.engine import is_sqlite
from orchestra.errors import OrchestraError
from orchestra.naming import USER_NAME, USER_NAME_RULE

__all__ = ["USER_NAME", "Identity", "check_user_name", "resolve"]


@dataclass(frozen=True)
class Identity:
    user: str  # whom the request is for: the owner of what it creates, whose powers it has
    actor: str  # who is really asking: the database role (PostgreSQL) or the OS login (SQLite)
    admin: bool  # `user` has admin powers
    scheduler: bool  # `actor` may run the scheduler service


def check_user_name(name: str, where: str, fix: str = "use a login name") -> str:
    """Refuse a name that could not be the <owner> of a dataset or task name (orchestra/naming.py).

    Every identity passes here before it owns anything, so no later message suggests an invalid
    name such as `user.Bob Smith.<name>`."""
    if not USER_NAME.fullmatch(name):
        raise OrchestraError(f"{where} {name!r} is not a valid user name ({USER_NAME_RULE}); {fix}")
    return name


def resolve(engine: Engine, env_user: str | None, login: str | None = None) -> Identity:
    """The identity of this process on this database (`env_user`: ORCHESTRA_USER, if set)."""
    if env_user is not None:
        check_user_name(env_user, "ORCHESTRA_USER")
    if is_sqlite(engine):
        login = login or getpass.getuser()
        if env_user is None:
            check_user_name(login, "your login", "set ORCHESTRA_USER to a valid name to use Orchestra as that user")
        user = env_user or login
        return Identity(user=user, actor=login, admin=user == login, scheduler=True)
    with engine.connect() as conn:
        actor, actor_admin, scheduler = conn.execute(text(
            "SELECT session_user, orchestra_is_admin(), pg_has_role(session_user, 'orchestra_scheduler', 'MEMBER')"
        )).one()
        check_user_name(actor, "your database role",
                        "ask an admin for a role named like a login (orchestra user add NAME)")
        if env_user is None or env_user == actor:
            return Identity(user=actor, actor=actor, admin=bool(actor_admin), scheduler=bool(scheduler))
        if not actor_admin:
            raise OrchestraError(
                f"ORCHESTRA_USER={env_user} is refused: on PostgreSQL you are the role you connect as ({actor!r}) "
                "and only members of orchestra_admins may act for another user; unset ORCHESTRA_USER"
            )
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": env_user}).first()
        target_admin = bool(exists) and bool(conn.execute(
            text("SELECT pg_has_role(CAST(:n AS name), 'orchestra_admins', 'MEMBER')"), {"n": env_user}).scalar())
    return Identity(user=env_user, actor=actor, admin=target_admin, scheduler=False)
