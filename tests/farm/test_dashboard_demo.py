"""``farm demo`` against a served farm: uploads, submits, waits for the baseline, submits v2.

The farm's API runs in a thread; a second thread plays the worker with the pipeline's own command
objects (inspect and build jobs, taken from the database in order), as ``farm worker`` would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dashboard_support import make_app, serve
from flask import Flask
from sqlalchemy import select

from farm.api.auth import issue_token
from farm.dashboard.demo import changed_version, demo_cmd, demo_models
from farm.db import Job, JobKind, JobState, Model, ModelVersion, Submission, Verdict
from farm.worker.jobs import InspectJobCommand
from farm.worker.pipeline import BuildJobCommand


@pytest.fixture
def farm_app(tmp_path: Path) -> Iterator[Flask]:
    app = make_app(tmp_path)
    yield app
    app.extensions["farm"].db.dispose()


class InProcessWorker(threading.Thread):
    """Runs every queued job, oldest first, through the worker's command objects."""

    def __init__(self, app: Flask) -> None:
        super().__init__(name="demo-worker", daemon=True)
        self.services = app.extensions["farm"]
        self.stopping = threading.Event()

    def run(self) -> None:
        db, store = self.services.db, self.services.store
        while not self.stopping.is_set():
            with db.session() as session:
                job = session.execute(
                    select(Job.id, Job.kind).where(Job.state == JobState.QUEUED).order_by(Job.id).limit(1)
                ).first()
            if job is None:
                time.sleep(0.2)
                continue
            command = InspectJobCommand if job.kind == JobKind.INSPECT else BuildJobCommand
            command(job.id, db=db, store=store, worker_name="cpu.demo@test", lease_seconds=300).run()


def test_demo_builds_two_versions_of_the_mlp(farm_app: Flask) -> None:
    services = farm_app.extensions["farm"]
    token = issue_token(services.db, "demo", ["submit"])
    worker = InProcessWorker(farm_app)
    worker.start()
    try:
        with serve(farm_app) as url:
            args = [
                "--server",
                url,
                "--token",
                token,
                "--models",
                "mlp",
                "--precision",
                "fp32,int8",
                "--timeout",
                "600",
            ]
            result = CliRunner().invoke(demo_cmd, args)
            assert result.exit_code == 0, result.output
            assert "waiting for mlp's first version" in result.output

            def all_final() -> bool:
                with services.db.session() as session:
                    states = session.execute(select(Job.state)).scalars().all()
                return bool(states) and all(state.is_final for state in states)

            deadline = time.monotonic() + 600
            while not all_final():
                assert time.monotonic() < deadline, "the demo's jobs did not finish"
                time.sleep(0.5)
            page = farm_app.test_client().get("/").get_data(as_text=True)
    finally:
        worker.stopping.set()
        worker.join(timeout=60)
    first = demo_models(only=["mlp"])[0]
    with services.db.session() as session:
        versions = session.execute(
            select(ModelVersion.number, ModelVersion.label)
            .join(Model)
            .where(Model.name == "mlp")
            .order_by(ModelVersion.number)
        ).all()
        assert [tuple(v) for v in versions] == [(1, first.label), (2, changed_version(first).label)]
        submissions = session.execute(select(Submission.options)).scalars().all()
        assert (
            all(options.get("strict_precision") is True for options in submissions) and len(submissions) == 2
        )
        jobs = session.execute(select(Job).where(Job.kind == JobKind.BUILD).order_by(Job.id)).scalars().all()
        assert [(j.model_version.number, j.precision, j.state) for j in jobs] == [
            (1, "fp32", JobState.SUCCEEDED), (1, "int8", JobState.SUCCEEDED),
            (2, "fp32", JobState.SUCCEEDED), (2, "int8", JobState.SUCCEEDED),
        ]  # fmt: skip
        # the second version was judged against the first (interleaved benchmark, latency verdict)
        baselines = (
            session.execute(
                select(Verdict.baseline_job_id).where(
                    Verdict.job_id.in_([jobs[2].id, jobs[3].id]), Verdict.kind == "latency"
                )
            )
            .scalars()
            .all()
        )
        assert sorted(baselines) == [jobs[0].id, jobs[1].id]
    assert 'id="empty-farm"' not in page and "/models/mlp" in page


def test_demo_without_a_token_says_how_to_get_one(farm_app: Flask) -> None:
    with serve(farm_app) as url:
        result = CliRunner().invoke(demo_cmd, ["--server", url, "--models", "mlp", "--precision", "fp32"])
    assert result.exit_code == 1
    assert "farm token create demo --scope submit" in result.output


def test_demo_says_when_no_farm_answers() -> None:
    result = CliRunner().invoke(demo_cmd, ["--server", "http://127.0.0.1:9", "--models", "mlp"])
    assert result.exit_code == 1 and "farm up" in result.output


def test_demo_gives_concrete_shapes_only_where_the_builder_needs_them() -> None:
    from farm.zoo import get

    models = {m.name: m for m in demo_models()}
    assert models["mlp"].input_shapes(4) is None and models["resnet"].input_shapes(4) is None
    seq = get("bert").default_shapes["seq"]
    shapes = models["bert"].input_shapes(4)
    assert shapes is not None and set(shapes) == {
        s.name for s in get("bert").input_specs(**models["bert"].options)
    }
    assert all(shape == [4, seq] for shape in shapes.values())
