"""Charts as SVG text, drawn on the server: no JavaScript, no CDN, nothing for the CSP to refuse.

Pure functions of their data (the Usage page calls them with `services.history.series`): a
stacked area of running slots per user and a line chart of queue waits. Each chart is one <svg>
with a viewBox, so it scales to the page's width (a phone's too; CSS class "chart"); every label
is escaped; times on the x axis are UTC; each series has a <title>, which a browser shows on hover.
`Frame` holds the geometry, so a test can check that a value lands at the right height.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Colour-blind-safe-ish palette (Tableau 10); "others" is grey.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
OTHERS_COLOUR = "#bab0ac"
MAX_SERIES = 9  # beyond this, the smallest series fold into "others"
TIME_STEPS = (60, 300, 600, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


@dataclass(frozen=True)
class Frame:
    """Where the plot sits in the viewBox, and how data maps onto it."""

    x0: float  # time at the left edge (epoch s)
    x1: float  # time at the right edge
    ymax: float  # value at the top edge (the bottom is 0)
    width: int = 720
    height: int = 240
    left: int = 52
    right: int = 12
    top: int = 12
    bottom: int = 26  # the time labels

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, t: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return round(self.left + self.plot_w * (t - self.x0) / span, 2)

    def y(self, v: float) -> float:
        return round(self.top + self.plot_h * (1.0 - (v / self.ymax if self.ymax else 0.0)), 2)


def nice_max(value: float) -> float:
    """The axis's top: a round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at
    least `value`, so the stack fills most of the plot (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * power >= value - 1e-9:
            return float(f"{step * power:.12g}")  # 0.3, not 0.30000000000000004
    return 10 * power


def time_ticks(x0: float, x1: float, most: int = 7) -> list[tuple[float, str]]:
    """Round UTC times between x0 and x1, at most `most` of them, with their labels."""
    span = max(1.0, x1 - x0)
    step = next((s for s in TIME_STEPS if span / s <= most), TIME_STEPS[-1])
    first = math.ceil(x0 / step) * step
    fmt = "%H:%M" if step < 86400 else "%b %d"
    return [(t, dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(fmt))
            for t in range(int(first), int(x1) + 1, step)]


def fold(series: Sequence[tuple[str, Sequence[float]]], most: int = MAX_SERIES,
         others: str = "others") -> list[tuple[str, list[float]]]:
    """At most `most` series: the largest by total, then one "others" summing the rest (and any
    series already named so)."""
    named = [(n, list(v)) for n, v in series if n != others]
    rest = [list(v) for n, v in series if n == others]
    if len(named) + bool(rest) <= most:
        return named + [(others, rest[0])] if rest else named
    named.sort(key=lambda s: -sum(s[1]))
    keep, folded = named[:most - 1], [v for _, v in named[most - 1:]] + rest
    return keep + [(others, [sum(col) for col in zip(*folded)])]


def _svg(frame: Frame, label: str, body: list[str], legend: list[tuple[str, str, str]], unit: str) -> Markup:
    """The whole <svg>: axes, `body`, and a legend of (name, colour, hover text) below the plot."""
    per_row = 4
    rows = math.ceil(len(legend) / per_row)
    height = frame.height + 18 * rows + (4 if rows else 0)
    out = [f'<svg class="chart" viewBox="0 0 {frame.width} {height}" role="img" aria-label="{escape(label)}" '
           'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">',
           f"<title>{escape(label)}</title>"]
    # y grid and labels
    for i in range(5):
        v = frame.ymax * i / 4
        y = frame.y(v)
        out.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y}" y2="{y}" stroke="#e2e8f0"/>')
        out.append(f'<text x="{frame.left - 4}" y="{y + 3.5}" text-anchor="end" fill="#5a6578">{_number(v)}</text>')
    out.append(f'<text x="4" y="{frame.top + 2}" fill="#5a6578" transform="rotate(90 4 {frame.top + 2})">'
               f"{escape(unit)}</text>")
    base = frame.y(0)
    for t, text in time_ticks(frame.x0, frame.x1):
        x = frame.x(t)
        out.append(f'<line x1="{x}" x2="{x}" y1="{base}" y2="{base + 4}" stroke="#5a6578"/>')
        out.append(f'<text x="{x}" y="{base + 15}" text-anchor="middle" fill="#5a6578">{escape(text)}</text>')
    out.append(f'<text x="{frame.width - frame.right}" y="{frame.top - 2}" text-anchor="end" fill="#5a6578">UTC</text>')
    out += body
    out.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base}" y2="{base}" stroke="#5a6578"/>')
    for i, (name, colour, hover) in enumerate(legend):
        x = frame.left + (i % per_row) * (frame.plot_w / per_row)
        y = frame.height + 4 + 18 * (i // per_row)
        short = name if len(name) <= 22 else name[:21] + "…"
        out.append(f'<g class="legend" data-series="{escape(name)}"><title>{escape(hover)}</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14:.1f}" y="{y + 9}">{escape(short)}</text></g>')
    out.append("</svg>")
    return Markup("".join(out))


def _number(v: float) -> str:
    return f"{v:g}" if v < 10000 else f"{v / 1000:g}k"


def empty(label: str, x0: float, x1: float, unit: str, note: str = "no data yet") -> Markup:
    """A chart frame with a note in the middle, for a window without records."""
    frame = Frame(x0, x1, 1.0)
    body = [f'<text class="empty" x="{frame.left + frame.plot_w / 2}" y="{frame.top + frame.plot_h / 2}" '
            f'text-anchor="middle" fill="#5a6578" font-size="14">{escape(note)}</text>']
    return _svg(frame, label, body, [], unit)


def stacked_area(times: Sequence[float], series: Sequence[tuple[str, Sequence[float]]], *, x0: float, x1: float,
                 label: str, unit: str, others: str = "others") -> Markup:
    """Series stacked in order (the first at the bottom), one value per time; times within [x0, x1]."""
    folded = fold(series, others=others)
    if not times or not folded:
        return empty(label, x0, x1, unit)
    tops = [0.0] * len(times)
    stacks = []
    for _, values in folded:
        lower = tops
        tops = [a + max(0.0, b) for a, b in zip(tops, values)]
        stacks.append((lower, tops))
    frame = Frame(x0, x1, nice_max(max(tops)))
    xs = [frame.x(t) for t in times]
    body, legend = [], []
    for i, ((name, values), (lower, upper)) in enumerate(zip(folded, stacks)):
        colour = OTHERS_COLOUR if name == others else PALETTE[i % len(PALETTE)]
        mean = sum(values) / len(values)
        hover = f"{name}: mean {mean:.1f}, peak {max(values):g} {unit}"
        edge = " ".join(f"{x},{frame.y(v)}" for x, v in zip(xs, upper))
        back = " ".join(f"{x},{frame.y(v)}" for x, v in zip(reversed(xs), reversed(lower)))
        body.append(f'<path class="area" data-series="{escape(name)}" fill="{colour}" fill-opacity="0.85" '
                    f'stroke="{colour}" stroke-width="0.5" d="M{edge} L{back} Z"><title>{escape(hover)}</title></path>')
        legend.append((name, colour, hover))
    return _svg(frame, label, body, legend, unit)


def lines(times: Sequence[float], series: Sequence[tuple[str, Sequence[float | None]]], *, x0: float, x1: float,
          label: str, unit: str, others: str = "others") -> Markup:
    """One line per series; a None value is a gap (nothing to measure there), a lone value a dot."""
    if not times or not any(v is not None for _, values in series for v in values):
        return empty(label, x0, x1, unit)
    top = max(v for _, values in series for v in values if v is not None)
    frame = Frame(x0, x1, nice_max(top))
    body, legend = [], []
    for i, (name, values) in enumerate(series[:MAX_SERIES + 1]):
        colour = "#1a202c" if i == 0 else OTHERS_COLOUR if name == others else PALETTE[(i - 1) % len(PALETTE)]
        known = [v for v in values if v is not None]
        if not known:
            continue
        hover = f"{name}: mean {sum(known) / len(known):.0f}, max {max(known):.0f} {unit}"
        runs: list[list[tuple[float, float]]] = [[]]
        for t, v in zip(times, values):
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((frame.x(t), frame.y(v)))
        parts = []
        for run in (r for r in runs if r):
            if len(run) == 1:
                parts.append(f'<circle cx="{run[0][0]}" cy="{run[0][1]}" r="2" fill="{colour}"/>')
            else:
                parts.append('<polyline fill="none" stroke="{c}" stroke-width="{w}" points="{p}"/>'.format(
                    c=colour, w=2 if i == 0 else 1.2, p=" ".join(f"{x},{y}" for x, y in run)))
        body.append(f'<g class="line" data-series="{escape(name)}"><title>{escape(hover)}</title>{"".join(parts)}</g>')
        legend.append((name, colour, hover))
    return _svg(frame, label, body, legend, unit)
