"""Why a job or an attempt ended, composed in one place, so every view says it the same way.

What is stored is raw: the backend's reason ("exit code 3", "OOMKilled: ...", "killed by signal 9",
"lost: ..."), the scheduler's stop marker ("timeout", "killed by user"), and the exit code beside
it. Views used to glue those together each in their own way ("exit code 3, exit code 3",
"finished: failed, exit code 3 (exit code 3)", "exit code None, timeout"). `ended` is the only
composition: each fact once, never "None". Pure: no database, no clock.
"""
from __future__ import annotations

TIMEOUT = "timeout"  # the scheduler's stop marker for an attempt over its --max-time


def span(seconds: float | None) -> str:
    """A duration as a user types it for --max-time: 2h, 1h30m, 90s, 1d2h."""
    if seconds is None:
        return "-"
    left = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, left = divmod(left, size)
        if n:
            parts.append(f"{n}{unit}")
    if left or not parts:
        parts.append(f"{left}s")
    return "".join(parts)


def ended(status: str, exit_code: int | None = None, reason: str | None = None,
          max_time: float | None = None) -> str:
    """One line on how a job (or attempt) ended: "exit code 3", "timeout after 2h", "lost: ...",
    "killed by user", "OOMKilled: ..."; "" when there is nothing to say (it
    succeeded, or it has not ended). `max_time` (seconds) completes the timeout marker."""
    reason = (reason or "").strip()
    if reason == TIMEOUT:
        return f"timeout after {span(max_time)}" if max_time else "timeout"
    code = f"exit code {exit_code}" if exit_code not in (None, 0) else ""
    if not reason:
        if code:
            return code
        return {"failed": "failed (no exit code)", "killed": "killed", "lost": "lost"}.get(status, "")
    return reason  # the backend's own words ("OOMKilled", "killed by signal 9"); the code has its own field
