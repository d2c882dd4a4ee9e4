"""The `user.<owner>.<name>` policy for dataset and task names."""
from __future__ import annotations

import re

from orchestra.errors import OrchestraError, PermissionDenied

# The one policy for user names: OS logins, PostgreSQL roles, ORCHESTRA_USER and the <owner> of
# every dataset and task name (security.identity.check_user_name applies it to identities). One
# policy, so that an error suggesting `user.<you>.<name>` always suggests a valid name.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,62}")  # fullmatch: `$` would accept a trailing newline
USER_NAME_RULE = "lower-case letters, digits, '_' or '-', starting with a letter or '_', at most 63 characters"
MAX_OWNER = 63  # PostgreSQL's role names; users.name is String(64)
_NAME = re.compile(r"user\.([^.]*)\.([A-Za-z0-9][A-Za-z0-9._-]*)", re.IGNORECASE)  # fullmatch; owner checked below
MAX_NAME = 200


def owner_of(name: str, kind: str = "dataset") -> str:
    """The owner encoded in a name, or a one-line error showing the expected form."""
    match = _NAME.fullmatch(name)  # not match(): `$` would accept a trailing newline
    if not match or len(name) > MAX_NAME:
        raise OrchestraError(
            f"{kind} name {name!r} is not of the form user.<owner>.<name> "
            f"(letters, digits, '.', '_', '-'; e.g. user.jodafons.my_{kind})"
        )
    owner = match.group(1)
    if len(owner) > MAX_OWNER and USER_NAME.fullmatch(owner[:MAX_OWNER]):
        raise OrchestraError(
            f"{kind} name {name!r} names an owner of {len(owner)} characters, but a user name has at most "
            f"{MAX_OWNER}; name it user.<your login>.<name>"
        )
    if not USER_NAME.fullmatch(owner):
        raise OrchestraError(
            f"{kind} name {name!r} is not of the form user.<owner>.<name>: its owner {owner!r} is not a valid "
            f"user name ({USER_NAME_RULE}); name it user.<your login>.<name>"
        )
    return owner


def check_ownership(name: str, user: str, kind: str, *, admin: bool = False) -> str:
    """Refuse a name that belongs to another user (admins may act for anyone)."""
    owner = owner_of(name, kind)
    if owner != user and not admin:
        raise PermissionDenied(
            f"{kind} name {name!r} belongs to user {owner!r}, not to you ({user!r}); name it user.{user}.<name>"
        )
    return owner
