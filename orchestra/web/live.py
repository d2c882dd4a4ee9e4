"""Live parts of a page, as server-sent events (no polling JavaScript per page, no build step).

A page marks a live region with `data-live="/live/..."`; static/orchestra.js opens one EventSource
per such URL and, for each event, replaces the inner HTML of the elements whose ids the event names.
The server side here re-renders the fragments every `interval` seconds in a worker thread (the
database calls are blocking) and sends them only when they changed, so an idle page costs one
small query per interval and no bytes. A comment line every 15 s keeps proxies from closing the
stream; the browser reconnects by itself after a dropped connection.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

KEEPALIVE = 15.0  # seconds between comment lines when nothing changed


def stream(request: Request, render: Callable[[], dict[str, str]], interval: float = 1.0) -> StreamingResponse:
    """An event stream of `render()`'s fragments ({element id: inner HTML}), sent when they change.
    `render` runs in a thread and may return {} when there is nothing to show any more."""

    async def events() -> AsyncIterator[str]:
        last: dict[str, str] = {}
        quiet = 0.0
        while not await request.is_disconnected():
            fragments = await run_in_threadpool(render)
            changed = {k: v for k, v in fragments.items() if last.get(k) != v}
            if changed:
                last.update(changed)
                quiet = 0.0
                yield f"data: {json.dumps(changed)}\n\n"
            elif quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keepalive\n\n"
            await asyncio.sleep(interval)
            quiet += interval

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
