"""The bench's verdict lines (issue 18): a row can be judged by further goals than its own limit
(the 1M cycle's write steps, the 64-slot run against stock Slurm), each a line in the Goals list.
Only the shape: no timing."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench  # noqa: E402


@pytest.mark.parametrize(("seconds", "earlier", "verdict"), [(4.0, False, "meets"), (9.6, True, "misses")])
def test_the_64_slot_run_is_judged_against_a_twentieth_of_slurm(seconds: float, earlier: bool, verdict: str) -> None:
    row = {"scenario": "2,000 trivial jobs at 64 slots, submit -> all done (local backend)", "db": "sqlite",
           "seconds": seconds, "note": "n", "limit": bench.limit("309 jobs/s spawn", 0.69, 0.5, ">= 50 %"),
           "also": [bench.slurm_goal(seconds, 90.3, earlier)]}
    out = bench.table([row])
    assert "1 of 2 met" in out or "2 of 2 met" in out
    when = r"in an earlier run, --slurm-seconds" if earlier else r"in this run, --vs-slurm"
    line = re.search(rf"^- {verdict}: 2,000 trivial jobs at 64 slots.*, sqlite: <= 1/20 of stock Slurm's time "
                     rf"\(Slurm measured {when}; Orchestra takes 1/[\d.]+ of it\) \(\d+ % of the limit reached: "
                     rf"4\.515 s, 1/20 of stock Slurm's 90\.3 s\)$", out, re.M)
    assert line, out


def test_a_row_without_further_goals_prints_only_its_own() -> None:
    out = bench.table([{"scenario": "s", "db": "-", "seconds": 1.0, "note": "n", "limit": None}])
    assert "Goals" not in out
