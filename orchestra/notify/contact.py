"""A user's e-mail address and opt-out: `maestro user email|notify` (for oneself) and
`orchestra user add|set --email` (admins, for anyone).

On PostgreSQL a user's role has no privilege on `users.email` / `users.notify`: the write goes
through `orchestra_set_contact` (migration 0009), which checks `session_user` is the user or an
admin. On SQLite (one OS user) the same write runs here. The service checks first, so the user
gets a one-line refusal before either runs, and the database is left as it was.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select, update

from orchestra.db.engine import is_sqlite
from orchestra.db.models import User
from orchestra.errors import OrchestraError, PermissionDenied
from orchestra.security.identity import check_user_name
from orchestra.security.privileged import _call, ensure_user
from orchestra.services.context import Context

# One plain address: no display name, spaces, commas or angle brackets (nothing that could add a
# recipient or a header). The same rule is in migration 0009's function.
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+")


@dataclass(frozen=True)
class ContactInfo:
    user: str
    email: str | None
    notify: bool


def check_email(address: str) -> str:
    """`address`, or a one-line error saying what an address looks like."""
    if len(address) > 254 or not EMAIL.fullmatch(address):
        raise OrchestraError(f"{address!r} is not an e-mail address; give one plain address such as "
                             "alice@example.org (no name, no spaces, no commas)")
    return address


def set_contact(ctx: Context, name: str | None = None, *, email: str | None = None, clear: bool = False,
                notify: bool | None = None) -> ContactInfo:
    """Set `name`'s (default: the caller's) address (`clear`: remove it) and/or opt-in; returns the result.

    Only the user themself or an admin may; the address is checked before anything is written."""
    name = check_user_name(name or ctx.user, "user name")
    if email is not None:
        check_email(email)
    if name != ctx.user and not ctx.admin:
        raise PermissionDenied(f"the e-mail settings of {name!r} are theirs; only {name} or an admin may change them")
    stored = "" if clear else email
    with ctx.transaction() as session:
        if stored is not None or notify is not None:
            if is_sqlite(ctx.engine):
                uid = ensure_user(session, name, ctx.settings.user_shares.get(name, 1.0))
                values: dict[str, object] = {}
                if stored is not None:
                    values["email"] = stored or None
                if notify is not None:
                    values["notify"] = notify
                session.execute(update(User).where(User.id == uid).values(**values))
            else:
                _call(session, func.orchestra_set_contact(name, stored, notify))
            what = " ".join(p for p in (
                "email cleared" if clear else f"email={email}" if email is not None else "",
                "" if notify is None else f"notify={'on' if notify else 'off'}") if p)
            ctx.audit(session, "user contact", f"{name}: {what}")
        row = session.execute(select(User.email, User.notify).where(User.name == name)).first()
    return ContactInfo(name, row[0] if row else None, bool(row[1]) if row else True)
