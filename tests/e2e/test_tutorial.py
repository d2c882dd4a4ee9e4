"""The README's walk-through, run as written by a new user on the default local backend.

scripts/docs_outputs.py extracts the commands from the pages themselves (nothing is copied
here, so the docs cannot drift from the test), runs them in a scratch home directory with SQLite
and `orchestra scheduler run --until-idle`, and compares every output the pages show with what
the commands print now."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_tutorial_runs_as_written_and_the_docs_show_its_outputs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_outputs.py"), "--check",
                           "--scratch", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    storage = tmp_path / "home" / "alice" / ".orchestra" / "storage" / "alice"
    results = {task: sorted(p.parent.name for p in (storage / f"user.alice.{task}").glob("job_*/result.json"))
               for task in ("tutorial", "tutorial_broken", "step1")}
    four = [f"job_00000{i}" for i in range(4)]
    assert results == {"tutorial": four, "tutorial_broken": four, "step1": four}, done.stderr
    first = json.loads((storage / "user.alice.tutorial" / "job_000000" / "result.json").read_text())
    assert first == {"config": "scale_1", "n": 20, "mean_scaled": first["mean_scaled"]} and first["mean_scaled"] > 0
    summaries = sorted((storage / "user.alice.step2").glob("job_*/summary.txt"))
    assert len(summaries) == 4 and "mean x scale" in summaries[0].read_text()
    assert done.returncode == 0, done.stderr[-4000:]
