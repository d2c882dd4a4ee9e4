"""Named points where the reliability tests kill the scheduler with SIGKILL.

`ORCHESTRA_CRASHPOINT=<name>` makes the process kill itself, as `kill -9` would, the first time it
reaches that point. Unset (always, in production), a crash point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = ("mid-expansion", "after-dispatch-recorded", "after-launch", "after-end-observed")


def crashpoint(name: str) -> None:
    if os.environ.get("ORCHESTRA_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
