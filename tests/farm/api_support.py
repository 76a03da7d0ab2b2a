"""Helpers of the API tests: tokens, authenticated clients, uploads, and finished jobs with engines."""

from __future__ import annotations

import io
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from farm.api.auth import issue_token
from farm.db import Engine, Job, JobKind, JobState, ModelVersion, Submission, utcnow


def client_with(app: Flask, *scopes: str) -> FlaskClient:
    """A test client that sends a fresh token with ``scopes`` (none: no Authorization header)."""
    client = app.test_client()
    if scopes:
        token = issue_token(app.extensions["farm"].db, "test-" + "-".join(scopes), list(scopes))
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def upload_model(
    client: FlaskClient, data: bytes, name: str = "small-cnn", filename: str = "model.onnx", **fields: str
) -> Any:
    """POST /models with ``data`` as the file."""
    form = {"file": (io.BytesIO(data), filename), "name": name, **fields}
    return client.post("/api/v1/models", data=form, content_type="multipart/form-data")


def upload_dataset(client: FlaskClient, data: bytes, name: str = "val", **fields: str) -> Any:
    """POST /datasets with ``data`` as the file."""
    form = {"file": (io.BytesIO(data), f"{name}.npz"), "name": name, **fields}
    return client.post("/api/v1/datasets", data=form, content_type="multipart/form-data")


def finished_build_job(
    app: Flask, version_id: int, engine_bytes: bytes, *, profile: str = "cpu"
) -> tuple[int, int]:
    """A succeeded build job of ``version_id`` with an engine holding ``engine_bytes``; (job id, engine id)."""
    services = app.extensions["farm"]
    stored = services.store.put_bytes(engine_bytes)
    with services.db.session() as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        submission = Submission(model_version_id=version_id, options={})
        job = Job(
            kind=JobKind.BUILD, submission=submission, model_version_id=version_id, profile=profile,
            precision="fp32", batch_size=1, state=JobState.SUCCEEDED, attempts=1, finished_at=utcnow(),
        )  # fmt: skip
        session.add_all([submission, job])
        session.flush()
        engine = Engine(
            job_id=job.id, sha256=stored.sha256, artifact_key=stored.key, size_bytes=stored.size_bytes,
            profile=profile, precision="fp32", compiler_version="test", fingerprint={}, build_report={},
        )  # fmt: skip
        session.add(engine)
        session.flush()
        return job.id, engine.id
