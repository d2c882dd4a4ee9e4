"""`orchestra simulate`: workload traces through the real scheduler cycle on a simulated clock.

The replay uses its own throwaway SQLite database (by design), so these tests need no db_url.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestra.errors import OrchestraError

from orchestra import replay
from orchestra.backends.base import Phase, Tracked
from orchestra.backends.simulated import SimClock, SimulatedBackend, parse_command
from orchestra.simulation import simulate
from tests.helpers import Cli

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "examples" / "traces"

TINY = """
cycle = 300
until = "3h"
[queues.cpu]
slots = 11
[[tasks]]
user = "ann"
submit = 0
jobs = 400
duration = "15m"
jitter = 0.3
[[tasks]]
user = "bob"
submit = "5m"
jobs = 150
duration = "10m"
[[tasks]]
user = "bob"
submit = "20m"
jobs = 300
duration = "25m"
priority = 50
"""


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORCHESTRA_HOME", str(tmp_path / "home"))  # nothing of the user's is touched
    return Cli(capsys)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def series(rows: list[dict[str, str]], user: str, column: str = "running") -> list[int]:
    return [int(r[column]) for r in rows if r["user"] == user]


def test_tiny_trace_end_to_end(cli: Cli, tmp_path: Path) -> None:
    trace = tmp_path / "tiny.toml"
    trace.write_text(TINY)
    result = cli.ok(f"orchestra simulate {trace} --csv {tmp_path / 'out.csv'} --every 3")
    assert "ann (1)" in result.out and "bob (1)" in result.out and "<- bob arrive" in result.out
    assert "wall time" in result.out and f"wrote {tmp_path / 'out.csv'}" in result.out
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0]) == ["time", "user", "running", "queued", "usage"]
    assert len(rows) == 2 * 37  # cycles at 0, 5m, ..., 3h: 37 of them, one row per user
    ann, bob = series(rows, "ann"), series(rows, "bob")
    assert ann[0] == 11 and bob[0] == 0  # bob arrives at 5m
    assert all(a + b <= 11 for a, b in zip(ann, bob))
    # both backlogged: from the moment enough of ann's slots turned over, within one slot of each other
    both = [(a, b) for a, b, qa, qb in zip(ann, bob, series(rows, "ann", "queued"), series(rows, "bob", "queued"))
            if qa and qb]
    assert len(both) > 20
    assert all(abs(a - b) <= 1 for a, b in both[4:]), both
    usage = [float(r["usage"]) for r in rows if r["user"] == "ann"]
    assert usage[0] == 0 and usage[-1] > usage[5] > 0


@pytest.mark.parametrize("arrival", ["1h", "65m"])  # when the flood's slots turn over; halfway through its jobs
def test_scaled_flood_newcomers_get_a_fair_slice_within_one_cycle(cli: Cli, tmp_path: Path, arrival: str) -> None:
    text = (TRACES / "flood.toml").read_text().replace("jobs = 100000", "jobs = 5000").replace('until = "6h"',
                                                                                             'until = "2h"')
    trace = tmp_path / "flood5k.toml"
    trace.write_text(text.replace('submit = "1h"', f'submit = "{arrival}"'))
    out = cli.ok(f"orchestra simulate {trace} --csv {tmp_path / 'flood.csv'}").out
    rows = read_csv(tmp_path / "flood.csv")
    times = sorted({float(r["time"]) for r in rows})
    arrive = times.index(3600.0 if arrival == "1h" else 3900.0)
    flood, ann, ben = (series(rows, u) for u in ("flood", "ann", "ben"))
    assert flood[:arrive] == [64] * arrive and ann[:arrive] == ben[:arrive] == [0] * arrive
    fair = 64 / 3
    for c in range(arrive + 1, len(times)):  # from one cycle after arriving on: 21 or 22 each
        assert all(abs(x[c] - fair) <= 1 for x in (flood, ann, ben)), (c, flood[c], ann[c], ben[c])
    if arrival == "1h":  # 64 slots turn over at 1:00: the newcomers get theirs in the arrival cycle itself
        assert "ann: arrives at 1:00 (cycle 12), reached at cycle 12 (0 cycle(s) after arriving" in out
    else:  # no slot frees at 1:05 (the flood's jobs end at 1:10): one cycle later
        assert ann[arrive] == ben[arrive] == 0
        assert "ann: arrives at 1:05 (cycle 13), reached at cycle 14 (1 cycle(s) after arriving" in out


def test_real_cycle_and_pure_policy_engine_agree() -> None:
    """On a trace without scouts, the real cycle and orchestra.simulation give the same slots and usage."""
    trace = replay.load_trace(TRACES / "steady.toml")
    trace = dataclasses.replace(trace, until=5 * 3600.0, tasks=[
        dataclasses.replace(t, scouts=False, jitter=0.0, jobs=min(t.jobs, 300)) for t in trace.tasks])
    real = replay.replay(trace)
    pure = simulate(cycles=len(real.times), **replay.to_policy_simulation(trace))
    np.testing.assert_array_equal(real.running, pure.running)
    np.testing.assert_allclose(real.usage, pure.usage, rtol=1e-9, atol=1e-6)
    assert real.running.sum(axis=1).max() == 52


def test_steady_trace_runs_with_scouts_and_two_queues() -> None:
    trace = replay.load_trace(TRACES / "steady.toml")
    assert len(trace.users) == 5 and [q.name for q in trace.queues] == ["cpu", "gpu"]
    assert any(t.scouts for t in trace.tasks) and len(trace.tasks) == 57
    result = replay.replay(trace, until=7 * 3600.0)
    erin = result.users.index("erin")
    arrive = int(np.searchsorted(result.times, 6 * 3600.0))
    assert result.running[arrive, erin] == 10  # its 10 scouts, ahead of everyone
    assert result.running[-3:, erin].min() > 10  # released once 8 of its 10 scouts succeeded
    assert (result.running.sum(axis=1) <= 52).all()


def test_csv_trace_and_slots_override(cli: Cli, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("user,submit,jobs,duration,share\nann,0,40,600,2\nbob,0,40,600,\n")
    cli.ok(f"orchestra simulate {trace} --slots 6 --cycle 10m --until 1h --csv {tmp_path / 'o.csv'}")
    rows = read_csv(tmp_path / "o.csv")
    assert series(rows, "ann")[0] == 4 and series(rows, "bob")[0] == 2  # shares 2:1 of 6 slots


def test_simulated_backend() -> None:
    assert parse_command("sim-sleep 600 /d /c /o") == (600.0, 0)
    assert parse_command("sim-sleep 60 --exit 3 /d /c /o") == (60.0, 3)
    a, b = parse_command("sim-sleep 600 --jitter 0.5 x", "t", 1), parse_command("sim-sleep 600 --jitter 0.5 x", "t", 2)
    assert a == parse_command("sim-sleep 600 --jitter 0.5 x", "t", 1) and a != b and 300 <= a[0] <= 900
    with pytest.raises(ValueError, match="only `sim-sleep"):
        parse_command("python3 job.py")
    clock = SimClock(100.0)
    backend = SimulatedBackend(clock)
    spec = type("Spec", (), {"backend_name": "orc-1-0-1", "command": "sim-sleep 50 a b c", "task_name": "t",
                             "job_index": 0})()
    [launched] = backend.launch([spec])  # type: ignore[list-item]
    assert launched.started_at == 100.0 and launched.error is None
    tracked = [Tracked("orc-1-0-1", None), Tracked("orc-9-9-9", None)]
    clock.t = 149.0
    survey = backend.survey(tracked)
    assert survey.observations["orc-1-0-1"].phase == Phase.RUNNING
    assert survey.observations["orc-9-9-9"].phase == Phase.MISSING
    clock.t = 400.0
    done = backend.survey(tracked).observations["orc-1-0-1"]
    assert done.phase == Phase.SUCCEEDED and done.ended_at == 150.0


BAD = [
    ("missing.toml", None, "trace file missing.toml does not exist"),
    ("bad.toml", "[queues.cpu\nslots = 3\n", "is not valid TOML"),
    ("bad.json", '{"tasks": [', "is not valid JSON"),
    ("bad.yaml", "x: 1\n", "use a .toml, .json or .csv file"),
    ("bad.csv", "who,when\nann,0\n", "needs a header with user,submit,jobs,duration"),
    ("nojobs.toml", '[[tasks]]\nuser = "ann"\nduration = 5\n', "tasks[0] has no jobs"),
    ("neg.toml", '[[tasks]]\nuser = "ann"\njobs = -3\nduration = 5\n', "tasks[0].jobs must be from 1"),
    ("dur.toml", '[[tasks]]\nuser = "ann"\njobs = 3\nduration = "ten minutes"\n', "tasks[0].duration is 'ten minutes'"),
    ("queue.toml", '[[tasks]]\nuser = "ann"\njobs = 3\nduration = 5\nqueue = "gpu"\n', "queue 'gpu' is not one of"),
    ("key.toml", 'slotz = 3\n[[tasks]]\nuser = "ann"\njobs = 3\nduration = 5\n', "unknown key(s) ['slotz']"),
    ("user.toml", '[[tasks]]\nuser = "Ann Smith"\njobs = 3\nduration = 5\n', "user name 'Ann Smith' is not valid"),
    ("empty.toml", "cycle = 300\n", "no tasks"),
    ("repeat.toml", '[[tasks]]\nuser = "a"\njobs = 3\nduration = 5\nrepeat = 4\n', "needs every"),
]


@pytest.mark.parametrize("name, content, message", BAD)
def test_bad_traces_are_one_line_errors(cli: Cli, tmp_path: Path, name: str, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    result = cli(f"orchestra simulate {name}")
    assert result.code == 1 and result.out == "", result.out
    assert result.err.startswith("error: ") and result.err.count("\n") == 1 and message in result.err, result.err


@pytest.mark.parametrize("args, message", [
    ("--cycle 0", "--cycle must be longer than zero"),
    ("--cycle soon", "--cycle is 'soon'"),
    ("--every 0", "--every must be at least 1"),
    ("--csv nowhere/out.csv", "its directory does not exist"),
    ("--slots 5", "--slots works with one queue"),
])
def test_bad_options(cli: Cli, args: str, message: str) -> None:
    result = cli(f"orchestra simulate {TRACES / 'steady.toml'} {args}")
    assert result.code == 1 and message in result.err and result.err.count("\n") == 1, result.err


def test_png_without_matplotlib_is_a_clear_error(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = cli(f"orchestra simulate {TRACES / 'flood.toml'} --png {tmp_path / 'x.png'}")
    assert result.code == 1 and "--png needs matplotlib" in result.err and result.out == ""


def test_accounts_in_a_trace_share_slots_by_account(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text('''
cycle = "5m"
until = "1h"
[queues.cpu]
slots = 12
[accounts.physics]
share = 2
users = ["alice", "bob"]
[[tasks]]
user = "alice"
submit = 0
jobs = 500
duration = "10m"
[[tasks]]
user = "bob"
submit = "30m"
jobs = 500
duration = "10m"
[[tasks]]
user = "carol"
submit = 0
jobs = 500
duration = "10m"
''')
    trace = replay.load_trace(path)
    result = replay.replay(trace)
    alice, bob, carol = (result.users.index(u) for u in ("alice", "bob", "carol"))
    # physics holds 2/3 of the 12 slots, carol (an account of her own) 1/3: alice alone has all of
    # physics' (flat shares would give 6 and 6); from bob's arrival the two split it
    before = result.times < 30 * 60
    assert {tuple(row) for row in result.running[before][:, [alice, bob, carol]]} == {(8, 0, 4)}
    assert {tuple(row) for row in result.running[~before][:, [alice, bob, carol]]} == {(4, 4, 4)}
    bad = tmp_path / "bad.toml"
    bad.write_text('[accounts.physics]\nshare = -1\n[[tasks]]\nuser = "alice"\nsubmit = 0\njobs = 1\nduration = 1\n')
    with pytest.raises(OrchestraError, match=r"trace .*bad.toml: \[accounts.physics\]: share must be"):
        replay.load_trace(bad)
