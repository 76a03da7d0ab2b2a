"""Helpers of the pipeline end-to-end tests: real ``farm worker`` processes on PostgreSQL + Redis.

The test process itself holds a Flask app on the same database, broker and artifact store, and
creates models and submissions through the same command objects the API uses.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import pytest
from flask import Flask
from sqlalchemy import func, select

from farm.api.commands import UploadModelCommand, VersionMetadata
from farm.api.submissions import CreateSubmissionCommand, SubmissionRequest
from farm.app import FarmServices
from farm.db import AccuracyResult, BenchmarkResult, Engine, Job, JobState, Verdict

FAST_BENCHMARK = {"warmup_ms": 50, "min_iterations": 60, "min_duration_s": 0.4}
FINAL_STATES = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def farm_env(**settings: str) -> dict[str, str]:
    """This environment without FARM_* variables, plus quick heartbeats/leases and ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
    env.update(
        {
            "FARM_HEARTBEAT_SECONDS": "1",
            "FARM_LEASE_SECONDS": "10",
            "FARM_RECONCILE_SECONDS": "1",
            "FARM_REQUEUE_AFTER_SECONDS": "3",
            "FARM_WORKER_SEEN_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(settings)
    return env


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    """FARM_* variables for settings given by field name."""
    return {f"FARM_{key.upper()}": str(value) for key, value in settings.items()}


class WorkerProcess:
    """``farm worker`` in its own process group, its output in a log file."""

    def __init__(self, profile: str, name: str, *, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "worker", "--profile", profile, "--name", name],
            cwd=cwd,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        """The worker's log so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (a host that died)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left of its process group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill()
        self._log_file.close()


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, workers: Sequence[WorkerProcess] = ()
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with the workers' logs otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    logs = "\n".join(f"--- {w.name}\n{w.output()[-3000:]}" for w in workers)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")


def api_client(app: Flask, services: FarmServices) -> Any:
    """A Flask test client that sends a bearer token with scope ``submit`` (writes need one)."""
    from farm.api.auth import issue_token

    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + issue_token(services.db, "pipeline-tests")
    return client


def upload(services: FarmServices, app: Flask, name: str, model: onnx.ModelProto) -> int:
    """Upload ``model`` as a version of ``name``; the version id."""
    with app.app_context():
        command = UploadModelCommand(
            services,
            name=name,
            stream=io.BytesIO(model.SerializeToString()),
            filename=f"{name}.onnx",
            metadata=VersionMetadata(),
        )
        command.validate()
        return command.run().version_id


def submit(
    services: FarmServices,
    app: Flask,
    name: str,
    *,
    profiles: Sequence[str],
    precisions: Sequence[str],
    batch_sizes: Sequence[int] = (4,),
    options: dict[str, Any] | None = None,
) -> list[int]:
    """Submit the latest version of ``name``; the job ids."""
    with app.app_context():
        command = CreateSubmissionCommand(
            services,
            SubmissionRequest(
                model=name,
                profiles=list(profiles),
                precisions=list(precisions),
                batch_sizes=list(batch_sizes),
                options={"benchmark": FAST_BENCHMARK} | (options or {}),
            ),
        )
        command.validate()
        return command.run().job_ids


def wait_for_jobs(
    services: FarmServices, job_ids: Sequence[int], timeout: float, workers: Sequence[WorkerProcess]
) -> dict[int, Job]:
    """Wait until every job is final; the jobs by id."""

    def all_final() -> dict[int, Job] | None:
        with services.db.session() as session:
            jobs = {job.id: job for job in session.execute(select(Job).where(Job.id.in_(job_ids))).scalars()}
        return jobs if all(job.state in FINAL_STATES for job in jobs.values()) else None

    result: dict[int, Job] = wait_for(all_final, timeout, f"jobs {list(job_ids)}", workers)
    return result


def row_counts(services: FarmServices, job_id: int) -> dict[str, int]:
    """How many engine, benchmark, accuracy and verdict rows ``job_id`` has."""
    counts = {}
    with services.db.session() as session:
        for label, table in (
            ("engines", Engine),
            ("benchmarks", BenchmarkResult),
            ("accuracy", AccuracyResult),
            ("verdicts", Verdict),
        ):
            counts[label] = session.execute(
                select(func.count()).select_from(table).where(table.job_id == job_id)
            ).scalar_one()
    return counts


def overall_verdict(job: Job) -> str:
    """The job's overall verdict outcome."""
    return str((job.result or {}).get("verdict", {}).get("outcome"))


def mlp(hidden: tuple[int, ...], doc: str = "") -> onnx.ModelProto:
    """A zoo MLP with 64 input features and the given hidden widths (seeded weights)."""
    from farm.zoo import build_model

    model = build_model("mlp", in_features=64, hidden=hidden, num_classes=10)
    if doc:
        model.doc_string = doc  # other bytes (a new version), same computation
    return model
