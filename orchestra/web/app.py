"""The ASGI application of `orchestra web`: routes from the page modules, the viewer of each
request, security headers, and errors as one line (a page for a browser, JSON under /api/).

The app holds one `Context` (settings + engine) for its life; each request reads the database in a
worker thread (Starlette runs plain `def` endpoints in its thread pool). It never writes: there is
no form, no POST route, and on PostgreSQL its role needs only the users' read grants.
"""
from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from dataclasses import asdict, is_dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestra.db import faults
from orchestra.db.engine import is_sqlite
from orchestra.errors import NotFound, OrchestraError, PermissionDenied
from orchestra.services.context import Context
from orchestra.web.render import STATIC, page
from orchestra.web.viewer import viewer_for

log = logging.getLogger("orchestra.web")

# Each module exports `routes` (its pages and their /api/ twins).
PAGE_MODULES = ("overview", "queue_pages", "tasks_pages", "jobs_pages", "usage_pages")

# No inline script may run (an owner-controlled string can never become code); inline styles are
# allowed for the widths of progress bars.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
ADMINS_TTL = 30.0  # seconds an admin list is reused


class Admins:
    """The logins with admin powers, read at most every ADMINS_TTL seconds: on PostgreSQL the
    members of orchestra_admins, on SQLite the owner of the database file (the OS login)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._names: frozenset[str] = frozenset()
        self._read_at = -ADMINS_TTL
        self._lock = threading.Lock()

    def names(self) -> frozenset[str]:
        with self._lock:
            if time.monotonic() - self._read_at >= ADMINS_TTL:
                self._names = self._read()
                self._read_at = time.monotonic()
            return self._names

    def _read(self) -> frozenset[str]:
        if is_sqlite(self.ctx.engine):
            return frozenset({self.ctx.identity.actor})
        with self.ctx.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT rolname FROM pg_roles WHERE pg_has_role(rolname, 'orchestra_admins', 'MEMBER') "
                "AND rolname <> 'orchestra_admins'")).scalars()
            return frozenset(rows)


class ViewerMiddleware:
    """Sets `request.state.viewer` (orchestra/web/viewer.py) and adds the security headers."""

    def __init__(self, app: ASGIApp, ctx: Context, admins: Admins) -> None:
        self.app, self.ctx, self.admins = app, ctx, admins
        self.header = ctx.settings.web.user_header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == self.header]
        # Twice is ambiguous (a proxy that appends rather than replaces would pass the browser's
        # own copy first): then nobody is vouched for.
        value = values[0] if len(values) == 1 else None
        config = self.ctx.settings.web
        admins = self.admins.names() if value else frozenset()
        scope.setdefault("state", {})["viewer"] = viewer_for(config, client[0] if client else None, value, admins)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json_default(obj: Any) -> Any:
    """What the CLI's `print_json` does with a value JSON has no type for (orchestra/cli/common.py)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return str(obj)


def json_document(data: Any, status_code: int = 200) -> Response:
    """An /api/ answer: the CLI's `--json` document (same encoder rules: NaN as the CLI writes
    it, a stray dataclass or object as `print_json` turns it), encoded once and compactly. The
    CLI indents for a person; a 1,000-row document indented is three times the bytes and the
    encoding time, and clients parse both the same."""
    body = json.dumps(data, default=_json_default, separators=(",", ":")).encode()
    return Response(body, status_code=status_code, media_type="application/json")


def _error(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return page(request, "error.html", status_code=status, status=status, message=message)


def _handlers() -> dict[Any, Any]:
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(request, 404, str(exc) if isinstance(exc, NotFound) else f"no page at {request.url.path}")

    async def denied(request: Request, exc: Exception) -> Response:
        return _error(request, 403, str(exc))

    async def refused(request: Request, exc: Exception) -> Response:
        return _error(request, 400, str(exc))

    async def database(request: Request, exc: Exception) -> Response:
        why = faults.describe(exc) if isinstance(exc, DBAPIError) else str(exc)
        log.warning("%s: database unavailable: %s", request.url.path, why)
        return _error(request, 503, f"the database is unavailable ({why}); the page retries by itself")

    return {404: not_found, NotFound: not_found, PermissionDenied: denied, OrchestraError: refused,
            DBAPIError: database}


def routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for name in PAGE_MODULES:
        found.extend(importlib.import_module(f"orchestra.web.{name}").routes)
    found.append(Mount("/static", app=StaticFiles(directory=STATIC), name="static"))
    return found


def create_app(ctx: Context) -> Starlette:
    """The dashboard over `ctx`'s database (the scheduler need not run: it only reads)."""
    app = Starlette(routes=routes(), exception_handlers=_handlers())
    app.state.ctx = ctx
    app.add_middleware(ViewerMiddleware, ctx=ctx, admins=Admins(ctx))
    return app


def context_of(request: Request) -> Context:
    """The app's Context, for an endpoint."""
    return request.app.state.ctx
