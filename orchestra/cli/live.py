"""`maestro task watch`: follow a task until it ends, like `gh run watch` and `kubectl get -w`.

On a terminal the view is redrawn in place (rich Live); into a pipe or a file, one tab-separated
line per change, after a header line, so a script can read it as it comes. The last line says how
the task ended: on stdout on a terminal, on stderr into a pipe (stdout stays pure TSV). The watch
only reads the database; stopping it (Ctrl-C) never touches the task.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live

from orchestra.cli import views_jobs
from orchestra.errors import NotFound, OrchestraError
from orchestra.services import watch
from orchestra.services.context import Context


def _poll(ctx: Context, ref: str, name: str) -> watch.TaskSnapshot:
    try:
        return watch.snapshot(ctx, ref)
    except NotFound:
        raise OrchestraError(f"task {name} was deleted while it was watched") from None


def watch_task(ctx: Context, ref: str, interval: float, exit_status: bool, console: Console | None = None,
               sleep: Callable[[float], None] = time.sleep) -> int:
    """Show the task until it has ended for good; the exit code: 0, or with `exit_status` 1 when it
    did not complete (partial, broken, killed). `console`: where to draw (default: a console on
    stdout as it is now, made here because rich Live needs a real Console object)."""
    console = console or Console(highlight=False)
    if not interval > 0:
        raise OrchestraError(f"--interval must be more than 0 seconds (got {interval:g}); e.g. --interval 2")
    snap = watch.snapshot(ctx, ref)
    if console.is_terminal:
        with Live(views_jobs.watch_view(snap, time.time(), interval), console=console, auto_refresh=False) as live:
            while not snap.ended:
                sleep(interval)
                snap = _poll(ctx, ref, snap.name)
                live.update(views_jobs.watch_view(snap, time.time(), interval), refresh=True)
        console.print(views_jobs.final_line(snap), markup=False)
    else:
        out = console.file
        out.write("\t".join(views_jobs.WATCH_COLUMNS) + "\n")
        last = None
        while True:
            if snap.key() != last:
                out.write(views_jobs.watch_line(snap, time.time()) + "\n")
                out.flush()
                last = snap.key()
            if snap.ended:
                break
            sleep(interval)
            snap = _poll(ctx, ref, snap.name)
        sys.stderr.write(views_jobs.final_line(snap) + "\n")
    return 1 if exit_status and not watch.succeeded(snap) else 0
