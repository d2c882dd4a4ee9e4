"""`orchestra config show`: the effective settings and where each came from, text and JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Cli, write_config

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
    assert "scheduler.scouts\t3\t" in text and f"\tfile {path}\n" in text  # piped: key, value, source as TSV
    assert "accounts.physics" in text and "users=alice, bob" in text
    assert "kubernetes.namespace" in text and "batch" in text


def test_config_show_never_prints_the_database_password(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The URL may hold a password (env or file), and `config show` output gets pasted into tickets.

    No database is needed: `config show` only reads the settings.
    """
    config = write_config(tmp_path / "orchestra.toml", tmp_path)
    for key, value in {"ORCHESTRA_HOME": str(tmp_path), "ORCHESTRA_CONFIG": str(config), "ORCHESTRA_USER": "alice",
                       "ORCHESTRA_DATABASE_URL": "postgresql://bob:s3cret@db.invalid/orchestra"}.items():
        monkeypatch.setenv(key, value)
    cli = Cli(capsys)
    try:
        shown = cli.ok("orchestra config show --json")
        assert json.loads(shown.out)["database_url"] == "postgresql://bob:***@db.invalid/orchestra"
        text = cli.ok("orchestra config show")
        assert "postgresql://bob:***@db.invalid/orchestra" in text.out
        monkeypatch.delenv("ORCHESTRA_DATABASE_URL")
        config.write_text('database_url = "postgresql://bob:s3cret@db.invalid/orchestra"\n' + config.read_text())
        from_file = [cli.ok("orchestra config show --json"), cli.ok("orchestra config show")]
        assert "bob:***@db.invalid" in from_file[0].out and "bob:***@db.invalid" in from_file[1].out
        for result in (shown, text, *from_file):
            assert "s3cret" not in result.out + result.err
    finally:
        cli.close()
