"""``GET /metrics``: the farm's state in Prometheus' text format.

Everything is read from the database and the broker at scrape time (a custom collector), so any
API process can serve it and the numbers agree between processes:

- ``farm_jobs{state,profile,kind}``: jobs by state and profile;
- ``farm_queue_depth{queue}``: messages waiting in each profile's queue;
- ``farm_build_seconds`` / ``farm_benchmark_seconds`` (summaries per profile): how long the build
  and benchmark steps of finished jobs took;
- ``farm_worker_last_heartbeat_timestamp_seconds{worker,profile}`` and
  ``farm_worker_up{worker,profile}``;
- ``farm_timing_cache_lookups_total{profile,result}`` (hit / miss over every build) and
  ``farm_timing_cache_hit_ratio{profile}``, ``farm_timing_cache_entries{profile}``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from farm.app import FarmServices, current_services
from farm.db import Engine, Job, JobState, TimingCacheEntry, Worker, queue_for_profile, utcnow
from farm.profiles import all_profiles

metrics_blueprint = Blueprint("metrics", __name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FarmCollector(Collector):
    """Collects the farm's metrics from the database and broker on every scrape."""

    def __init__(self, services: FarmServices) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        """Yield every metric family (see the module docstring)."""
        yield from self._jobs()
        yield from self._queues()
        yield from self._workers()
        yield from self._timing_cache()

    def _jobs(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily(
            "farm_jobs", "Jobs by state, profile and kind.", labels=["state", "profile", "kind"]
        )
        build = SummaryMetricFamily(
            "farm_build_seconds", "Build step duration of finished jobs.", labels=["profile"]
        )
        bench = SummaryMetricFamily(
            "farm_benchmark_seconds", "Benchmark step duration of finished jobs.", labels=["profile"]
        )
        with self.services.db.session() as session:
            for state, profile, kind, count in session.execute(
                select(Job.state, Job.profile, Job.kind, func.count()).group_by(
                    Job.state, Job.profile, Job.kind
                )
            ):
                jobs.add_metric([state.value, profile, kind.value], count)
            for profile, count, total in session.execute(
                select(Engine.profile, func.count(), func.sum(Engine.build_seconds))
                .where(Engine.build_seconds.is_not(None))
                .group_by(Engine.profile)
            ):
                build.add_metric([profile], count, float(total or 0.0))
            bench_totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
            for profile, result in session.execute(
                select(Job.profile, Job.result).where(
                    Job.state == JobState.SUCCEEDED, Job.precision.is_not(None)
                )
            ):
                for step in (result or {}).get("steps", []):
                    if step.get("step") == "benchmark" and step.get("seconds") is not None:
                        bench_totals[profile][0] += 1
                        bench_totals[profile][1] += float(step["seconds"])
            for profile, (runs, seconds) in bench_totals.items():
                bench.add_metric([profile], int(runs), seconds)
        yield from (jobs, build, bench)

    def _queues(self) -> Iterator[Any]:
        from farm.worker.reconcile import queue_depths

        depth = GaugeMetricFamily(
            "farm_queue_depth", "Messages waiting in each profile queue.", labels=["queue"]
        )
        up = GaugeMetricFamily("farm_broker_up", "1 when the broker answered this scrape.")
        queues = [queue_for_profile(name) for name in all_profiles()]
        try:
            depths = queue_depths(self.services.celery, queues)
        except Exception:  # a down broker is itself worth a metric, not a failed scrape
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, count in depths.items():
                depth.add_metric([queue], count)
        yield from (depth, up)

    def _workers(self) -> Iterator[Any]:
        seen = GaugeMetricFamily(
            "farm_worker_last_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat.",
            labels=["worker", "profile"],
        )
        up = GaugeMetricFamily(
            "farm_worker_up",
            "1 while the worker heartbeats (online and recent).",
            labels=["worker", "profile"],
        )
        horizon = utcnow() - timedelta(seconds=self.services.settings.worker_seen_seconds)
        with self.services.db.session() as session:
            for worker in session.execute(select(Worker)).scalars():
                alive = worker.state == "online" and worker.heartbeat_at >= horizon
                for profile in worker.profiles or ["-"]:
                    seen.add_metric([worker.name, profile], worker.heartbeat_at.timestamp())
                    up.add_metric([worker.name, profile], 1 if alive else 0)
        yield from (seen, up)

    def _timing_cache(self) -> Iterator[Any]:
        lookups = CounterMetricFamily(
            "farm_timing_cache_lookups", "Timing-cache lookups of every build.", labels=["profile", "result"]
        )
        ratio = GaugeMetricFamily(
            "farm_timing_cache_hit_ratio", "Hits over lookups, all builds.", labels=["profile"]
        )
        entries = GaugeMetricFamily(
            "farm_timing_cache_entries", "Entries in the shared cache.", labels=["profile"]
        )
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        with self.services.db.session() as session:
            for profile, report in session.execute(select(Engine.profile, Engine.build_report)):
                cache = (report or {}).get("timing_cache") or {}
                totals[profile][0] += int(cache.get("hits", 0))
                totals[profile][1] += int(cache.get("misses", 0))
            for profile, count in session.execute(
                select(TimingCacheEntry.profile, func.count()).group_by(TimingCacheEntry.profile)
            ):
                entries.add_metric([profile], count)
        for profile, (hits, misses) in totals.items():
            lookups.add_metric([profile, "hit"], hits)
            lookups.add_metric([profile, "miss"], misses)
            if hits + misses:
                ratio.add_metric([profile], hits / (hits + misses))
        yield from (lookups, ratio, entries)


@metrics_blueprint.get("/metrics")
def metrics() -> Response:
    """The farm's metrics in Prometheus' text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(current_services()))
    return Response(generate_latest(registry), mimetype=PROMETHEUS_CONTENT_TYPE)
