"""``GET /metrics``: Prometheus text with jobs, queues, workers and the timing cache, from the database."""

from __future__ import annotations

from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from farm.db import Engine, Job, JobKind, JobState, Model, ModelVersion, TimingCacheEntry, Worker, utcnow


def test_metrics_report_jobs_workers_and_timing_cache(app: Flask) -> None:
    services = app.extensions["farm"]
    with services.db.session() as session:
        version = ModelVersion(
            model=Model(name="m"),
            number=1,
            sha256="a" * 64,
            artifact_key="sha256/aa/" + "a" * 64,
            size_bytes=1,
        )
        job = Job(kind=JobKind.BUILD, model_version=version, profile="cpu", precision="fp32", batch_size=1,
                  state=JobState.SUCCEEDED, result={"steps": [{"step": "benchmark", "seconds": 1.5}]})  # fmt: skip
        queued = Job(kind=JobKind.BUILD, model_version=version, profile="cpu", precision="int8", batch_size=1)
        session.add_all([job, queued])
        session.flush()
        session.add(
            Engine(
                job_id=job.id,
                sha256="b" * 64,
                artifact_key="sha256/bb/" + "b" * 64,
                size_bytes=10,
                profile="cpu",
                precision="fp32",
                compiler_version="0.1.0",
                build_seconds=2.5,
                build_report={"timing_cache": {"hits": 3, "misses": 1}},
            )  # fmt: skip
        )
        session.add(TimingCacheEntry(profile="cpu", key="k", value={"tactic": "t"}))
        session.add(Worker(name="w@h", hostname="h", profiles=["cpu"], version="0", heartbeat_at=utcnow()))

    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }
    assert samples[("farm_jobs", (("kind", "build"), ("profile", "cpu"), ("state", "succeeded")))] == 1
    assert samples[("farm_jobs", (("kind", "build"), ("profile", "cpu"), ("state", "queued")))] == 1
    assert samples[("farm_build_seconds_sum", (("profile", "cpu"),))] == 2.5
    assert samples[("farm_benchmark_seconds_sum", (("profile", "cpu"),))] == 1.5
    assert samples[("farm_timing_cache_lookups_total", (("profile", "cpu"), ("result", "hit")))] == 3
    assert samples[("farm_timing_cache_hit_ratio", (("profile", "cpu"),))] == 0.75
    assert samples[("farm_timing_cache_entries", (("profile", "cpu"),))] == 1
    assert samples[("farm_worker_up", (("profile", "cpu"), ("worker", "w@h")))] == 1
    assert samples[("farm_broker_up", ())] == 1
    assert ("farm_queue_depth", (("queue", "profile.cpu"),)) in samples
