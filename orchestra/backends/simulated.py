"""A backend on a simulated clock: an attempt of `sim-sleep SECONDS ...` ends SECONDS after it started.

For `orchestra simulate`, which drives the real scheduler cycle with `Scheduler.clock` replaced by
a `SimClock`: nothing runs, time is a number the caller advances, and each attempt succeeds when
the clock passes its start plus its duration (recorded with that exact end time, so usage is
charged exactly). The duration comes from the job's command:

    sim-sleep SECONDS [--jitter F] [--exit CODE] %DATA %IN %OUT

`--jitter F` spreads durations uniformly over SECONDS * (1 +- F), deterministically per task and
job index; `--exit CODE` makes the attempt end with that exit code (non-zero: failed).
"""
from __future__ import annotations

import random
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from orchestra.backends.base import Launched, LaunchSpec, Observation, Phase, Survey, Tracked

COMMAND = "sim-sleep"


class SimClock:
    """A settable clock: `Scheduler.clock = SimClock(t0)`, then `clock.t = ...` between cycles."""

    def __init__(self, t: float) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


@dataclass
class _Run:
    start: float
    end: float
    exit_code: int


def parse_command(command: str, task_name: str = "", job_index: int = 0) -> tuple[float, int]:
    """(duration in seconds, exit code) of a `sim-sleep` command; ValueError when it is not one."""
    words = shlex.split(command)
    if len(words) < 2 or words[0] != COMMAND:
        raise ValueError(f"the simulated backend runs only `{COMMAND} SECONDS [--jitter F] [--exit CODE] ...`, "
                         f"not {command[:60]!r}")
    seconds = float(words[1])
    jitter, code = 0.0, 0
    rest = words[2:]
    for flag, value in zip(rest, rest[1:]):
        if flag == "--jitter":
            jitter = float(value)
        elif flag == "--exit":
            code = int(value)
    if jitter:
        seconds *= 1.0 + jitter * random.Random(f"{task_name}/{job_index}").uniform(-1.0, 1.0)
    if not seconds >= 0:
        raise ValueError(f"{COMMAND}: duration must be >= 0 seconds, got {words[1]!r}")
    return seconds, code


class SimulatedBackend:
    name = "simulated"

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.runs: dict[str, _Run] = {}
        self.launches = 0

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        now = self.clock()
        out = []
        for spec in specs:
            if spec.backend_name not in self.runs:  # adopt an existing one, as every backend does
                try:
                    seconds, code = parse_command(spec.command, spec.task_name, spec.job_index)
                except ValueError as exc:
                    out.append(Launched(spec.backend_name, error=str(exc)))
                    continue
                self.runs[spec.backend_name] = _Run(now, now + seconds, code)
                self.launches += 1
            out.append(Launched(spec.backend_name, host="sim", started_at=self.runs[spec.backend_name].start))
        return out

    def survey(self, tracked: Sequence[Tracked]) -> Survey:
        now = self.clock()
        survey = Survey()
        for item in tracked:
            name = item.backend_name
            run = self.runs.get(name)
            if run is None:
                survey.observations[name] = Observation(name, Phase.MISSING)
            elif now >= run.end:
                phase = Phase.SUCCEEDED if run.exit_code == 0 else Phase.FAILED
                survey.observations[name] = Observation(name, phase, exit_code=run.exit_code, host="sim",
                                                        ended_at=run.end)
            else:
                survey.observations[name] = Observation(name, Phase.RUNNING, host="sim")
        return survey

    def kill(self, tracked: Sequence[Tracked]) -> None:
        now = self.clock()
        for item in tracked:
            run = self.runs.get(item.backend_name)
            if run is not None and run.end > now:
                run.end, run.exit_code = now, 137

    def release(self, names: Sequence[str]) -> None:
        for name in names:
            self.runs.pop(name, None)

    def close(self) -> None:
        pass
