"""As whom local jobs run by default: their owners only where that means something (root, on a
shared PostgreSQL database); SQLite is one person's database, whose jobs are theirs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestra.backends.local import run_jobs_as
from orchestra.config import load_settings
from orchestra.errors import OrchestraError


def settings(tmp_path: Path, url: str, extra: str = ""):  # type: ignore[no-untyped-def]
    config = tmp_path / "o.toml"
    config.write_text(f"[scheduler]\n{extra}\n")
    return load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": str(tmp_path),
                          "ORCHESTRA_DATABASE_URL": url})


@pytest.mark.parametrize(("euid", "url", "expected"), [
    (0, "postgresql:///orchestra", "owner"),
    (0, "sqlite:////tmp/o.db", "scheduler"),
    (1000, "postgresql:///orchestra", "scheduler"),
    (1000, "sqlite:////tmp/o.db", "scheduler"),
])
def test_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int, url: str, expected: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert run_jobs_as(settings(tmp_path, url)) == expected


def test_owner_without_root_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(OrchestraError) as caught:
        run_jobs_as(settings(tmp_path, "postgresql:///orchestra", 'run_jobs_as = "owner"'))
    assert "\n" not in str(caught.value) and 'run_jobs_as = "scheduler"' in str(caught.value)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert run_jobs_as(settings(tmp_path, "sqlite:////tmp/o.db", 'run_jobs_as = "owner"')) == "owner"


def test_the_personal_default_storage_is_made_and_a_configured_one_is_not(tmp_path: Path) -> None:
    """A newcomer's `$ORCHESTRA_HOME/storage` appears on first use (the README's walk-through);
    a storage the admin configured elsewhere and that is missing stays missing: not mounted, the
    queue is held (tests/e2e/test_holds.py) rather than jobs written to the bare mount point."""
    from orchestra.backends.local import LocalBackend

    home = tmp_path / "home"
    fresh = load_settings({"ORCHESTRA_HOME": str(home), "ORCHESTRA_DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}"})
    LocalBackend(fresh.cluster("LPS"), fresh, "inst").close()
    assert (home / "storage").is_dir()
    config = tmp_path / "o.toml"
    config.write_text(f'[scheduler]\nrun_jobs_as = "scheduler"\n[clusters.LPS]\nstorage = "{tmp_path / "mnt" / "cv"}"\n')
    admin = load_settings({"ORCHESTRA_HOME": str(home), "ORCHESTRA_CONFIG": str(config),
                           "ORCHESTRA_DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}"})
    LocalBackend(admin.cluster("LPS"), admin, "inst").close()
    assert not (tmp_path / "mnt").exists()
