"""Named points where the reliability tests kill the scheduler with SIGKILL.

`ORCHESTRA_CRASHPOINT=<name>` makes the process kill itself, as `kill -9` would, the first time it
reaches that point; `<name>@short` only in a short pass (see `Scheduler.cycle`), `<name>@full` only
in a full cycle. Unset (always, in production), a crash point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = ("mid-expansion", "after-dispatch-recorded", "after-launch", "after-end-observed")


current_pass = "full"  # set by Scheduler.cycle


def crashpoint(name: str) -> None:
    wanted = os.environ.get("ORCHESTRA_CRASHPOINT")
    if wanted is not None and wanted in (name, f"{name}@{current_pass}"):
        os.kill(os.getpid(), signal.SIGKILL)
