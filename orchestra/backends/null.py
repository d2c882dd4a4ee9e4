"""A backend that starts nothing: every launch "runs" until `finish` is called.

For the benchmark and what-if simulations, where the cost of the scheduler itself is measured
and a job's end is decided by the caller, not by a process.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from orchestra.backends.base import Launched, LaunchSpec, Observation, Phase, Survey, Tracked


class NullBackend:
    name = "null"

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.ended: dict[str, int] = {}
        self.launches = 0

    def launch(self, specs: Sequence[LaunchSpec]) -> list[Launched]:
        now = time.time()
        self.launches += len(specs)
        self.running.update(s.backend_name for s in specs)
        return [Launched(s.backend_name, host="null", started_at=now) for s in specs]

    def finish(self, names: Iterable[str], exit_code: int = 0) -> None:
        for name in names:
            self.running.discard(name)
            self.ended[name] = exit_code

    def survey(self, tracked: Sequence[Tracked]) -> Survey:
        survey = Survey()
        for item in tracked:
            name = item.backend_name
            if name in self.running:
                survey.observations[name] = Observation(name, Phase.RUNNING)
            elif name in self.ended:
                code = self.ended[name]
                survey.observations[name] = Observation(name, Phase.SUCCEEDED if code == 0 else Phase.FAILED,
                                                        exit_code=code)
            else:
                survey.observations[name] = Observation(name, Phase.MISSING)
        return survey

    def kill(self, tracked: Sequence[Tracked]) -> None:
        self.finish((t.backend_name for t in tracked), exit_code=137)

    def release(self, names: Sequence[str]) -> None:
        for name in names:
            self.ended.pop(name, None)

    def close(self) -> None:
        pass
