"""Listings on any terminal and in pipes (issue 15, items 1-3): tables at 80 and 120 columns (rich
honours COLUMNS and TTY_COMPATIBLE) never cut a number or wrap a bar; piped output is TSV with one
header line; --format chooses the columns; counts add up between table, TSV and JSON by state
name; limits say so; --version and shell completion."""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len

from tests.db.listing_world import LONG, World, listing_world  # noqa: F401 - the fixture
from tests.helpers import ADMIN, JOB_STATES, Cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTINGS = ("maestro task list", "maestro job list -t user.alice.busy", "maestro queue", "maestro queue --jobs",
            "maestro usage", "maestro dataset list", "maestro dataset show -d user.alice.configs",
            "orchestra config show", "orchestra status")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stdout counts as a terminal (rich's TTY_COMPATIBLE), without colour codes to strip."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    yield


def render(cli: Cli, line: str, width: int, monkeypatch: pytest.MonkeyPatch, user: str | None = None) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(width))
    out = cli.ok(line, user=user).out
    return [ANSI.sub("", text) for text in out.splitlines()]


def tsv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize("width", [80, 120])
def test_tables_fit_the_terminal_and_never_cut_numbers(listing_world: World, terminal: None, width: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    w = listing_world
    for line in LISTINGS:
        lines = render(w.cli, line, width, monkeypatch, user=ADMIN if line.startswith("orchestra") else None)
        assert lines, line
        for text in lines:
            assert cell_len(text) <= width, f"{line} at {width}: {text!r} is wider than the terminal"
            assert "…" not in text, f"{line} at {width}: something was cut: {text!r}"
            assert not re.search(r"[┃│┏━]", text), f"{line}: box drawing {text!r}"
    # Every job count of the JSON is in the table, whole, in the columns' order (no cut, no wrap).
    tasks = json.loads(w.cli.ok("maestro task list --json").out)
    lines = render(w.cli, "maestro task list", width, monkeypatch)
    header = lines[0].split()
    for task in tasks:
        [row] = [text for text in lines if re.match(rf"\s*{task['id']}\s", text)]
        shown = [str(task["counts"][s]) for s in JOB_STATES if s in header]
        assert re.search(r"\s+".join(shown), row), (shown, row)
        # the bar stays on its row, with its label (ended of all), and a killed task never looks complete
        assert f"{task['ended']}/{task['n_jobs']}" in row
        if task["status"] == "killed":
            assert "█" not in row and "▒" in row
    if width == 80:
        assert "columns hidden:" in " ".join(lines) and "use --format)" in " ".join(lines)
    # the long name is folded over lines, never cut: its pieces in the task column make it whole
    start = lines[0].index("task")
    end = start + len(re.match(r"task\s+", lines[0][start:]).group(0))
    [long_id] = [t["id"] for t in tasks if t["name"] == LONG]
    at = next(i for i, text in enumerate(lines) if re.match(rf"\s*{long_id}\s", text))
    pieces = [lines[at][start:end].strip()]
    for text in lines[at + 1:]:
        if text[:start].strip():
            break
        pieces.append(text[start:end].strip())
    assert "".join(pieces) == LONG, pieces


def test_piped_listings_are_tsv_with_one_header_and_counts_add_up(listing_world: World) -> None:
    w = listing_world
    out = w.cli.ok("maestro task list").out
    assert "│" not in out and "\x1b" not in out
    rows = {r["task"]: r for r in tsv(out)}
    data = {t["name"]: t for t in json.loads(w.cli.ok("maestro task list --json").out)}
    assert set(rows) == set(data) == {LONG, "user.alice.busy", "user.alice.stopped"}
    for name, task in data.items():
        assert {s: int(rows[name][s]) for s in JOB_STATES} == task["counts"]  # same words, same numbers
        assert sum(task["counts"].values()) == task["n_jobs"]
        assert task["ended"] == task["counts"]["succeeded"] + task["counts"]["failed"] + task["counts"]["killed"]
        assert rows[name]["progress"] == f"{task['ended']}/{task['n_jobs']}"
        jobs = json.loads(w.cli.ok(f"maestro job list -t {name} --json --limit 0").out)
        assert Counter(j["status"] for j in jobs) == Counter({s: n for s, n in task["counts"].items() if n})
    busy, stopped = data["user.alice.busy"]["counts"], data["user.alice.stopped"]["counts"]
    assert (busy["failed"], busy["succeeded"], busy["running"], busy["queued"]) == (2, 2, 4, 4)
    assert stopped["killed"] == 5 and stopped["failed"] == 0  # killed is counted as killed
    assert not w.cli.ok("maestro task list --noheader").out.startswith("id\t")
    assert len(w.cli.ok("maestro task list --noheader").out.splitlines()) == 3
    jobs = tsv(w.cli.ok("maestro job list -t user.alice.busy --limit 0").out)
    failed = [j for j in jobs if j["status"] == "failed"]
    assert len(failed) == 2 and {j["reason"] for j in failed} == {"exit code 3"} and {j["exit"] for j in failed} == {"3"}
    started = [j["started"] for j in jobs if j["started"] != "-"]
    assert started and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", s) for s in started)


def test_format_chooses_columns_and_refuses_unknown_ones(listing_world: World, terminal: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    w = listing_world
    monkeypatch.delenv("TTY_COMPATIBLE")
    out = w.cli.ok("maestro task list -o status,id,failed").out
    assert out.splitlines()[0] == "status\tid\tfailed"
    assert [r["failed"] for r in tsv(out)] == ["0", "2", "0"]
    assert w.cli.ok("maestro job list -t user.alice.busy --format id,reason --noheader --status failed").out \
        .splitlines() == [f"{j['id']}\texit code 3" for j in
                          json.loads(w.cli.ok("maestro job list -t user.alice.busy --status failed --json").out)]
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    lines = render(w.cli, "maestro task list --format id,task,user,queue,held,queued,starting,running", 80, monkeypatch)
    assert lines[0].split() == ["id", "task", "user", "queue", "held", "queued", "starting", "running"]
    assert not any("hidden" in text for text in lines)  # asked for: nothing dropped
    for line in ("maestro task list --format id,bogus", "maestro job list -t user.alice.busy -o ,",
                 "maestro usage -o user,nope", "orchestra config show -o key,colour"):
        result = w.cli(line)
        assert result.code == 1 and result.out == "" and result.err.count("\n") == 1, (line, result)
        assert result.err.startswith("error: --format: ") and "use a comma-separated list of:" in result.err
    assert "unknown column(s) bogus; use a comma-separated list of: id, task, user" in \
        w.cli("maestro task list --format id,bogus").err


def test_limits_say_so_and_zero_means_all(listing_world: World, terminal: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    w = listing_world
    lines = render(w.cli, "maestro job list -t user.alice.busy --limit 5", 120, monkeypatch)
    assert lines[-1] == "5 of 12 shown (--limit 0 for all)"
    monkeypatch.delenv("TTY_COMPATIBLE")
    piped = w.cli.ok("maestro job list -t user.alice.busy --limit 5")
    assert len(tsv(piped.out)) == 5 and piped.err.strip() == "5 of 12 shown (--limit 0 for all)"
    as_json = w.cli.ok("maestro job list -t user.alice.busy --limit 5 --json")
    assert len(json.loads(as_json.out)) == 5 and "5 of 12 shown (--limit 0 for all)" in as_json.err
    everything = w.cli.ok("maestro job list -t user.alice.busy --limit 0")
    assert len(tsv(everything.out)) == 12 and "shown" not in everything.err
    files = w.cli.ok("maestro dataset show -d user.alice.configs --limit 3")
    assert len(tsv(files.out)) == 3 and "3 of 12 shown" in files.err
    assert len(tsv(w.cli.ok("maestro dataset show -d user.alice.configs --limit 0").out)) == 12
    assert len(json.loads(w.cli.ok("maestro dataset show -d user.alice.configs --limit 0 --json").out)["files"]) == 12
    detail = w.cli.ok("maestro task show -t user.alice.busy --limit 1").out
    assert "1 more failure: maestro job list -t user.alice.busy --status failed" in detail
    shown = json.loads(w.cli.ok("maestro task show -t user.alice.busy --limit 0 --json").out)
    assert len(shown["failed"]) == shown["failed_total"] == 2
    # task show names jobs by id (what `job logs` takes), index beside it; each reason said once
    failed_ids = [j["id"] for j in json.loads(w.cli.ok("maestro job list -t user.alice.busy -s failed --json").out)]
    assert sorted(f["job_id"] for f in shown["failed"]) == sorted(failed_ids)
    for f in shown["failed"]:
        assert f"job {f['job_id']} (#{f['job_index']}) attempt 1: exit code 3\n" in \
            w.cli.ok("maestro task show -t user.alice.busy").out
    assert "exit code 3, exit code 3" not in detail and "None" not in detail
    why = json.loads(w.cli.ok(f"maestro job why {failed_ids[0]} --json").out)["reason"]
    assert why == "finished: failed (exit code 3)"


@pytest.mark.parametrize("program", ["maestro", "orchestra", "orchestra_registry.py"])
def test_version_on_every_command(cli: Cli, program: str) -> None:
    from orchestra.services.status import version

    result = cli.ok(f"{program} --version")
    assert result.out == f"orchestra {version()}\n" and version() != "unknown"


@pytest.mark.parametrize("shell, mark", [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --command")])
def test_shell_completion(cli: Cli, shell: str, mark: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # typer detects the user's shell; told not to, --show-completion takes the shell's name
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    for program in ("maestro", "orchestra", "orchestra_registry"):
        script = cli.ok(f"{program} --show-completion {shell}").out
        assert mark in script and f"_{program.upper()}_COMPLETE" in script, script
    # the completion itself answers: `maestro ta<TAB>` -> task
    monkeypatch.setenv("_MAESTRO_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "maestro ta")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert cli.ok("maestro").out.split() == ["task"]
    monkeypatch.setenv("COMP_WORDS", "maestro task li")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert cli.ok("maestro").out.split() == ["list"]
    monkeypatch.delenv("_MAESTRO_COMPLETE")
    home = tmp_path / "shell-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert f"{shell} completion installed in" in cli.ok(f"maestro --install-completion {shell}").out
    assert "_MAESTRO_COMPLETE" in "".join(p.read_text() for p in home.rglob("*") if p.is_file())
