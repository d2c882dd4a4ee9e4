"""What keeps the dashboard's list routes fast at 1,000,000 queued jobs (scripts/bench_web.py
times them) without changing a number: the overview reads the policy input once for both of its
reports, and the /api/ documents are the CLI's `--json` encoded compactly, once. SQLite and
PostgreSQL, over a world made by real scheduler cycles (tests/db/listing_world.py)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from orchestra.cli import jsonout
from orchestra.services import queue, usage
from orchestra.services.context import Context
from orchestra.services.status import status
from orchestra.web import overview
from tests.db.listing_world import World, listing_world  # noqa: F401  (the fixture)
from tests.helpers import Cli
from tests.web.conftest import WebClient
from tests.web.test_queue_pages import same


def test_the_overview_reads_the_policy_input_once(listing_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = queue.policy_input

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(queue, "policy_input", counted)
    monkeypatch.setattr(usage, "policy_input", counted)
    ctx = Context.from_env()
    try:
        shown = overview.overview(ctx)
        assert len(calls) == 1, "status and usage should share the overview's one policy input"
        # ... and they say what each says when it reads its own (as `orchestra status`, `maestro usage`)
        alone = status(ctx, calls[0])
        assert [(u.user, u.queued, u.held, u.running) for u in shown.status.users] == \
               [(u.user, u.queued, u.held, u.running) for u in alone.users]
        assert jsonout.plain(shown.status.queues) == jsonout.plain(alone.queues)
        by_itself = usage.usage_report(ctx, now=calls[0])
        assert shown.users_total == len(by_itself.rows)
        assert len(calls) == 3
    finally:
        ctx.engine.dispose()


@pytest.mark.parametrize("path, command", [
    ("/api/queue", "maestro queue --json"), ("/api/queue?jobs=1", "maestro queue --json --jobs"),
    ("/api/tasks", "maestro task list --json"), ("/api/status", "orchestra status --json"),
    ("/api/usage", "maestro usage --json"),
])
def test_api_documents_are_the_cli_json_compact(web: WebClient, listing_world: World, cli: Cli, path: str,
                                                command: str) -> None:
    response = web.get(path)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert "\n" not in response.text and not response.text.startswith("{\n")  # compact, not indented
    printed = json.loads(cli.ok(command).out)
    same(response.json(), printed)
    if isinstance(printed, list):  # the list's entries in the CLI's order, with the CLI's keys
        assert [list(r) for r in response.json()] == [list(r) for r in printed]
