"""The worker pipeline end to end: two real ``farm worker`` processes on PostgreSQL + Redis.

One worker serves profile ``cpu``, the other ``cpu-avx2`` (this host matches both). Submissions
are created through the same command objects the API uses; the workers build, store, benchmark,
check accuracy and judge every job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from pipeline_support import (
    WorkerProcess,
    api_client,
    farm_env,
    mlp,
    overall_verdict,
    row_counts,
    settings_env,
    submit,
    upload,
    wait_for,
    wait_for_jobs,
)
from sqlalchemy import select

from farm.app import FarmServices, create_app
from farm.config import load_settings
from farm.db import BenchmarkResult, Engine, Job, JobState, Verdict
from farm.db.migrate import upgrade
from farm.worker.celery_app import BUILD_TASK
from farm.worker.reconcile import queue_depths

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

PROFILES = ("cpu", "cpu-avx2")
PRECISIONS = ("fp32", "fp16", "int8")
JOB_SECONDS = 420


@dataclass
class PipelineFarm:
    app: Flask
    services: FarmServices
    workers: dict[str, WorkerProcess]  # by profile

    @property
    def worker_list(self) -> list[WorkerProcess]:
        return list(self.workers.values())


@pytest.fixture(scope="module")
def farm(
    postgres_url: str, redis_target: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineFarm]:
    folder: Path = tmp_path_factory.mktemp("pipeline-farm")
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    fields = {
        "database_url": postgres_url,
        "broker_url": redis_target.url,
        "broker_key_prefix": redis_target.key_prefix + "pipeline:",
        "artifacts_url": str(folder / "artifacts"),
    }
    settings = load_settings(
        settings_env(fields) | {"FARM_HEARTBEAT_SECONDS": "1", "FARM_WORKER_SEEN_SECONDS": "10"}
    )
    upgrade(settings.sqlalchemy_url)
    app = create_app(settings)
    services: FarmServices = app.extensions["farm"]
    env = farm_env(**settings_env(fields))
    workers = {
        profile: WorkerProcess(profile, f"{profile}@pipeline-test", cwd=folder, env=env)
        for profile in PROFILES
    }
    try:
        yield PipelineFarm(app, services, workers)
    finally:
        for worker in workers.values():
            worker.stop()
        services.db.dispose()


def test_submission_fans_out_into_jobs_each_run_by_its_profile(farm: PipelineFarm) -> None:
    upload(farm.services, farm.app, "mlp-pipeline", mlp((128, 128)))
    job_ids = submit(farm.services, farm.app, "mlp-pipeline", profiles=PROFILES, precisions=PRECISIONS)
    assert len(job_ids) == len(PROFILES) * len(PRECISIONS)
    jobs = wait_for_jobs(farm.services, job_ids, JOB_SECONDS, farm.worker_list)

    combinations = set()
    for job in jobs.values():
        assert job.state == JobState.SUCCEEDED, (job.id, job.error, job.result)
        combinations.add((job.profile, job.precision))
        assert job.worker_name == farm.workers[job.profile].name, "a job ran on a worker of another profile"
        counts = row_counts(farm.services, job.id)
        outputs = 1  # the MLP has one output
        assert counts == {"engines": 1, "benchmarks": 1, "accuracy": outputs, "verdicts": 2}, counts
        result = job.result or {}
        assert result["benchmark"]["candidate"]["iterations"] >= 30
        assert result["benchmark"]["candidate"]["median_ms"] > 0
        assert result["accuracy"]["passed"], result["accuracy"]
        assert result["accuracy"]["source"] == "generated"
        assert overall_verdict(job) == "no_baseline"  # the model's first version
        assert [step["step"] for step in result["steps"]] == [
            "inspect", "build", "store", "benchmark", "accuracy", "verdict"
        ]  # fmt: skip
        assert job.log_artifact_key is not None
        log_text = farm.services.store.read_bytes(job.log_artifact_key).decode()
        assert "step build" in log_text and "verdict no_baseline" in log_text
    assert combinations == {(p, q) for p in PROFILES for q in PRECISIONS}

    with farm.services.db.session() as session:
        engines = session.execute(select(Engine).where(Engine.job_id.in_(job_ids))).scalars().all()
        for engine in engines:
            assert engine.fingerprint["host"]["libraries"]["numpy"]
            assert engine.fingerprint["device"]["backend"] == "cpu"
            assert engine.compiler_version
        samples = session.execute(
            select(BenchmarkResult.samples_ms).where(BenchmarkResult.job_id == job_ids[0])
        )
        assert len(samples.scalar_one()) >= 30


def test_identical_versions_are_unchanged_and_a_slower_one_regressed(farm: PipelineFarm) -> None:
    name = "mlp-regress"
    upload(farm.services, farm.app, name, mlp((128, 128)))
    first = submit(farm.services, farm.app, name, profiles=PROFILES, precisions=["fp32"])
    wait_for_jobs(farm.services, first, JOB_SECONDS, farm.worker_list)

    # two more versions with other bytes but the same computation: never a false alarm
    for attempt in range(2):
        upload(farm.services, farm.app, name, mlp((128, 128), doc=f"same network, re-exported ({attempt})"))
        jobs = wait_for_jobs(
            farm.services,
            submit(farm.services, farm.app, name, profiles=PROFILES, precisions=["fp32"]),
            JOB_SECONDS,
            farm.worker_list,
        )
        for job in jobs.values():
            verdict = (job.result or {})["verdict"]
            assert verdict["outcome"] == "unchanged", verdict
            assert abs(verdict["latency"]["change_pct"]) < 50

    upload(farm.services, farm.app, name, mlp((1024, 1024)))  # ~50x the multiply-adds
    jobs = wait_for_jobs(
        farm.services,
        submit(farm.services, farm.app, name, profiles=PROFILES, precisions=["fp32"]),
        JOB_SECONDS,
        farm.worker_list,
    )
    for job in jobs.values():
        verdict = (job.result or {})["verdict"]
        assert verdict["outcome"] == "regressed", json.dumps(verdict)
        latency = verdict["latency"]
        assert latency["change_pct"] > 5 and latency["ci_low"] > 1
        assert verdict["baseline_job_id"] is not None
        with farm.services.db.session() as session:
            roles = (
                session.execute(select(BenchmarkResult.role).where(BenchmarkResult.job_id == job.id))
                .scalars()
                .all()
            )
            kinds = session.execute(select(Verdict.kind).where(Verdict.job_id == job.id)).scalars().all()
        assert sorted(roles) == ["baseline", "candidate"]  # both engines ran, interleaved, on this host
        assert sorted(kinds) == ["accuracy", "latency", "overall"]


def test_duplicated_messages_create_nothing_twice(farm: PipelineFarm) -> None:
    name = "mlp-duplicates"
    upload(farm.services, farm.app, name, mlp((96,)))
    job_id = submit(farm.services, farm.app, name, profiles=["cpu"], precisions=["fp32"])[0]
    for _ in range(2):  # two extra deliveries of the same job, while it is queued or running
        farm.services.celery.send_task(BUILD_TASK, args=[job_id], queue="profile.cpu")
    job = wait_for_jobs(farm.services, [job_id], JOB_SECONDS, farm.worker_list)[job_id]
    assert job.state == JobState.SUCCEEDED and job.attempts == 1
    for _ in range(2):  # and two more after it finished
        farm.services.celery.send_task(BUILD_TASK, args=[job_id], queue="profile.cpu")
    wait_for(
        lambda: queue_depths(farm.services.celery, ["profile.cpu"])["profile.cpu"] == 0,
        60,
        "the duplicates to be consumed",
        farm.worker_list,
    )
    with farm.services.db.session() as session:
        again = session.get(Job, job_id)
        assert again is not None
        assert again.attempts == 1 and again.finished_at == job.finished_at
    assert row_counts(farm.services, job_id) == {"engines": 1, "benchmarks": 1, "accuracy": 1, "verdicts": 2}


def test_rebuild_on_the_same_profile_hits_the_timing_cache(farm: PipelineFarm) -> None:
    name = "mlp-timing-cache"
    upload(farm.services, farm.app, name, mlp((1024, 768)))  # layer shapes no other test builds
    options = {"tuning_level": 2}
    cold_id = submit(farm.services, farm.app, name, profiles=["cpu"], precisions=["fp32"], options=options)[0]
    cold = wait_for_jobs(farm.services, [cold_id], JOB_SECONDS, farm.worker_list)[cold_id]
    warm_id = submit(farm.services, farm.app, name, profiles=["cpu"], precisions=["fp32"], options=options)[0]
    warm = wait_for_jobs(farm.services, [warm_id], JOB_SECONDS, farm.worker_list)[warm_id]
    cold_build = (cold.result or {})["build"]
    warm_build = (warm.result or {})["build"]
    assert cold_build["timing_cache"]["misses"] > 0
    assert warm_build["timing_cache"]["hits"] > 0 and warm_build["timing_cache"]["misses"] == 0
    # every tactic decision the cold build timed is now served from the cache
    # (wall-clock speed-ups belong in `make bench`, not in a test that can flake)
    cold_cache, warm_cache = cold_build["timing_cache"], warm_build["timing_cache"]
    assert warm_cache["hits"] == cold_cache["hits"] + cold_cache["misses"], (cold_build, warm_build)
    assert warm_cache["hit_rate"] == 1.0


def test_cancelling_a_queued_job_means_it_never_runs(farm: PipelineFarm) -> None:
    name = "mlp-cancel"
    upload(farm.services, farm.app, name, mlp((64,)))
    client = api_client(farm.app, farm.services)
    job_ids = submit(
        farm.services, farm.app, name, profiles=["cpu"], precisions=["fp32", "int8"], batch_sizes=[1, 2]
    )
    response = client.post(f"/api/v1/jobs/{job_ids[-1]}/cancel")
    assert response.status_code in (200, 409)  # 409 only if the worker already finished it
    jobs = wait_for_jobs(farm.services, job_ids, JOB_SECONDS, farm.worker_list)
    if response.status_code == 200:
        cancelled = jobs[job_ids[-1]]
        assert cancelled.state == JobState.CANCELLED
        assert row_counts(farm.services, cancelled.id)["benchmarks"] == 0
    assert client.post(f"/api/v1/jobs/{job_ids[0]}/cancel").status_code == 409
    results = client.get(f"/api/v1/jobs/{job_ids[0]}/results").get_json()
    assert results["engine"]["sha256"] and results["benchmarks"][0]["samples_ms"]
    assert {v["kind"] for v in results["verdicts"]} >= {"accuracy", "overall"}
    log_response = client.get(f"/api/v1/jobs/{job_ids[0]}/log")
    assert log_response.status_code == 200 and b"step benchmark" in log_response.data
