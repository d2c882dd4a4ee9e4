"""`orchestra gc`: its `--now` argument, and what it prints (services/retention.py decides)."""
from __future__ import annotations

import datetime as dt

from orchestra.cli.common import console
from orchestra.errors import OrchestraError
from orchestra.services.retention import Report


def parse_now(value: str) -> float:
    """`--now`: epoch seconds, or an ISO date or date-time (local time unless it says otherwise)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise OrchestraError(f"--now {value!r} is neither epoch seconds nor an ISO date; "
                             "use e.g. --now 2027-01-31 or --now 2027-01-31T08:00") from None


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


def report(r: Report, keep_days: float, purge: bool) -> None:
    """One line per task that goes (or would), then notices and what stays, then a total."""
    say = lambda line: console.print(line, markup=False)  # noqa: E731
    if keep_days <= 0:
        say("retention is off ([retention] keep_finished_days = 0): finished tasks are kept forever")
        return
    verb = "would remove" if r.dry_run else "removed"
    gone = [x for x in r.removed if x.refused is None]
    for x in gone:
        outputs = (f", outputs {x.outputs}" if x.outputs else
                   f", outputs kept ({x.outputs_kept})" if x.outputs_kept else "")
        say(f"{verb} {x.name} ({x.status} {_day(x.finished_at)}): {x.jobs} job(s), {x.attempts} attempt(s), "
            f"{x.logs} log dir(s){outputs}")
    for x in r.removed:
        if x.refused is not None:
            say(f"kept {x.name}: {x.refused}")
    for name, why in r.kept:
        say(f"kept {name}: {why}")
    for n in r.noticed:  # `orchestra gc` gives no notice itself: the service does, and mails it
        say(f"notice due: {n.name} ({n.owner}) goes on {_day(n.remove_at)} or later, once the service "
            "has told its owner at its daily run")
    say(f"{verb} {len(gone)} task(s) finished more than {keep_days:g} day(s) ago"
        f"{' with their outputs' if purge else ''}; {len(r.noticed)} notice(s) due, "
        f"{len(r.kept) + len(r.removed) - len(gone)} kept")
