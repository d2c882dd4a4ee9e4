"""Users as PostgreSQL login roles: add, remove, list, set share and cap; who may schedule.

Membership decides power: `orchestra_users` may submit, `orchestra_admins` may act for others and
manage users, `orchestra_scheduler` may take the scheduler lease. Creating a role needs the
schema owner's CREATEROLE, so `add` and `remove` call the owner's checked functions
(migration 0003); `set` is a plain UPDATE that only orchestra_admins hold the privilege for.
SQLite has no roles: its users are names in one person's database (see identity.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from orchestra.db.engine import is_sqlite
from orchestra.db.models import User
from orchestra.errors import OrchestraError, PermissionDenied
from orchestra.security.identity import Identity, check_user_name, resolve
from orchestra.security.privileged import _call, ensure_user
from orchestra.services.context import Context

GROUPS = ("orchestra_users", "orchestra_admins", "orchestra_scheduler")


@dataclass(frozen=True)
class UserRow:
    name: str
    login: bool  # has a PostgreSQL login role (always False on SQLite)
    groups: list[str]
    share: float | None  # None: a role that has not used Orchestra yet
    max_running: int | None


def _require_admin(ctx: Context, what: str) -> None:
    if not ctx.admin:
        where = ("members of orchestra_admins (`orchestra user add NAME --admin`)" if not is_sqlite(ctx.engine)
                 else "the owner of this SQLite database, as themselves (unset ORCHESTRA_USER)")
        raise PermissionDenied(f"only admins may {what}; {ctx.user!r} is not one: admins are {where}")


def _postgres_only(ctx: Context, what: str) -> None:
    if is_sqlite(ctx.engine):
        raise OrchestraError(
            f"`orchestra user {what}` manages PostgreSQL login roles; this is a single-user SQLite database, "
            "where users are names set with ORCHESTRA_USER (README: Security model)")


def add_user(ctx: Context, name: str, *, admin: bool = False, scheduler: bool = False,
             password: str | None = None) -> str:
    check_user_name(name, "user name")
    _postgres_only(ctx, "add")
    _require_admin(ctx, "add users")
    with ctx.transaction() as session:
        _call(session, func.orchestra_add_user(name, admin, scheduler, password))
        ctx.audit(session, "user add" + (" --admin" if admin else "") + (" --scheduler" if scheduler else ""), name)
    return name


def how_to_connect(ctx: Context, name: str) -> list[str]:
    """What the new user needs: nothing with peer authentication, a URL otherwise."""
    url = make_url(ctx.settings.database_url)
    socket_url = url.set(username=None, password=None, host=None, port=None).render_as_string(hide_password=True)
    return [
        f"{name} may now use Orchestra as the PostgreSQL role {name!r}:",
        f"  on this machine (peer authentication, OS login {name}): database_url = \"{socket_url}\"",
        f"  over TCP with a password in ~{name}/.pgpass: "
        f"database_url = \"postgresql://{name}@{url.host or 'HOST'}:{url.port or 5432}/{url.database}\"",
    ]


def remove_user(ctx: Context, name: str) -> bool:
    check_user_name(name, "user name")
    _postgres_only(ctx, "remove")
    _require_admin(ctx, "remove users")
    with ctx.transaction() as session:
        dropped = bool(_call(session, func.orchestra_remove_user(name)))
        ctx.audit(session, "user remove", name)
    return dropped


def list_users(ctx: Context) -> list[UserRow]:
    with ctx.transaction() as session:
        known = {r.name: r for r in session.execute(select(User.name, User.share, User.max_running))}
        roles: dict[str, list[str]] = {}
        if not is_sqlite(ctx.engine):
            # PostgreSQL 16+ gives a CREATEROLE role (the schema owner) ADMIN OPTION on the roles it
            # creates, with neither INHERIT nor SET: that is no membership, so it is not listed.
            real = ("AND (m.inherit_option OR m.set_option)"
                    if session.scalar(text("SELECT current_setting('server_version_num')::int")) >= 160000 else "")
            for member, group in session.execute(text(
                "SELECT r.rolname, g.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid "
                f"JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = ANY(:groups) AND r.rolcanlogin {real}"),
                    {"groups": list(GROUPS)}):
                roles.setdefault(member, []).append(group.removeprefix("orchestra_"))
    names = sorted(set(known) | set(roles))
    return [UserRow(n, n in roles, sorted(roles.get(n, [])), known[n].share if n in known else None,
                    known[n].max_running if n in known else None) for n in names]


def set_user(ctx: Context, name: str, *, share: float | None, max_running: int | None) -> tuple[float, int | None]:
    check_user_name(name, "user name")
    _require_admin(ctx, "change users")
    with ctx.transaction() as session:
        uid = ensure_user(session, name, ctx.settings.user_shares.get(name, 1.0))
        values = {k: v for k, v in {"share": share, "max_running": max_running}.items() if v is not None}
        if values:
            session.execute(update(User).where(User.id == uid).values(**values))
            ctx.audit(session, "user set " + " ".join(f"{k}={v}" for k, v in values.items()), name)
        row = session.execute(select(User.share, User.max_running).where(User.id == uid)).one()
    return row[0], row[1]


def require_scheduler(ctx: Context) -> Identity:
    """Only the admin's service may schedule: a member of orchestra_scheduler (PostgreSQL)."""
    me = resolve(ctx.engine, None)  # the scheduler ignores ORCHESTRA_USER: it acts for nobody
    if not me.scheduler:
        raise PermissionDenied(
            f"the role {me.actor!r} may not run the scheduler: only members of orchestra_scheduler may "
            "(an admin creates the service's role with `orchestra user add NAME --scheduler`)")
    return me
