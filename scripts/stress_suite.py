#!/usr/bin/env python3
"""Run the whole test suite N times while every core is kept busy: timing-dependent tests that pass
on an idle machine but fail on a loaded one (a CI runner, a laptop compiling) show up here.

The suite is the README's test command, `pytest` from the repository root in the current
environment (`source setup.sh` first). Beside it runs a CPU hog: `stress-ng --cpu <ncpu>` when
stress-ng is installed, otherwise one busy-loop process per core. The hog is stopped at the end,
also on Ctrl-C or SIGTERM. Each run's output goes to a log file; a table of the runs is printed
(run, result, passed / failed counts, wall time) and the exit status is non-zero if any run failed.
Not part of the default pytest run (it takes N times the suite's time).

Usage: python scripts/stress_suite.py [-n RUNS] [--cpus N] [--logs DIR] [-- PYTEST ARGS...]
  e.g. python scripts/stress_suite.py -n 1 -- --basetemp=/tmp/stress-bt
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _spin() -> None:  # pragma: no cover - runs in the hog's child processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited by fork
    try:  # Linux: die with the parent even if it is killed with SIGKILL (PR_SET_PDEATHSIG = 1)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    while True:
        pass


class CpuHog:
    """`stress-ng --cpu N` if installed, else N busy-loop processes; stop() ends it (idempotent)."""

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus
        self.stress: subprocess.Popen[bytes] | None = None
        self.spinners: list[multiprocessing.Process] = []
        self.kind = ""

    def start(self) -> None:
        stress_ng = shutil.which("stress-ng")
        if stress_ng:
            # Its own session: a Ctrl-C at the terminal reaches it only through stop().
            self.stress = subprocess.Popen([stress_ng, "--cpu", str(self.cpus), "--quiet"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
            self.kind = f"stress-ng --cpu {self.cpus}"
        else:
            for _ in range(self.cpus):
                spinner = multiprocessing.Process(target=_spin, daemon=True)
                spinner.start()
                self.spinners.append(spinner)
            self.kind = f"{self.cpus} busy-loop process(es) (stress-ng is not installed)"

    def alive(self) -> bool:
        if self.stress is not None:
            return self.stress.poll() is None
        return bool(self.spinners) and all(s.is_alive() for s in self.spinners)

    def stop(self) -> None:
        if self.stress is not None and self.stress.poll() is None:
            try:
                os.killpg(self.stress.pid, signal.SIGTERM)  # stress-ng's workers are its children
                self.stress.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.stress.pid, signal.SIGKILL)
                self.stress.wait()
            except ProcessLookupError:
                pass
        for spinner in self.spinners:
            if spinner.is_alive():
                spinner.terminate()
        for spinner in self.spinners:
            spinner.join(timeout=5)
            if spinner.is_alive():
                spinner.kill()
                spinner.join()
        self.spinners = []


@dataclass
class Run:
    number: int
    code: int | None = None  # pytest's exit status; None: interrupted
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    summary: str = ""
    log: Path | None = None

    @property
    def result(self) -> str:
        if self.code is None:
            return "interrupted"
        return "ok" if self.code == 0 else f"FAILED (exit {self.code})"


def pytest_command(extra: list[str]) -> list[str]:
    """`pytest` as the README runs it: the environment's own, else this interpreter's module."""
    found = shutil.which("pytest")
    return ([found] if found else [sys.executable, "-m", "pytest"]) + extra


def parse_summary(text: str) -> tuple[dict[str, int], str]:
    """The counts of pytest's last summary line (`== 3 failed, 150 passed, 2 skipped in 80s ==`)."""
    lines = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error|errors|no tests ran)\b", line)
             and re.search(r"\bin [0-9.]+s\b", line)]
    if not lines:
        return {}, ""
    summary = lines[-1].strip("= \n")
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)", summary):
        counts["errors" if word.startswith("error") else word] = int(number)
    return counts, summary


def run_once(number: int, command: list[str], logs: Path, hog: CpuHog) -> Run:
    run = Run(number, log=logs / f"run-{number}.log")
    started = time.monotonic()
    with open(run.log, "wb") as out:
        # A session of its own, so a Ctrl-C is handled here once (the whole run is stopped).
        child = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            run.code = child.wait()
        except BaseException:
            try:
                os.killpg(child.pid, signal.SIGINT)  # pytest stops and cleans up its workers
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            except ProcessLookupError:
                pass
            run.seconds = time.monotonic() - started
            raise
    run.seconds = time.monotonic() - started
    run.counts, run.summary = parse_summary(run.log.read_text(errors="replace"))
    if not hog.alive():
        run.summary += " [the CPU hog was not running at the end of this run]"
    return run


def table(runs: list[Run]) -> str:
    rows = [("run", "result", "passed", "failed", "errors", "skipped", "wall time")]
    for r in runs:
        counts = [str(r.counts.get(k, 0)) if r.summary else "-" for k in ("passed", "failed", "errors", "skipped")]
        rows.append((str(r.number), r.result, *counts, f"{r.seconds:.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--runs", type=int, default=3, help="how many times to run the suite (default 3)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                        help="CPU hog workers (default: one per core, %(default)s)")
    parser.add_argument("--logs", type=Path, help="directory for run-<n>.log (default: a new temporary directory)")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra arguments for pytest")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.cpus < 1:
        parser.error("--runs and --cpus must be at least 1")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="orchestra-stress-"))
    logs.mkdir(parents=True, exist_ok=True)
    command = pytest_command(args.pytest_args)

    def terminated(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    hog = CpuHog(args.cpus)
    runs: list[Run] = []
    interrupted = False
    try:
        hog.start()
        time.sleep(1)  # the hog's workers are up and spinning before the first test starts
        print(f"CPU hog: {hog.kind}; suite: {' '.join(command)} (in {ROOT}); logs: {logs}", flush=True)
        for number in range(1, args.runs + 1):
            started = time.monotonic()
            try:
                run = run_once(number, command, logs, hog)
            except KeyboardInterrupt:
                runs.append(Run(number, code=None, seconds=time.monotonic() - started, log=logs / f"run-{number}.log"))
                interrupted = True
                break
            runs.append(run)
            print(f"run {number}/{args.runs}: {run.result} in {run.seconds:.0f} s: {run.summary or 'no summary line'}",
                  flush=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        hog.stop()
    print()
    print(table(runs))
    failed = [r for r in runs if r.code != 0]
    if interrupted:
        print("interrupted: the CPU hog is stopped", file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} of {len(runs)} run(s) failed; see {', '.join(str(r.log) for r in failed)}",
              file=sys.stderr)
        return 1
    print(f"all {len(runs)} run(s) passed under load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
