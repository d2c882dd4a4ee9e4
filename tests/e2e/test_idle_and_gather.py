"""The service loop's two per-pass economies (issue 18): `--until-idle` asks the database whether
anything remains only when the last pass left no live attempt (`Scheduler.busy`), and after a pass
that turned a few jobs over the loop pauses a fraction of that pass (`gather`) so ends that come
together are handled by one pass. Real processes on the local backend, both databases."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestra.scheduler import loop
from orchestra.scheduler.cycle import CycleReport
from orchestra.services.context import Context
from tests.e2e.test_workflow import create, register
from tests.helpers import Cli


def test_until_idle_asks_the_database_once_when_the_last_pass_leaves_nothing_live(
        cli: Cli, storage: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    register(cli, storage, 6)
    create(cli, "six", "sleep 0.1; echo %DATA %IN %OUT", "--bypass")
    asked: list[str | None] = []
    real = loop.idle_summary

    def counted(ctx: Context) -> str | None:
        asked.append(real(ctx))
        return asked[-1]

    monkeypatch.setattr(loop, "idle_summary", counted)
    lines: list[str] = []
    ctx = Context.from_env()
    try:
        assert loop.run(ctx, loop.LoopOptions(until_idle=True, interval=300), say=lines.append) == 0
    finally:
        ctx.engine.dispose()
    passes = sum(1 for line in lines if line.startswith("cycle:")) + sum(
        int(line.split()[0]) for line in lines if "short pass(es)" in line)
    assert passes >= 2, lines
    assert len(asked) == 1 and asked[0] is not None and asked[0].startswith("idle"), (asked, lines)
    rows = cli.ok("maestro.py task list -u alice --json").out
    assert '"completed"' in rows


@pytest.mark.parametrize("seconds, launch, started, ended, pause", [
    (0.010, 0.0, 2, 0, 0.0005),  # 5 % of a 10 ms pass
    (0.010, 0.002, 2, 2, 0.002),  # at least as long as its launches took: their ends come as far apart
    (2.0, 0.0, 0, 10, 0.005),  # capped: a slow pass never makes the next wait long
    (0.010, 0.0, 0, 0, None),  # nothing turned over: no pause
    (0.080, 0.05, 8, loop.GATHER_UNTIL - 8, None),  # many handled already: a pause would only idle slots
    (0.080, 0.0, 4, loop.GATHER_UNTIL - 5, 0.004),  # one fewer: the pause follows
])
def test_gather_pauses_a_fraction_of_a_pass_that_turned_jobs_over(
        monkeypatch: pytest.MonkeyPatch, seconds: float, launch: float, started: int, ended: int,
        pause: float | None) -> None:
    slept: list[float] = []
    monkeypatch.setattr(loop.time, "sleep", slept.append)
    report = CycleReport(full=False)
    report.seconds = seconds
    if launch:
        report.steps["launch"] = launch
    report.counts["started"] = started
    if ended:
        report.ended[("LPS", "cpu", "succeeded")] = ended
    loop.gather(report)
    assert slept == ([] if pause is None else [pytest.approx(pause)])
