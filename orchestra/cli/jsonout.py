"""The `--json` documents of every listing: one conversion, so every command keeps the same rules.

Rules (docs/json.md documents every field, tests/db/test_json_schema.py checks them):
- a time is ISO 8601 with its time zone, in UTC (`2026-12-01T07:03:45+00:00`): every field named
  `*_at`, and `now`; null when it did not happen;
- a number with a unit says it in its name (`runtime_seconds`, `max_time_seconds`,
  `usage_slot_hours`, `total_size_bytes`);
- job counts are by state name, every state present (`held`, `queued`, `starting`, `running`,
  `succeeded`, `failed`, `killed`), so they add up the same way as the tables' columns.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from orchestra.services.datasets import DatasetInfo
from orchestra.services.jobs import JobRow
from orchestra.services.tasks import TaskDetail, TaskSummary


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 in UTC with its offset; None stays None."""
    if ts is None:
        return None
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):  # beyond year 9999 (a lease "forever"): the last time there is
        return dt.datetime.max.replace(microsecond=0, tzinfo=dt.timezone.utc).isoformat()


def _is_time(key: str) -> bool:
    return key.endswith("_at") or key == "now"


# Types whose values are already JSON values (exact types: a subclass such as a str enum or a
# numpy float takes the general path, which treats it the same way it always did).
_SCALAR = frozenset({str, int, float, bool, type(None)})
_NUMBER = frozenset({int, float})
# Per dataclass type: its fields as (name, is a time): looked up once per type, not per row
# (`dataclasses.fields` and the name test cost more than the conversion for a 1,000-row report).
_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, bool], ...] | None:
    """The cached field list of a dataclass type, or None when `cls` is not one."""
    names = _FIELDS.get(cls)
    if names is None and dataclasses.is_dataclass(cls):
        names = _FIELDS[cls] = tuple((f.name, _is_time(f.name)) for f in dataclasses.fields(cls))
    return names


def plain(obj: Any) -> Any:
    """Dataclasses, dicts and lists as JSON values, with every time (`*_at`, `now`) in ISO 8601.
    A field another module adds to a report passes through (under the same time rule).

    Hot path of every `--json` and /api/ document (1,000-row listings): exact-type dispatch, the
    common scalars returned at once, dataclass field lists cached per type."""
    cls = type(obj)
    if cls in _SCALAR:
        return obj
    if cls is list:
        return [plain(v) for v in obj]
    if cls is dict:
        return {str(k): _value(_is_time(str(k)), v) for k, v in obj.items()}
    names = _fields(cls)
    if names is not None:
        return {name: _value(is_time, getattr(obj, name)) for name, is_time in names}
    if isinstance(obj, dict):
        return {str(k): _value(_is_time(str(k)), v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _value(is_time: bool, value: Any) -> Any:
    cls = type(value)
    if cls in _SCALAR:
        return iso(float(value)) if is_time and cls in _NUMBER else value
    if is_time and isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso(float(value))
    return plain(value)


def _rename(data: dict[str, Any], **names: str) -> dict[str, Any]:
    """Keys renamed in place of the old ones (their order kept)."""
    return {names.get(k, k): v for k, v in data.items()}


def task_summary(s: TaskSummary) -> dict[str, Any]:
    data = plain(s)
    data["ended"] = s.ended
    return data


def task_detail(d: TaskDetail) -> dict[str, Any]:
    data = _rename(plain(d), max_time="max_time_seconds")
    data["summary"] = task_summary(d.summary)
    return data


def job_row(r: JobRow) -> dict[str, Any]:
    data = plain(r)
    data["runtime_seconds"] = None if r.runtime is None else round(r.runtime, 3)
    return data


def jobs(rows: Sequence[JobRow]) -> list[dict[str, Any]]:
    return [job_row(r) for r in rows]


def dataset(info: DatasetInfo) -> dict[str, Any]:
    return _rename(plain(info), total_size="total_size_bytes")


def dataset_detail(info: DatasetInfo, files: Sequence[tuple[str, int]]) -> dict[str, Any]:
    return {**dataset(info), "files": [{"path": p, "size_bytes": n} for p, n in files],
            "files_shown": len(files)}


def usage_report(report: Any) -> dict[str, Any]:
    data = plain(report)
    data["rows"] = [
        {**_rename(row, usage="usage_slot_hours", effective="effective_slot_hours"),
         "usage_slot_hours": r.usage / 3600, "effective_slot_hours": r.effective / 3600}
        for row, r in zip(data["rows"], report.rows)
    ]
    return data


def status_report(report: Any) -> dict[str, Any]:
    data = plain(report)
    data["scheduler"] = _rename(data["scheduler"], threshold="stale_after_seconds",
                                heartbeat_age="heartbeat_age_seconds")
    data["holds"] = [{**_rename(h, since="since_at", next_try="next_try_at"), "since_at": iso(raw.since),
                      "next_try_at": iso(raw.next_try)} for h, raw in zip(data["holds"], report.holds)]
    return data
