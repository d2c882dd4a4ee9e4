"""Database URLs without their passwords, for anything a person or a log will read.

ORCHESTRA_DATABASE_URL may carry a PostgreSQL password. `orchestra config show` output gets pasted
into tickets and error messages end up in logs, so whatever prints a database URL prints
`mask_url(url)` instead.
"""
from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
# Unparsable: from "scheme://user:" (or "user:") to the last "@", whatever the password contains.
_USERINFO = re.compile(r"^(?P<head>(?:[^:/@?#]*://)?[^:/@]*:).*@")
_QUERY_SECRETS = ("password", "passwd", "sslpassword")


def mask_url(url: str) -> str:
    """`url` with any password replaced by ***: postgresql://bob:***@db/orchestra.

    A URL with no password comes back unchanged (not re-rendered). A string SQLAlchemy cannot
    parse, or whose password holds an unescaped "@" (parsed as part of the host), is masked by
    pattern from "://user:" to the last "@": masking too much is fine, too little is not.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _USERINFO.sub(rf"\g<head>{MASK}@", url, count=1)
    if "@" in (parsed.host or ""):
        return _USERINFO.sub(rf"\g<head>{MASK}@", url, count=1)
    secret_keys = [key for key in parsed.query if key.lower() in _QUERY_SECRETS]
    if parsed.password is None and not secret_keys:
        return url
    if secret_keys:
        parsed = parsed.update_query_dict({key: MASK for key in secret_keys})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)  # query values are escaped
