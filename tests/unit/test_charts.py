"""The dashboard's SVG charts (orchestra/web/charts.py): values land at the right height, times on
round UTC ticks, many users fold into "others", labels are escaped, no data draws a note."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from orchestra.scheduler.cycle import backend_name
from orchestra.services.history import task_of
from orchestra.web import charts
from orchestra.web.charts import Frame

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def points_of(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)]


def test_the_frame_maps_values_and_times_onto_the_plot() -> None:
    frame = Frame(T0, T0 + 3600, ymax=10.0)
    assert frame.y(0) == frame.top + frame.plot_h  # the bottom edge
    assert frame.y(10) == frame.top  # the top edge
    assert frame.y(2.5) == frame.top + 0.75 * frame.plot_h
    assert frame.x(T0) == frame.left and frame.x(T0 + 3600) == frame.width - frame.right
    assert frame.x(T0 + 1800) == frame.left + frame.plot_w / 2


def test_nice_axis_tops() -> None:
    assert [charts.nice_max(v) for v in (0, 0.3, 1, 3, 7, 12, 26, 80, 101)] == [1, 0.3, 1, 3, 8, 15, 30, 80, 150]


def test_stacked_areas_sit_on_each_other_at_the_right_heights() -> None:
    times = [T0 + 600, T0 + 1800, T0 + 3000]
    svg = charts.stacked_area(times, [("alice", [2, 4, 6]), ("bob", [1, 1, 2])], x0=T0, x1=T0 + 3600,
                              label="running", unit="slots")
    root = parse(svg)
    frame = Frame(T0, T0 + 3600, ymax=8.0)  # the top of the stack (8) is a round axis top
    areas = {p.get("data-series"): p for p in root.iter(f"{SVG}path")}
    assert list(areas) == ["alice", "bob"]
    alice_top = points_of(areas["alice"].get("d", ""))[:3]
    bob_top = points_of(areas["bob"].get("d", ""))[:3]
    assert alice_top == [(frame.x(t), frame.y(v)) for t, v in zip(times, [2, 4, 6])]
    assert bob_top == [(frame.x(t), frame.y(v)) for t, v in zip(times, [3, 5, 8])]  # stacked on alice
    bob_bottom = points_of(areas["bob"].get("d", ""))[3:]
    assert bob_bottom == [(frame.x(t), frame.y(v)) for t, v in zip(reversed(times), [6, 4, 2])]
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "alice: mean 4.0, peak 6 slots" in titles  # hover text per series
    assert root.get("viewBox", "").startswith("0 0 720 ") and root.get("class") == "chart"


def test_time_ticks_are_round_utc_times_inside_the_window() -> None:
    ticks = charts.time_ticks(T0 + 100, T0 + 6 * 3600)
    assert [label for _, label in ticks] == ["09:00", "10:00", "11:00", "12:00", "13:00", "14:00"]
    assert all(T0 + 100 <= t <= T0 + 6 * 3600 for t, _ in ticks)
    days = charts.time_ticks(T0, T0 + 30 * 86400)
    assert len(days) <= 7 and days[0][1] == "Jan 21"  # weekly ticks at midnight UTC, day labels
    assert all(t % 86400 == 0 for t, _ in days)


def test_many_users_collapse_into_others() -> None:
    series = [(f"user{i:02d}", [float(i)]) for i in range(20)]
    folded = charts.fold(series)
    assert len(folded) == charts.MAX_SERIES
    assert [n for n, _ in folded[:3]] == ["user19", "user18", "user17"] and folded[-1][0] == "others"
    assert sum(v[0] for _, v in folded) == sum(range(20))  # nothing lost
    svg = charts.stacked_area([T0], series, x0=T0 - 60, x1=T0 + 60, label="x", unit="slots")
    assert [p.get("data-series") for p in parse(svg).iter(f"{SVG}path")][-1] == "others"


def test_no_data_draws_a_note_instead_of_a_chart() -> None:
    for svg in (charts.stacked_area([], [], x0=T0, x1=T0 + 3600, label="running", unit="slots"),
                charts.lines([T0], [("all users", [None])], x0=T0, x1=T0 + 3600, label="wait", unit="s")):
        root = parse(svg)
        assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "empty"] == ["no data yet"]
        assert not list(root.iter(f"{SVG}path")) and not list(root.iter(f"{SVG}polyline"))


def test_labels_are_escaped() -> None:
    evil = '<script>alert(1)</script>"&'
    svg = charts.stacked_area([T0], [(evil, [1.0])], x0=T0 - 60, x1=T0 + 60, label=evil, unit="slots")
    assert "<script>" not in svg
    root = parse(svg)  # still well-formed
    assert root.get("aria-label") == evil and evil in [g.get("data-series") for g in root.iter(f"{SVG}g")]


def test_wait_lines_break_where_nothing_started() -> None:
    times = [T0 + i * 600 for i in range(5)]
    svg = charts.lines(times, [("all users", [10.0, 20.0, None, 40.0, None])], x0=T0, x1=T0 + 3000,
                       label="wait", unit="seconds")
    root = parse(svg)
    frame = Frame(T0, T0 + 3000, ymax=40.0)
    lines = list(root.iter(f"{SVG}polyline"))
    dots = list(root.iter(f"{SVG}circle"))
    assert len(lines) == 1 and len(dots) == 1  # the gap splits the line; a lone value is a dot
    assert points_of(lines[0].get("points", "")) == [(frame.x(times[0]), frame.y(10)), (frame.x(times[1]), frame.y(20))]
    assert (float(dots[0].get("cx", 0)), float(dots[0].get("cy", 0))) == (frame.x(times[3]), frame.y(40))


def test_the_recorder_finds_the_task_in_a_backend_name() -> None:
    assert task_of(backend_name(1234, 7, 2, "deadbeefcafe")) == 1234
    assert task_of(backend_name(99, 0, 1)) == 99
    assert task_of("not-a-name") is None
