"""The Grafana dashboard (docker/grafana/dashboards/orchestra.json) queries only what the scheduler
exports (orchestra/metrics.py), and has the panels issue 16 asks for.

The metric names are parsed out of each PromQL expression: strings, label matchers, range
selectors and `by (...)` groupings removed, the remaining identifiers not followed by `(` are
metric names (function names are). A renamed metric breaks this test, not the dashboard in silence.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from orchestra.metrics import METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "orchestra.json"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
HISTOGRAMS = {"orchestra_queue_wait_seconds", "orchestra_cycle_seconds"}


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(\\.|[^"\\])*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\boffset\s+[-0-9a-zA-Z_$]+", "", text)  # offset modifiers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # groupings
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        after = text[match.end():].lstrip()
        if after.startswith("(") or match.group() in KEYWORDS:
            continue  # a function (or an aggregation) or a keyword
        names.add(match.group())
    return names


def exported(name: str) -> bool:
    """`name` is a series the registry serves: a metric, or a histogram's _bucket/_sum/_count."""
    if name in METRIC_NAMES:
        return name not in HISTOGRAMS  # a histogram is queried through its series
    base, _, suffix = name.rpartition("_")
    return base in HISTOGRAMS and suffix in ("bucket", "sum", "count")


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]


def test_the_parser_finds_metric_names() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, step) (rate(orchestra_cycle_seconds_bucket{kind="full", '
            'step=~"a|b"}[$__rate_interval]))) / ignoring(x) orchestra_slots offset 5m')
    assert metric_names(expr) == {"orchestra_cycle_seconds_bucket", "orchestra_slots"}
    assert metric_names("time() - max(orchestra_scheduler_last_cycle_timestamp_seconds)") == {
        "orchestra_scheduler_last_cycle_timestamp_seconds"}
    assert not exported("orchestra_queue_wait_seconds") and exported("orchestra_queue_wait_seconds_count")
    assert not exported("orchestra_dispatched") and not exported("orchestra_slots_total")


def test_every_panel_queries_only_exported_metrics() -> None:
    seen = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            for name in names:
                assert exported(name), f"panel {panel['title']!r} queries {name}, which orchestra/metrics.py does not export"
            seen |= names
    assert "orchestra_jobs" in seen and "orchestra_fairshare_factor" in seen


def test_the_panels_issue_16_asks_for() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    wanted = {
        "Slots used per queue": ['orchestra_slots{kind="used"}'],
        "Jobs per state": ["sum by (state) (orchestra_jobs)"],
        "Fair-share factor per user": ["orchestra_fairshare_factor"],
        "Cycle time per step (full cycles, p90)": ["sum by (le, step)", "orchestra_cycle_seconds_bucket"],
    }
    for title, parts in wanted.items():
        assert title in exprs, title
        for part in parts:
            assert part in exprs[title], (title, part)
    [wait] = [e for t, e in exprs.items() if t.startswith("Queue wait")]
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, cluster, queue) (rate(orchestra_queue_wait_seconds_bucket" in wait
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))


def test_metric_names_follow_prometheus_conventions() -> None:
    """Counters end in _total, units are base units in the name; one registry's help parses."""
    from orchestra.config import Settings  # noqa: F401 - the metrics module's settings type
    from orchestra.metrics import Metrics
    from prometheus_client import generate_latest
    from tests.helpers import CONFIG
    import tempfile
    from orchestra.config import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "orchestra.toml"
        config.write_text(CONFIG.format(storage=tmp))
        settings = load_settings({"ORCHESTRA_CONFIG": str(config), "ORCHESTRA_HOME": tmp, "ORCHESTRA_USER": "x"})
    metrics = Metrics(settings)
    families = {f.name: f.type for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    for name in METRIC_NAMES:
        assert re.fullmatch(r"orchestra_[a-z_]+", name), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours_total|bytes_total)$", name), name
    assert families["orchestra_dispatched"] == "counter"  # the parser drops _total from the family name
    assert families["orchestra_attempts_ended"] == "counter" and families["orchestra_backend_errors"] == "counter"
    assert families["orchestra_queue_wait_seconds"] == families["orchestra_cycle_seconds"] == "histogram"
    assert families["orchestra_build_info"] == "gauge"
