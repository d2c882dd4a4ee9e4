"""Listings for any terminal and for scripts: one description of a listing's columns, rendered as a
table that fits the terminal, or as tab-separated text when stdout is not a terminal.

Why one module: the issue's users met tables that cut numbers at 80 columns ("1.0…"), wrapped
progress bars at 120, and 155-column box drawings in `| cat`. Each listing now says what its
columns are (their priority, whether they may be folded); this module decides the layout:

- terminal: a borderless table exactly as wide as the terminal at most; when the columns do not
  fit, the least important ones are dropped and a dim line says which; numbers, times and states
  are never cut (their width is their widest cell); names and free text are folded, never cut
  with "…"; a bar gets the width that is left.
- pipe (stdout not a terminal): one header line (`--noheader` drops it), then one line per row,
  cells separated by tabs, no colour, no box drawing: `cut -f`, `awk -F'\\t'`, `sort -t$'\\t'`.
- `--format id,task,status` (squeue `-o`): the columns, in that order, for both.

A note (e.g. "200 of 2,000 shown (--limit 0 for all)") is a dim line under a table, and goes to
stderr when stdout is a pipe, so the TSV stays parseable.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Optional, Union

import typer
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from orchestra.errors import OrchestraError

NUMBER, FIXED, NAME, TEXT, BAR = "number", "fixed", "name", "text", "bar"
BAR_MIN, BAR_MAX = 4, 20  # a bar's width in cells, before its label
GAP = 2  # cells between two columns


@dataclass(frozen=True)
class Column:
    """One column of a listing.

    `priority`: 1 is never dropped; at a narrow width the highest numbers go first.
    `kind`: NUMBER (right-aligned) and FIXED (times, states) are never cut; NAME and TEXT are
    folded down to `fold` cells; BAR is a progress bar (cells are `Bar`).
    `default`: shown without --format (others only when asked for by name)."""

    name: str
    priority: int = 1
    kind: str = FIXED
    default: bool = True
    fold: int = 12
    zeros_drop: bool = False  # a count column that is 0 in every row goes first at a narrow width

    @property
    def folds(self) -> bool:
        return self.kind in (NAME, TEXT)


@dataclass(frozen=True)
class Bar:
    """A progress bar: `parts` are (count, character, style) segments out of `total`; `label`
    follows the bar in a table and is the whole cell in TSV."""

    parts: tuple[tuple[int, str, str], ...]
    total: int
    label: str

    def render(self, width: int) -> Text:
        text = Text()
        used = 0
        if self.total > 0:
            acc = 0
            for count, char, style in self.parts:
                acc += count
                end = int(round(width * acc / self.total))
                if end > used:
                    text.append(char * (end - used), style=style)
                    used = end
        text.append("░" * (width - used), style="dim")
        text.append(" " + self.label)
        return text


@dataclass(frozen=True)
class Styled:
    """A cell with a style in a terminal (a state's colour), and in TSV its plain text or `tsv`
    (a time: short and local in a table, ISO 8601 for scripts)."""

    text: str
    style: str = ""
    tsv: str | None = None


Cell = Union[str, Styled, Bar]


def plain(cell: Cell) -> str:
    if isinstance(cell, Bar):
        return cell.label
    if isinstance(cell, Styled):
        return cell.text if cell.tsv is None else cell.tsv
    return cell


def shown(cell: Cell) -> str:
    """What a table shows of a cell (bars aside)."""
    return cell.text if isinstance(cell, Styled) else plain(cell)


shown_text = shown  # the name `fit` can call: it keeps its list of shown columns in `shown`


@dataclass
class Listing:
    """What a listing command has to show: its columns (in their default order), its rows (column
    name -> cell), what to say when there is no row, and notes (truncation) for under it."""

    columns: Sequence[Column]
    rows: list[dict[str, Cell]]
    empty: str = "nothing to show"
    notes: list[str] = field(default_factory=list)
    legend: str | None = None  # a dim line under a table (what a bar or a unit means); not in TSV


def format_help(columns: Sequence[Column]) -> str:
    names = ", ".join(c.name for c in columns)
    return f"columns to show, comma-separated (squeue -o style), for the table and piped output; any of: {names}"


FormatOption = Annotated[Optional[str], typer.Option("--format", "-o", metavar="COLUMNS",
                                                    help="columns to show, comma-separated, e.g. id,status "
                                                         "(the error lists the valid names)")]
NoHeaderOption = Annotated[bool, typer.Option("--noheader", help="piped output: no header line")]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output (schema: docs/json.md)")]


def choose(columns: Sequence[Column], fmt: str | None) -> list[Column]:
    """The columns --format asks for, in its order (all default ones without it); an unknown name
    is refused naming the valid ones."""
    if fmt is None:
        return [c for c in columns if c.default]
    by_name = {c.name: c for c in columns}
    wanted = [w.strip() for w in fmt.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        what = f"unknown column(s) {', '.join(unknown)}" if unknown else "no column named"
        raise OrchestraError(f"--format: {what}; use a comma-separated list of: {', '.join(by_name)}")
    return [by_name[w] for w in dict.fromkeys(wanted)]


def emit(listing: Listing, fmt: str | None = None, noheader: bool = False,
         before: Callable[[], None] | None = None) -> None:
    """Print a listing: a table on a terminal, TSV on a pipe (see the module docstring).
    `before` prints what goes above it, once --format is known to be valid (nothing is printed
    for a refused command)."""
    from orchestra.cli.common import console

    columns = choose(listing.columns, fmt)
    if before is not None:
        before()
    if not console.is_terminal:
        write_tsv(columns, listing.rows, header=not noheader)
        if not listing.rows:  # a person reading a pipe (`| less`) still learns why it is empty
            sys.stderr.write(listing.empty + "\n")
        for note in listing.notes:
            sys.stderr.write(note + "\n")
        return
    if not listing.rows:
        console.print(listing.empty, markup=False)
    else:
        shown, widths = fit(columns, listing.rows, console.width, keep_all=fmt is not None)
        console.print(table(shown, widths, listing.rows))
        hidden = [c.name for c in columns if c not in shown]
        if hidden:
            console.print(f"({len(hidden)} column{'s' if len(hidden) > 1 else ''} hidden: {', '.join(hidden)}; "
                          "widen the terminal or use --format)", style="dim", markup=False, soft_wrap=False)
    if listing.legend and listing.rows:
        console.print(listing.legend, style="dim", markup=False, soft_wrap=False)
    for note in listing.notes:
        console.print(note, style="dim", markup=False, soft_wrap=False)


def block(part: Listing) -> None:
    """A listing inside a report (`orchestra status`): a borderless table that fits, whatever
    stdout is (the report around it is text either way)."""
    from orchestra.cli.common import console

    if not part.rows:
        console.print(part.empty, markup=False)
        return
    columns = choose(part.columns, None)
    width = console.width if console.is_terminal else 10_000
    shown, widths = fit(columns, part.rows, width)
    console.print(table(shown, widths, part.rows))


def write_tsv(columns: Sequence[Column], rows: Sequence[dict[str, Cell]], header: bool = True) -> None:
    out = sys.stdout
    if header:
        out.write("\t".join(c.name for c in columns) + "\n")
    for row in rows:
        out.write("\t".join(_tsv_cell(plain(row.get(c.name, ""))) for c in columns) + "\n")


def _tsv_cell(value: str) -> str:
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _widest(column: Column, rows: Sequence[dict[str, Cell]]) -> int:
    """The widest cell, header included (a bar: its widest label, the header aside)."""
    cells = [cell_len(shown(r.get(column.name, ""))) for r in rows]
    return max(cells, default=0) if column.kind == BAR else max([cell_len(column.name)] + cells)


def _need(column: Column, widest: int) -> int:
    """The fewest cells a column can have without cutting anything."""
    if column.kind == BAR:  # `widest`: its widest label
        return max(cell_len(column.name), widest + 1 + BAR_MIN)
    if column.folds:
        return min(widest, max(column.fold, max((cell_len(w) for w in column.name.split()), default=1)))
    return widest


def fit(columns: Sequence[Column], rows: Sequence[dict[str, Cell]], width: int,
        keep_all: bool = False) -> tuple[list[Column], dict[str, int]]:
    """The columns that fit in `width` cells (dropping the least important, unless `keep_all`), and
    each one's width: never less than its widest cell for numbers, times and states."""
    widest = {c.name: _widest(c, rows) for c in columns}
    shown = list(columns)

    def total(cols: Sequence[Column]) -> int:
        return sum(_need(c, widest[c.name]) for c in cols) + GAP * (len(cols) - 1)

    empty = {c.name for c in columns if c.zeros_drop and rows and all(shown_text(r.get(c.name, "")) in ("", "0")
                                                                        for r in rows)}

    def rank(c: Column) -> tuple[int, int]:
        return (c.priority + (100 if c.name in empty else 0), shown.index(c))

    while not keep_all and total(shown) > width:
        droppable = [c for c in shown if c.priority > 1]
        if not droppable:
            break
        worst = max(droppable, key=rank)
        shown.remove(worst)
    widths = {c.name: _need(c, widest[c.name]) for c in shown}
    spare = width - total(shown)
    # What is left goes to folded columns (up to their widest cell), then to a bar.
    short = [c.name for c in shown if c.folds and widths[c.name] < widest[c.name]]
    while spare > 0 and short:  # one cell at a time to each folded column still short of its widest cell
        for name in list(short):
            if spare <= 0:
                break
            widths[name] += 1
            spare -= 1
            if widths[name] >= widest[name]:
                short.remove(name)
    for c in shown:
        if c.kind == BAR and spare > 0:
            more = min(spare, BAR_MAX - BAR_MIN)
            widths[c.name] += more
            spare -= more
    return shown, widths


def table(columns: Sequence[Column], widths: dict[str, int], rows: Sequence[dict[str, Cell]]) -> Table:
    """A borderless rich table with these exact column widths."""
    t = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c.name, width=widths[c.name], justify="right" if c.kind == NUMBER else "left",
                     no_wrap=not c.folds, overflow="fold")
    label_width = {c.name: max((len(plain(r.get(c.name, ""))) for r in rows), default=0)
                   for c in columns if c.kind == BAR}
    for row in rows:
        cells: list[Text | str] = []
        for c in columns:
            cell = row.get(c.name, "")
            if isinstance(cell, Bar):
                label = cell.label.rjust(label_width[c.name])
                cells.append(Bar(cell.parts, cell.total, label).render(widths[c.name] - 1 - len(label)))
            elif isinstance(cell, Styled):
                cells.append(Text(cell.text, style=cell.style))
            else:
                cells.append(Text(cell))
        t.add_row(*cells)
    return t


def shown_note(shown: int, total: int, hint: str = "--limit 0 for all") -> list[str]:
    """["200 of 2,000 shown (--limit 0 for all)"] when a limit cut the listing; [] otherwise."""
    return [f"{shown:,} of {total:,} shown ({hint})"] if total > shown else []
