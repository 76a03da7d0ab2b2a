"""A small farm with REAL results for the dashboard tests, built through the worker pipeline.

Models are uploaded and submitted with the same command objects the API uses, and every build job
is run by the pipeline's own :class:`~farm.worker.pipeline.BuildJobCommand` in this process (build
→ store → benchmark → accuracy → verdict), so every engine, sample, accuracy row and verdict the
pages show was produced by the real code; no result row is written by hand. A worker heartbeat is
recorded by the worker's own heartbeat function.

Contents: the demo MLP in two versions (the second wider, judged against the first with the
interleaved benchmark) in fp32 / fp16 / int8, a small ResNet in fp32 / int8, a model whose user
text is hostile HTML (label, branch, CI link, node and output names), and a job that failed.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from flask import Flask
from onnx import TensorProto, helper, numpy_helper

from farm.api.commands import UploadModelCommand, VersionMetadata
from farm.api.submissions import CreateSubmissionCommand, SubmissionRequest
from farm.app import FarmServices, create_app
from farm.config import load_settings
from farm.dashboard.demo import changed_version, demo_models
from farm.db.migrate import upgrade
from farm.profiles import detect_host
from farm.worker.heartbeat import record_heartbeat
from farm.worker.jobs import InspectJobCommand
from farm.worker.pipeline import BuildJobCommand

HOSTILE = "<script>alert(1)</script>"
HOSTILE_BRANCH = "<img src=x onerror=alert(2)>"
HOSTILE_CI_URL = "javascript:alert(3)"
FAST_BENCHMARK = {"warmup_ms": 30, "min_iterations": 30, "min_duration_s": 0.3}
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class SampleFarm:
    """The app on the sample farm's database and the ids the tests navigate to."""

    app: Flask
    services: FarmServices
    jobs: dict[str, list[int]] = field(default_factory=dict)  # label -> build job ids

    @property
    def client(self) -> Any:
        """A Flask test client."""
        return self.app.test_client()


def make_app(root: Path, database_url: str | None = None) -> Flask:
    """A Flask app on a migrated database (default: SQLite under ``root``) and an artifact folder
    under ``root``."""
    url = database_url or f"sqlite:///{root / 'farm.db'}"
    upgrade(url)
    settings = load_settings(
        {},
        database_url=url,
        broker_url="memory://",
        artifacts_url=str(root / "artifacts"),
        heartbeat_seconds=3600,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def upload(farm: SampleFarm, name: str, data: bytes, metadata: VersionMetadata | None = None) -> int:
    """Upload ``data`` as a version of ``name`` and run its inspection; the version number's id."""
    services = farm.services
    with farm.app.app_context():
        command = UploadModelCommand(
            services, name=name, stream=io.BytesIO(data), filename=f"{name}.onnx",
            metadata=metadata or VersionMetadata(),
        )  # fmt: skip
        command.validate()
        result = command.run()
    InspectJobCommand(
        result.job_id,
        db=services.db,
        store=services.store,
        worker_name="cpu.test@dashboard",
        lease_seconds=120,
    ).run()
    return result.version_id


def submit_and_run(
    farm: SampleFarm, name: str, precisions: tuple[str, ...], *, options: dict[str, Any] | None = None
) -> list[int]:
    """Submit the latest version of ``name`` on ``cpu`` and run each job through the pipeline.

    Precisions are strict (as ``farm demo`` submits them): an int8 engine runs its layers in int8,
    so precisions differ in accuracy as well as speed."""
    services = farm.services
    with farm.app.app_context():
        command = CreateSubmissionCommand(
            services,
            SubmissionRequest(
                model=name, profiles=["cpu"], precisions=list(precisions), batch_sizes=[4],
                options={"benchmark": FAST_BENCHMARK, "strict_precision": True} | (options or {}),
            ),
        )  # fmt: skip
        command.validate()
        job_ids = command.run().job_ids
    for job_id in job_ids:
        BuildJobCommand(
            job_id, db=services.db, store=services.store, worker_name="cpu.test@dashboard", lease_seconds=300
        ).run()
    return job_ids


def hostile_model() -> bytes:
    """A valid two-layer model whose node, input and output names are HTML."""
    import numpy as np

    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name=HOSTILE),
        helper.make_node("Relu", ["h"], ["r"], name=HOSTILE_BRANCH),
        helper.make_node("MatMul", ["r", "w2"], [HOSTILE], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info(HOSTILE, TensorProto.FLOAT, ["batch", 8])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_sample_farm(
    root: Path,
    *,
    database_url: str | None = None,
    precisions: tuple[str, ...] = PRECISIONS,
    full: bool = True,
) -> SampleFarm:
    """Build the sample farm under ``root`` (about a minute on two cores); ``full=False``: only the
    two MLP versions."""
    app = make_app(root, database_url)
    farm = SampleFarm(app, app.extensions["farm"])
    record_heartbeat(farm.services.db, name="cpu.1@dashboard-test", profiles=["cpu"], host=detect_host())

    mlp = next(m for m in demo_models(only=["mlp"]))
    upload(
        farm,
        mlp.name,
        mlp.onnx_bytes(),
        VersionMetadata(label=mlp.label, branch="main", git_commit="a1b2c3d4e5"),
    )
    farm.jobs["mlp v1"] = submit_and_run(farm, mlp.name, precisions)
    second = changed_version(mlp)
    upload(
        farm,
        second.name,
        second.onnx_bytes(),
        VersionMetadata(label=second.label, branch="main", git_commit="f6e7d8c9b0"),
    )
    farm.jobs["mlp v2"] = submit_and_run(farm, second.name, precisions)
    if not full:
        return farm

    resnet = next(m for m in demo_models(only=["resnet"]))
    resnet_small = type(resnet)(resnet.name, resnet.zoo_name, {"image_size": 32, "width": 8}, resnet.label)
    upload(farm, resnet_small.name, resnet_small.onnx_bytes(), VersionMetadata(label="v1"))
    farm.jobs["resnet v1"] = submit_and_run(farm, resnet_small.name, ("fp32", "int8"))

    upload(
        farm, "hostile", hostile_model(),
        VersionMetadata(label=HOSTILE, branch=HOSTILE_BRANCH, git_commit="0" * 12, ci_url=HOSTILE_CI_URL),
    )  # fmt: skip
    farm.jobs["hostile"] = submit_and_run(farm, "hostile", ("fp32",))
    # a job the pipeline fails: the builder refuses an unknown pass name
    farm.jobs["failed"] = submit_and_run(
        farm, "hostile", ("fp16",), options={"disabled_passes": ["no_such_pass"]}
    )
    return farm


_shared: SampleFarm | None = None


def shared_sample_farm(make_root: Any) -> SampleFarm:
    """The sample farm of this test session, built on first use under ``make_root()``."""
    global _shared
    if _shared is None:
        _shared = build_sample_farm(make_root())
    return _shared


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free local port in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
