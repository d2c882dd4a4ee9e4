"""`orchestra config show`: the effective settings and where each came from, text and JSON."""
from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Cli

EXTRA = """
[accounts.physics]
share = 2
users = ["alice", "bob"]

[clusters.K8S]
backend = "kubernetes"
storage = "{storage}"
[clusters.K8S.queues.cpu]
slots = 3
[clusters.K8S.kubernetes]
namespace = "batch"
storage_pvc = "shared"
poll_seconds = 2.5
"""


def test_config_show_reports_values_and_their_origin(cli: Cli, env: dict[str, str], storage: Path) -> None:
    path = Path(env["ORCHESTRA_CONFIG"])
    path.write_text(path.read_text() + EXTRA.format(storage=storage))
    data = json.loads(cli.ok("orchestra config show --json").out)
    assert data["config_file"] == str(path) and data["user"] == "alice"
    assert data["scheduler"]["scouts"] == 3 and data["sources"]["scheduler.scouts"] == f"file {path}"
    assert data["sources"]["scheduler.interval"] == "default"
    assert data["accounts"] == {"physics": {"share": 2.0, "users": ["alice", "bob"]}}
    k8s = data["clusters"]["K8S"]["kubernetes"]
    assert (k8s["namespace"], k8s["storage_pvc"], k8s["poll_seconds"], k8s["watch"]) == ("batch", "shared", 2.5, True)
    assert "kubernetes" not in data["clusters"]["LPS"]  # a local cluster has no kubernetes settings
    text = cli.ok("orchestra config show").out
    assert "scheduler.scouts" in text and f"(file {path})" in text
    assert "accounts.physics" in text and "users=alice, bob" in text
    assert "kubernetes.namespace" in text and "batch" in text
