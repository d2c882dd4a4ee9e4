"""The dashboard's query parameters (`?user=`, `?state=`, `?page=`, `?jobs=`, `?limit=`): each read
one way for every page and its /api/ twin, and anything unusable refused with one line naming
the problem and the fix (a 400, app.py), never a 500."""
from __future__ import annotations

from starlette.requests import Request

from orchestra.errors import OrchestraError
from orchestra.naming import USER_NAME


def text_param(request: Request, name: str) -> str | None:
    """A filter's value, or None when absent or blank (an empty form field means "any")."""
    value = request.query_params.get(name, "").strip()
    return value or None


def flag_param(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "").strip().lower()
    if value in ("", "0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    raise OrchestraError(f"{name}={value!r} is not a yes/no value; use {name}=1 or leave it out")


def int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    """A whole number in [low, high], or a one-line refusal naming the range."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f"{low} or more"
        raise OrchestraError(f"{name}={raw!r} is not a whole number in {span}; use e.g. {name}={default}")
    return value


def page_number(request: Request) -> int:
    """`?page=`: 1 by default; anything but a whole number from 1 up is refused in one line."""
    raw = request.query_params.get("page", "1").strip() or "1"
    if not raw.isdigit() or int(raw) < 1 or len(raw) > 9:
        raise OrchestraError(f"page {raw!r} is not a page number; use ?page=1 or more")
    return int(raw)


def state_filter(request: Request, allowed: list[str]) -> str | None:
    """`?state=`: one of `allowed`, or none (empty: none)."""
    state = request.query_params.get("state", "").strip() or None
    if state is not None and state not in allowed:
        raise OrchestraError(f"state {state!r} is unknown; use one of: {', '.join(allowed)} (or no state filter)")
    return state


def user_filter(request: Request) -> str | None:
    user = request.query_params.get("user", "").strip() or None
    if user is not None and not USER_NAME.fullmatch(user):
        raise OrchestraError(f"user {user!r} is not a user name; give a login name, or no user filter")
    return user
