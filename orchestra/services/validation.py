"""Small parsers for user input, each failing with a one-line error that shows the right form."""
from __future__ import annotations

import re

from orchestra.errors import OrchestraError

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# A container image reference as the OCI distribution spec defines it (registry/path:tag@digest).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)
PRIORITY_RANGE = (-100, 100)


def parse_duration(text: str | None) -> float | None:
    """'2h', '90m', '1h30m', '45s', '1d' or plain seconds ('3600') -> seconds; None stays None."""
    if text is None or text == "":
        return None
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _DURATION.match(value)
        if not match or not any(match.groups()):
            raise OrchestraError(f"--max-time {text!r} is not a duration; use e.g. 2h, 90m, 1h30m, 45s or seconds")
        d, h, m, s = (int(g or 0) for g in match.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise OrchestraError(f"--max-time {text!r} must be longer than zero")
    return float(seconds)


def check_image(image: str) -> None:
    if not image or len(image) > 512 or not _IMAGE.match(image):
        raise OrchestraError(
            f"--containerImage {image!r} is not a valid image reference; use e.g. "
            "registry.example.org/team/image:tag or user/image (lower case)"
        )


def check_priority(priority: int) -> None:
    low, high = PRIORITY_RANGE
    if not low <= priority <= high:
        raise OrchestraError(f"--priority {priority} is out of range; use an integer from {low} to {high}")


def check_retries(retries: int) -> None:
    if not 0 <= retries <= 100:
        raise OrchestraError(f"--max-retries {retries} is out of range; use 0 to 100")


MAX_ID = 2**63 - 1  # ids are 64-bit on both databases


def known_job_id(job_id: int) -> bool:
    """Whether `job_id` could name a job at all (a larger number makes SQLite overflow)."""
    return 0 < job_id <= MAX_ID
