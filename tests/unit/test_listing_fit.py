"""`listing.fit`: which columns an 80-column terminal keeps. A count column that is 0 in every row
says least, so it goes before a column of better priority that has something to say."""
from __future__ import annotations

from orchestra.cli.listing import GAP, NUMBER, Column, fit

COLUMNS = [Column("name", 1), Column("queued", 2, NUMBER, zeros_drop=True), Column("killed", 3, NUMBER, zeros_drop=True),
           Column("failed", 2, NUMBER)]


def names(width: int, rows: list[dict]) -> list[str]:
    return [c.name for c in fit(COLUMNS, rows, width)[0]]


def room(*widths: int) -> int:
    """The cells these columns need side by side."""
    return sum(widths) + GAP * (len(widths) - 1)


def test_all_zero_counts_go_first_then_priority_decides() -> None:
    rows = [{"name": "task-one", "queued": "0", "killed": "7", "failed": "0"},
            {"name": "task-two", "queued": "0", "killed": "1", "failed": "0"}]
    assert names(200, rows) == ["name", "queued", "killed", "failed"]
    # room for three: queued (all 0) goes although killed has a worse priority
    assert names(room(8, 6, 6, 6) - 1, rows) == ["name", "killed", "failed"]
    rows[1]["queued"] = "3"  # now queued has something to say: killed (priority 3) goes instead
    assert names(room(8, 6, 6, 6) - 1, rows) == ["name", "queued", "failed"]


def test_a_column_not_marked_keeps_its_priority_when_all_zero() -> None:
    rows = [{"name": "t", "queued": "5", "killed": "5", "failed": "0"}]
    assert names(room(4, 6, 6), rows) == ["name", "queued", "failed"]  # killed (priority 3) goes
