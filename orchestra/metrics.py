"""Prometheus metrics of the scheduler service (`orchestra scheduler run --metrics-port PORT`).

Why this shape: a scrape must cost nothing however deep the queue (< 50 ms at 1,000,000 queued
jobs), so it reads memory only. The gauges are a snapshot rebuilt once per cycle (`refresh`) from
what is small by construction: the per-task `n_queued` counters summed over tasks (never job
rows), the live attempts (bounded by the slots), the users, the configuration and the cycle's own
hold cache. The counters and histograms are fed from the `CycleReport` each cycle returns
(`record`): its step timings, dispatches with their queue waits, attempt ends per result, backend
errors. Everything lives in a registry of our own, never prometheus-client's global one, so a
test process can hold several and nothing else leaks in.

`orchestra_jobs` covers the states a counter or the live attempts give exactly: `queued`,
`starting`, `running`. Finished and held jobs would need a count of job rows; their flow is in
`orchestra_attempts_ended_total`.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from orchestra import fairshare
from orchestra.accounts import effective_shares
from orchestra.db.models import Attempt, Job, Task, User
from orchestra.errors import OrchestraError
from orchestra.states import AttemptStatus

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from orchestra.config import Settings
    from orchestra.scheduler.cycle import CycleReport
    from orchestra.services.context import Context

LIVE = (AttemptStatus.STARTING.value, AttemptStatus.RUNNING.value)
ENDED_RESULTS = ("succeeded", "failed", "killed", "lost")
BACKEND_ERROR_KINDS = ("launch_refused", "launch_infra", "unavailable")
# Seconds: a short pass takes about a millisecond, a full cycle at 1M queued a few hundred.
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds from queued to started: from "at once" to a week in a busy lab.
WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                86400.0, 172800.0, 604800.0)
SHORT_REFRESH_EVERY = 1.0  # seconds: short passes come by the hundred per second under load

# Every metric the service exports (the dashboard test checks its queries against this list).
METRIC_NAMES = (
    "orchestra_jobs", "orchestra_slots", "orchestra_queue_wait_seconds", "orchestra_cycle_seconds",
    "orchestra_dispatched_total", "orchestra_attempts_ended_total", "orchestra_backend_errors_total",
    "orchestra_fairshare_factor", "orchestra_usage_slot_hours", "orchestra_holds",
    "orchestra_scheduler_last_cycle_timestamp_seconds", "orchestra_build_info",
)


class Snapshot(Collector):
    """The gauges as of the last refresh: a list swapped whole, so a scrape never sees half of one."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class Metrics:
    """The service's registry: counters and histograms fed per cycle, gauges refreshed per cycle."""

    def __init__(self, settings: Settings, user_labels: bool | None = None) -> None:
        from orchestra.services.status import version

        self.settings = settings
        self.user_labels = settings.scheduler.metrics_user_labels if user_labels is None else user_labels
        self.version = version()
        # `live`: the counters and histograms (a few hundred samples, rendered per scrape);
        # the snapshot's gauges (thousands with many users) are rendered once per refresh into
        # `_rendered`; `registry` is the whole, for callers that want one registry.
        self.live = CollectorRegistry(auto_describe=True)
        self.snapshot = Snapshot()
        self._snapshot_registry = CollectorRegistry(auto_describe=True)
        self._snapshot_registry.register(self.snapshot)
        r = self.live
        self.cycle_seconds = Histogram("orchestra_cycle_seconds", "Duration of scheduler cycles and of their steps "
                                       "(step=total: the whole cycle); kind=full|short", ["kind", "step"],
                                       buckets=CYCLE_BUCKETS, registry=r)
        self.queue_wait = Histogram("orchestra_queue_wait_seconds", "Time from queued to started, observed when "
                                    "the backend accepts the launch", ["cluster", "queue"], buckets=WAIT_BUCKETS,
                                    registry=r)
        self.dispatched = Counter("orchestra_dispatched", "Jobs started (launches the backend accepted)",
                                  ["cluster", "queue"], registry=r)
        self.ended = Counter("orchestra_attempts_ended", "Attempts ended, by result (succeeded, failed, killed, "
                             "lost)", ["cluster", "queue", "result"], registry=r)
        self.backend_errors = Counter("orchestra_backend_errors", "Backend errors: launch_refused (the create was "
                                      "refused for the job), launch_infra (refused for the cluster's own reason: "
                                      "the queue is held), unavailable (the backend failed every retry)",
                                      ["cluster", "kind"], registry=r)
        for cluster in settings.clusters.values():  # every series exists from the start: rate() works at once
            for kind in BACKEND_ERROR_KINDS:
                self.backend_errors.labels(cluster.name, kind)
            for queue in cluster.queues.values():
                self.dispatched.labels(cluster.name, queue.name)
                self.queue_wait.labels(cluster.name, queue.name)
                for result in ENDED_RESULTS:
                    self.ended.labels(cluster.name, queue.name, result)
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (self.snapshot, self.cycle_seconds, self.queue_wait, self.dispatched, self.ended,
                          self.backend_errors):
            self.registry.register(collector)
        self.last_cycle: float | None = None
        self._refreshed = 0.0
        self._owed = False
        self._publish(self._static())

    def _publish(self, families: list[Metric]) -> None:
        """Swap in a new snapshot and its rendering (one assignment each: a scrape sees whole ones)."""
        self.snapshot.families = families
        self._rendered = generate_latest(self._snapshot_registry)

    def render(self) -> bytes:
        """The scrape's body (Prometheus text format 0.0.4): the gauges as rendered at the last
        refresh, then the counters and histograms as of now."""
        return self._rendered + generate_latest(self.live)

    # ------------------------------------------------------------------ fed by the loop
    def record(self, report: CycleReport) -> None:
        """Add one cycle's (or short pass's) timings, dispatches, ends and errors."""
        kind = "full" if report.full else "short"
        for step, seconds in report.steps.items():
            self.cycle_seconds.labels(kind, step).observe(seconds)
        self.cycle_seconds.labels(kind, "total").observe(report.seconds)
        for (cluster, queue), n in report.dispatched.items():
            self.dispatched.labels(cluster, queue).inc(n)
        for cluster, queue, wait in report.waits:
            self.queue_wait.labels(cluster, queue).observe(max(0.0, wait))
        for (cluster, queue, result), n in report.ended.items():
            self.ended.labels(cluster, queue, result).inc(n)
        for (cluster, kind_), n in report.backend_errors.items():
            self.backend_errors.labels(cluster, kind_).inc(n)
        self.last_cycle = time.time()

    def backend_unavailable(self, cluster: str) -> None:
        """A cycle stopped because a backend failed through every retry (the loop backs off)."""
        self.backend_errors.labels(cluster, "unavailable").inc()

    def due(self, full: bool) -> bool:
        """Refresh after every full cycle, after short passes at most once a second (a skipped
        refresh is owed: see `refresh_in`)."""
        due = full or time.monotonic() - self._refreshed >= SHORT_REFRESH_EVERY
        self._owed = not due
        return due

    def refresh_in(self) -> float | None:
        """Seconds until an owed refresh may run (the loop wakes for it: the gauges must not show
        a burst's middle until the next interval), or None when nothing is owed."""
        if not self._owed:
            return None
        return max(0.0, SHORT_REFRESH_EVERY - (time.monotonic() - self._refreshed))

    def refresh(self, ctx: Context, holds: Iterable[tuple[str, str]] = ()) -> None:
        """Rebuild the gauges: a few GROUP BYs over tasks, live attempts and users (no job rows)."""
        now = time.time()
        with ctx.engine.connect() as conn:
            queued = conn.execute(
                select(Task.cluster, Task.queue, User.name, func.sum(Task.n_queued))
                .join(User, User.id == Task.owner_id).where(Task.n_queued > 0)
                .group_by(Task.cluster, Task.queue, User.name)).all()
            live = conn.execute(
                select(Attempt.cluster, Task.queue, User.name, Attempt.status, func.count())
                .join(Job, Job.id == Attempt.job_id).join(Task, Task.id == Job.task_id)
                .join(User, User.id == Task.owner_id).where(Attempt.status.in_(LIVE))
                .group_by(Attempt.cluster, Task.queue, User.name, Attempt.status)).all()
            users = conn.execute(select(User.name, User.share, User.usage, User.usage_at).order_by(User.name)).all()
        self._publish(self._static() + self._gauges(queued, live, users, list(holds), now))
        self._refreshed = time.monotonic()

    # ------------------------------------------------------------------ the snapshot
    def _static(self) -> list[Metric]:
        info = GaugeMetricFamily("orchestra_build_info", "Orchestra's version (value 1)", labels=["version"])
        info.add_metric([self.version], 1.0)
        out: list[Metric] = [info]
        if self.last_cycle is not None:
            out.append(GaugeMetricFamily("orchestra_scheduler_last_cycle_timestamp_seconds",
                                         "Unix time at which the last cycle or short pass ended",
                                         value=self.last_cycle))
        return out

    def _gauges(self, queued: list, live: list, users: list, holds: list[tuple[str, str]], now: float) -> list[Metric]:
        per_user = self.user_labels
        jobs: dict[tuple[str, ...], float] = defaultdict(float)
        for cluster, queue, user, n in queued:
            jobs[(cluster, queue, user, "queued") if per_user else (cluster, queue, "queued")] += n or 0
        used: dict[tuple[str, str], int] = defaultdict(int)
        for cluster, queue, user, status, n in live:
            jobs[(cluster, queue, user, status) if per_user else (cluster, queue, status)] += n
            used[(cluster, queue)] += n
        jobs_family = GaugeMetricFamily(
            "orchestra_jobs", "Jobs per state: queued (per-task counters), starting and running (live attempts)",
            labels=["cluster", "queue", "user", "state"] if per_user else ["cluster", "queue", "state"])
        for labels, n in sorted(jobs.items()):
            jobs_family.add_metric(list(labels), n)
        slots = GaugeMetricFamily("orchestra_slots", "Slots per queue: kind=total (configured), kind=used (live attempts)",
                                  labels=["cluster", "queue", "kind"])
        held = GaugeMetricFamily("orchestra_holds", "1 while the queue is held (its cluster refused launches), else 0",
                                 labels=["cluster", "queue"])
        for cluster in self.settings.clusters.values():
            for queue in cluster.queues.values():
                slots.add_metric([cluster.name, queue.name, "total"], queue.slots)
                slots.add_metric([cluster.name, queue.name, "used"], used.get((cluster.name, queue.name), 0))
                held.add_metric([cluster.name, queue.name], 1.0 if (cluster.name, queue.name) in holds else 0.0)
        out: list[Metric] = [jobs_family, slots, held]
        if per_user and users:
            names = [u.name for u in users]
            usage = fairshare.decayed([u.usage for u in users], [u.usage_at for u in users], now, self.settings.fairshare)
            shares = effective_shares(names, np.array([u.share for u in users], dtype=float), self.settings.accounts)
            factor = fairshare.fairshare_factor(usage, shares)
            ff = GaugeMetricFamily("orchestra_fairshare_factor", "Fair-share factor 2^(-usage/share) of each user, "
                                   "in [0, 1] (1: has used nothing)", labels=["user"])
            hours = GaugeMetricFamily("orchestra_usage_slot_hours", "Decayed usage of each user in weighted slot-hours "
                                      "(cpu * cpu_weight + gpu * gpu_weight per slot)", labels=["user"])
            for name, f, u in zip(names, factor, usage):
                ff.add_metric([name], float(f))
                hours.add_metric([name], float(u) / 3600.0)
            out += [ff, hours]
        return out


# ---------------------------------------------------------------------------- the HTTP endpoint
def serve(metrics: Metrics, port: int, host: str) -> WSGIServer:
    """Serve `metrics.render()` at http://host:port/metrics (any path) from a daemon thread; return
    the server (`stop` ends it). A port that cannot be bound is refused in one line.

    Not prometheus-client's `start_http_server`: it renders the whole registry per scrape, and the
    per-user gauges are rendered once per refresh instead (see `Metrics.render`)."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer, _SilentHandler

    def app(environ: dict, start_response: Any) -> list[bytes]:
        body = metrics.render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))])
        return [body]

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = make_server(host, port, app, Server, handler_class=_SilentHandler)
    except OSError as exc:
        raise OrchestraError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another "
                             "--metrics-port (or [scheduler] metrics_port / metrics_host)") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def stop(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
