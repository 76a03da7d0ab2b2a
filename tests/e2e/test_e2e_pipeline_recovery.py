"""Reliable jobs with real processes: a worker SIGKILLed mid-build, a Redis that restarts empty,
and cancelling a running job.

These tests run their own ``redis-server`` (no persistence) on a free port, so restarting it
loses every message exactly like a production Redis without AOF would, without touching the
shared Redis other tests use.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask
from pipeline_support import (
    WorkerProcess,
    api_client,
    farm_env,
    mlp,
    row_counts,
    settings_env,
    submit,
    upload,
    wait_for,
    wait_for_jobs,
)

from farm.app import FarmServices, create_app
from farm.config import load_settings
from farm.db import Job, JobState
from farm.db.migrate import upgrade

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

JOB_SECONDS = 420


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` without persistence: a restart loses every key."""

    def __init__(self, folder: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.executable = executable
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.stop()
        self.start()


@dataclass
class RecoveryFarm:
    app: Flask
    services: FarmServices
    redis: RedisServer
    folder: Path
    env: dict[str, str]
    started: list[WorkerProcess]

    def worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess("cpu", f"{name}@recovery-test", cwd=self.folder, env=self.env)
        self.started.append(worker)
        return worker


@pytest.fixture
def recovery_farm(postgres_url: str, tmp_path: Path) -> Iterator[RecoveryFarm]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    server = RedisServer(tmp_path)
    fields = {
        "database_url": postgres_url,
        "broker_url": server.url,
        "artifacts_url": str(tmp_path / "artifacts"),
    }
    settings = load_settings(settings_env(fields))
    upgrade(settings.sqlalchemy_url)
    app = create_app(settings)
    farm = RecoveryFarm(app, app.extensions["farm"], server, tmp_path, farm_env(**settings_env(fields)), [])
    try:
        yield farm
    finally:
        for worker in farm.started:
            worker.stop()
        farm.services.db.dispose()
        server.stop()


def slow_build_model() -> Any:
    """A model whose build at tuning level 3 takes long enough to be caught in the middle."""
    from farm.zoo import build_model

    return build_model("resnet", image_size=32, width=16)


def job_row(services: FarmServices, job_id: int) -> Job:
    with services.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def is_building(services: FarmServices, job_id: int) -> bool:
    job = job_row(services, job_id)
    step = (job.progress or {}).get("step", "")
    return job.state == JobState.BUILDING and str(step).startswith("build")


def test_worker_killed_mid_build_job_completes_after_restart(recovery_farm: RecoveryFarm) -> None:
    farm = recovery_farm
    upload(farm.services, farm.app, "resnet-kill", slow_build_model())
    job_id = submit(
        farm.services,
        farm.app,
        "resnet-kill",
        profiles=["cpu"],
        precisions=["fp32"],
        options={"tuning_level": 3},
    )[0]
    first = farm.worker("first")
    wait_for(lambda: is_building(farm.services, job_id), 240, "the build to start", [first])
    first.kill()  # SIGKILL to the worker and its pool process, in the middle of the build
    killed = job_row(farm.services, job_id)
    assert killed.state == JobState.BUILDING and killed.attempts == 1
    assert row_counts(farm.services, job_id)["engines"] == 0

    second = farm.worker("second")  # the restarted worker: its reconciler re-sends the abandoned job
    job = wait_for_jobs(farm.services, [job_id], JOB_SECONDS, [first, second])[job_id]
    assert job.state == JobState.SUCCEEDED, (job.error, second.output()[-3000:])
    assert job.attempts == 2 and job.worker_name == second.name
    assert row_counts(farm.services, job_id) == {"engines": 1, "benchmarks": 1, "accuracy": 1, "verdicts": 2}
    assert job.log_artifact_key is not None
    log_text = farm.services.store.read_bytes(job.log_artifact_key).decode()
    assert "attempt 1 on first@recovery-test" in log_text and "attempt 2 on second@recovery-test" in log_text


def test_restarted_redis_loses_no_job(recovery_farm: RecoveryFarm) -> None:
    farm = recovery_farm
    upload(farm.services, farm.app, "mlp-redis-restart", mlp((64,)))  # sends its inspect job
    job_ids = submit(
        farm.services, farm.app, "mlp-redis-restart", profiles=["cpu"], precisions=["fp32", "int8"]
    )
    assert _queue_length(farm.redis.url, "profile.cpu") == 3  # the inspect job and two build jobs
    farm.redis.restart()
    assert _queue_length(farm.redis.url, "profile.cpu") == 0  # every message is gone

    worker = farm.worker("after-restart")
    jobs = wait_for_jobs(farm.services, job_ids, JOB_SECONDS, [worker])
    for job in jobs.values():
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.attempts == 1
    assert "re-sending job" in worker.output()


def test_cancelling_a_running_job_stops_it(recovery_farm: RecoveryFarm) -> None:
    farm = recovery_farm
    upload(farm.services, farm.app, "resnet-cancel", slow_build_model())
    job_id = submit(
        farm.services,
        farm.app,
        "resnet-cancel",
        profiles=["cpu"],
        precisions=["fp32"],
        options={"tuning_level": 3},
    )[0]
    worker = farm.worker("cancel")
    wait_for(lambda: is_building(farm.services, job_id), 240, "the build to start", [worker])
    response = api_client(farm.app, farm.services).post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    wait_for(
        lambda: "stopped: the job was cancelled" in worker.output(),
        60,
        "the worker to stop the job",
        [worker],
    )
    job = job_row(farm.services, job_id)
    assert job.state == JobState.CANCELLED
    assert row_counts(farm.services, job_id)["benchmarks"] == 0


def _queue_length(url: str, queue: str) -> int:
    return int(redis.Redis.from_url(url).llen(queue))
