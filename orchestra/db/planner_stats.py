"""The planner's statistics of the jobs table, kept up with the scheduler's own bulk changes.

Why (issue 18): PostgreSQL plans the dispatch's reads from the statistics of the last ANALYZE.
A task expanded into a table whose statistics predate it (a new installation's first task, or
any task that adds a good part of the table) is planned as the few rows the statistics know:
the read of a task's next queued jobs (job_lookup.CANDIDATES) became a bitmap scan of every
queued job of the task and a sort, where an ordered index scan stops after the few it takes.
Measured on this VM: a fresh 2,000-job task, 1.4 ms a pass instead of ~0.1 ms; a fresh
100,000-job task, 45-75 ms a pass instead of ~1 ms. Autovacuum does analyze such a table, but
at its next round (`autovacuum_naptime`, a minute by default), through which every pass pays.

So the scheduler applies autovacuum's own rule at once: when its bulk changes (jobs expanded,
jobs released by their scouts) reach ANALYZE_FRACTION of the rows the statistics know, and at
least ANALYZE_MIN_ROWS, it runs ANALYZE on the table. Its cost is bounded by ANALYZE's sample
(300 x the statistics target rows, whatever the table's size: ~15 ms for 2,000 rows, ~380 ms
for 100,000 here), paid once per such change in a full cycle or a short pass, after the
pass's launches. SQLite keeps no statistics unless asked, and plans these reads by their
indexes alone: nothing to do there.
"""
from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from orchestra.db import faults
from orchestra.db.engine import is_sqlite

log = logging.getLogger("orchestra.scheduler")

ANALYZE_MIN_ROWS = 1000
ANALYZE_FRACTION = 0.1  # autovacuum_analyze_scale_factor's default
_KNOWN_ROWS = text("SELECT reltuples FROM pg_class WHERE oid = CAST(:table AS regclass)")


def outdated_by(known_rows: float | None, changed: int) -> bool:
    """Whether `changed` rows make statistics that know `known_rows` (-1 or None: never
    analyzed) out of date, by autovacuum's rule applied at once."""
    return changed >= due_at(known_rows)


def due_at(known_rows: float | None) -> int:
    """The rows of change at which statistics that know `known_rows` are out of date."""
    return max(ANALYZE_MIN_ROWS, int(ANALYZE_FRACTION * max(known_rows or 0.0, 0.0)))


class TableStatistics:
    """One table's bulk changes since its statistics were refreshed, and their refresh."""

    def __init__(self, engine: Engine, table: str) -> None:
        self.engine = engine
        self.table = table  # a constant name, never a user's
        self.changed = 0
        self._check_at = ANALYZE_MIN_ROWS  # below this, no need to ask the server anything
        self._sqlite = is_sqlite(engine)

    def add(self, rows: int) -> None:
        self.changed += rows

    def keep(self) -> bool:
        """ANALYZE the table if the changes outdated its statistics; True when it ran. One read
        of pg_class when the changes reach the point last computed from it; a failure is logged,
        never raised: statistics only make plans better, and autovacuum still takes them later.
        A role that does not own the table gets PostgreSQL's warning and nothing is done."""
        if self._sqlite or self.changed < self._check_at:
            return False
        try:
            with self.engine.connect() as connection:
                known = connection.execute(_KNOWN_ROWS, {"table": self.table}).scalar()
                if not outdated_by(known, self.changed):
                    self._check_at = due_at(known)
                    return False
                connection.execute(text(f"ANALYZE {self.table}"))
                connection.commit()
        except DBAPIError as exc:
            log.warning("statistics of %s not refreshed (autovacuum will): %s", self.table, faults.describe(exc))
            return False
        self.changed, self._check_at = 0, ANALYZE_MIN_ROWS
        return True
