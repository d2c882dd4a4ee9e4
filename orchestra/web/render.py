"""The Jinja2 environment every page shares: templates shipped in the package, autoescaped, with
the CLI's own formatting of times, durations and sizes (so a page and `maestro` print the same)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from orchestra.cli.common import duration, size
from orchestra.cli.jsonout import iso
from orchestra.services.status import ago, version

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# The navigation bar: (path, label); a page module's routes sit under these paths.
NAV = (("/", "Overview"), ("/queue", "Queue"), ("/tasks", "Tasks"), ("/usage", "Usage"))


def _ago(ts: float | None) -> str:
    return "never" if ts is None else ago(max(0.0, time.time() - ts))


def _pct(part: float, whole: float) -> float:
    """A bar's width in percent, 0..100 (whole 0: an empty bar)."""
    return 0.0 if not whole else max(0.0, min(100.0, 100.0 * part / whole))


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "svg"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(duration=duration, size=size, iso=iso, ago=_ago, pct=_pct)
    env.globals.update(nav=NAV, version=version())
    return env


ENV = environment()


def page(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    """A whole page: the template with the viewer, the current path (for the nav) and `values`."""
    html = ENV.get_template(template).render(request=request, viewer=request.state.viewer,
                                             path=request.url.path, **values)
    return HTMLResponse(html, status_code=status_code)


def fragment(template: str, **values: Any) -> str:
    """A piece of a page (a table body, a log tail) for the live updates, as HTML text."""
    return ENV.get_template(template).render(**values)
