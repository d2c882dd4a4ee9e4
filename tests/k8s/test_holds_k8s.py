"""The Kubernetes API cannot take pods for a while (a 503 while the API server has lost etcd, the
namespace's ResourceQuota full): the cluster's failure, not the jobs'. The jobs go back to the queue
uncharged, the queue is held with the reason (`maestro queue` says it on every queued row), one
probe launch at a time tries again with back-off, and once the API takes pods again every job runs
exactly once with one attempt. Cycles run in this process against the simulator, on both databases.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from orchestra.scheduler import holds
from orchestra.services.context import Context
from tests.e2e.scheduler_helpers import cycles_until, task_status
from tests.e2e.test_holds import charged, hold_row, next_probe_in
from tests.helpers import Cli
from tests.k8s.test_e2e_k8s import K8sEnv, assert_clean, create, register

TASK = "user.alice.sturdy"  # test_holds' helpers look this task up

FAULTS = {
    "api-503": (dict(code=503), "failed 5 times; last: HTTP 503"),
    "quota": (dict(code=403, message='pods "x" is forbidden: exceeded quota: compute, requested: cpu=500m, '
                                     'used: cpu=4, limited: cpu=4'), "kubernetes quota: pods "),
}


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holds, "INITIAL_BACKOFF", 0.1)
    monkeypatch.setattr(holds, "MAX_BACKOFF", 0.4)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_api_that_takes_no_pods_holds_the_queue_and_charges_nothing(
        cli: Cli, storage: Path, k8s_env: K8sEnv, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    caplog.set_level(logging.INFO, logger="orchestra.scheduler")
    sim = k8s_env(timeout=0.5)
    deny, said = FAULTS[fault]
    sim.deny("create", **deny)
    register(cli, storage, 4)
    create(cli, "sturdy", "echo %DATA %IN %OUT", "--bypass")
    ctx = Context.from_env()
    scheduler = cycles_until(ctx, lambda: (h := hold_row(ctx)) is not None and h.tries >= 3)
    next_probe_in(ctx, 3600)  # what users are shown, without a probe falling due mid-look
    assert charged(ctx) == (0, 0, 0) and sim.pods() == []
    assert task_status(ctx, TASK) == "running"
    jobs = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
    assert [(j["status"], j["attempts"]) for j in jobs] == [("queued", 0)] * 4
    rows = [r for r in json.loads(cli.ok("maestro queue --json").out)["rows"] if r["state"] == "queued"]
    assert rows  # one row per task and queue
    for row in rows:
        assert row["reason"].startswith("queue LPS/cpu held: ") and said in row["reason"], row
    sim.allow_all()  # etcd is back / the quota was raised
    next_probe_in(ctx, 0)
    cycles_until(ctx, lambda: task_status(ctx, TASK) == "completed", timeout=120, scheduler=scheduler)
    jobs = json.loads(cli.ok(f"maestro job list -t {TASK} --json").out)
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * 4
    assert charged(ctx) == (4, 0, 4) and hold_row(ctx) is None
    # Each job's pod was applied exactly once. The HTTP creates may number more than 4: a create whose
    # answer outlives the client's 0.5 s timeout on a busy machine is sent again and adopted on 409.
    assert sorted(sim.store.creates.values()) == [1] * 4
    cycles_until(ctx, lambda: sim.pods() == [], scheduler=scheduler)  # ended pods are released
    assert_clean(sim)
    lines = [r.getMessage() for r in caplog.records if r.name == "orchestra.scheduler"]
    assert len([x for x in lines if x.startswith("queue LPS/cpu held: ")]) == 1, lines
    assert len([x for x in lines if x.startswith("queue LPS/cpu hold cleared: ")]) == 1, lines
    scheduler.lease.release()
    scheduler.close()
    ctx.engine.dispose()
