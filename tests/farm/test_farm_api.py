"""The API: upload, dedupe, malformed uploads (400, nothing stored), jobs, health, JSON errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import onnx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from onnx import TensorProto, helper
from sqlalchemy import func, select

from farm.db import Job, JobState, Model, ModelVersion
from farm.worker.jobs import InspectJobCommand


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client that sends a token with scope submit (writes need one)."""
    from farm.api.auth import issue_token

    test_client = app.test_client()
    token = issue_token(app.extensions["farm"].db, "tests", ["submit"])
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


def upload(client: FlaskClient, data: bytes, name: str = "small-cnn", **fields: str):  # type: ignore[no-untyped-def]
    form = {"file": (io.BytesIO(data), "model.onnx"), "name": name, **fields}
    return client.post("/api/v1/models", data=form, content_type="multipart/form-data")


def queued_messages(app: Flask, queue: str) -> list[dict]:  # type: ignore[type-arg]
    celery = app.extensions["celery"]
    messages = []
    with celery.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                break
            messages.append({"task": message.headers["task"], "args": message.payload[0]})
            message.ack()
        simple.close()
    return messages


def stored_artifacts(app: Flask) -> list[Path]:
    root = Path(app.extensions["farm"].store.root) / "sha256"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def row_counts(app: Flask) -> tuple[int, int, int]:
    with app.extensions["farm"].db.session() as session:
        return tuple(  # type: ignore[return-value]
            session.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (Model, ModelVersion, Job)
        )


def run_inspect(app: Flask, job_id: int) -> None:
    services = app.extensions["farm"]
    InspectJobCommand(
        job_id, db=services.db, store=services.store, worker_name="test", lease_seconds=60
    ).run()


def test_upload_stores_records_and_enqueues(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    response = upload(client, small_cnn.data, label="rc1", git_commit="abc123", branch="main")
    assert response.status_code == 201, response.json
    body = response.json
    assert body["created"] is True
    assert body["model_version"]["label"] == "rc1"
    assert body["model_version"]["git_commit"] == "abc123"
    assert body["model_version"]["size_bytes"] == len(small_cnn.data)
    job = body["job"]
    assert (job["kind"], job["state"], job["profile"], job["queue"]) == (
        "inspect",
        "queued",
        "cpu",
        "profile.cpu",
    )
    assert queued_messages(app, "profile.cpu") == [{"task": "farm.inspect_model", "args": [job["id"]]}]
    assert len(stored_artifacts(app)) == 1
    assert stored_artifacts(app)[0].read_bytes() == small_cnn.data


def test_same_bytes_make_no_duplicate(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    first = upload(client, small_cnn.data).json
    second = upload(client, small_cnn.data)
    assert second.status_code == 200
    assert second.json["created"] is False
    assert second.json["model_version"]["id"] == first["model_version"]["id"]
    assert second.json["job"]["id"] == first["job"]["id"]
    assert row_counts(app) == (1, 1, 1)
    assert len(stored_artifacts(app)) == 1
    assert len(queued_messages(app, "profile.cpu")) == 1


def test_new_bytes_make_a_new_version(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    upload(client, small_cnn.data)
    model = onnx.load_from_string(small_cnn.data)
    model.producer_version = "2"
    second = upload(client, model.SerializeToString())
    assert second.status_code == 201
    assert second.json["model_version"]["number"] == 2
    listing = client.get("/api/v1/models/small-cnn").json
    assert [v["label"] for v in listing["versions"]] == ["v2", "v1"]


def test_inspect_facts_are_served(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    job_id = upload(client, small_cnn.data).json["job"]["id"]
    run_inspect(app, job_id)
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "succeeded"
    facts = job["result"]["facts"]
    assert facts["parameter_count"] == small_cnn.parameter_count
    assert facts["inputs"][0]["shape"] == small_cnn.input_shape
    assert client.get("/api/v1/models/small-cnn").status_code == 200
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Model facts" in text and "GlobalAveragePool" in text and "succeeded" in text
    overview = client.get("/").get_data(as_text=True)
    assert "small-cnn" in overview


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda cnn: os.urandom(4096), "ONNX"),
        (lambda cnn: cnn.data[: len(cnn.data) // 2], "ONNX"),
        (lambda cnn: b"name,value\nresnet,50\n" * 20, "ONNX"),
        (lambda cnn: b"", "empty"),
        (lambda cnn: _model_failing_the_checker(), "invalid ONNX model"),
    ],
    ids=["random-bytes", "truncated", "csv-text", "empty", "checker-error"],
)
def test_malformed_upload_is_400_and_stores_nothing(
    app: Flask,
    client: FlaskClient,
    small_cnn,
    make,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    response = upload(client, make(small_cnn))
    assert response.status_code == 400
    assert message in response.json["message"]
    assert response.json["error"] == "invalid_request"
    assert stored_artifacts(app) == []
    assert row_counts(app) == (0, 0, 0)
    assert not [p for p in (Path(app.extensions["farm"].store.root) / "tmp").glob("*")]
    assert queued_messages(app, "profile.cpu") == []


def _model_failing_the_checker() -> bytes:
    # parses as ONNX but a node reads a tensor nobody produces
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_missing_file_and_bad_name(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/models", data={"name": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "file" in response.json["message"]
    response = upload(client, small_cnn.data, name="../etc/passwd")
    assert response.status_code == 400 and response.json["details"]["field"] == "name"
    assert stored_artifacts(app) == [] and row_counts(app) == (0, 0, 0)


def test_upload_over_the_limit_is_413(app: Flask, client: FlaskClient) -> None:
    response = upload(client, os.urandom(2 * 1024 * 1024))  # the app allows 1 MiB
    assert response.status_code == 413
    assert "FARM_MAX_UPLOAD_MB" in response.json["message"]
    assert stored_artifacts(app) == []


def test_errors_are_json(client: FlaskClient) -> None:
    missing = client.get("/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    job = client.get("/api/v1/jobs/12345")
    assert job.status_code == 404 and "12345" in job.json["message"]
    wrong_method = client.delete("/api/v1/models")
    assert wrong_method.status_code == 405 and wrong_method.json["error"] == "method_not_allowed"
    bad_page = client.get("/api/v1/jobs?limit=0")
    assert bad_page.status_code == 400
    bad_state = client.get("/api/v1/jobs?state=exploded")
    assert bad_state.status_code == 400 and "queued" in bad_state.json["message"]
    # the dashboard keeps HTML errors
    page = client.get("/jobs/12345")
    assert page.status_code == 404 and page.mimetype == "text/html"


def test_health_reports_every_part(client: FlaskClient) -> None:
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    health = response.json
    assert health["ok"] is True
    for part in ("database", "broker", "artifact_store"):
        assert health[part]["ok"] is True, health[part]
    assert health["workers"] == []


def test_health_reports_a_broken_part(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    from farm.storage import FileArtifactStore

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    app.extensions["farm"].store = FileArtifactStore(blocker)
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json["artifact_store"]["ok"] is False
    assert response.json["database"]["ok"] is True


def test_workers_from_heartbeats(app: Flask, client: FlaskClient) -> None:
    from farm.profiles import detect_host
    from farm.worker.heartbeat import record_heartbeat

    record_heartbeat(app.extensions["farm"].db, name="cpu.1@host", profiles=["cpu"], host=detect_host())
    health = client.get("/api/v1/health").json
    assert [(w["name"], w["alive"], w["profiles"]) for w in health["workers"]] == [
        ("cpu.1@host", True, ["cpu"])
    ]
    assert health["profiles_served"] == ["cpu"]
    profiles = {p["name"]: p for p in client.get("/api/v1/profiles").json["items"]}
    assert profiles["cpu"]["served"] is True and profiles["nvidia-h200"]["served"] is False


def test_dashboard_escapes_model_contents(app: Flask, client: FlaskClient) -> None:
    hostile = "<script>alert(1)</script>"
    graph = helper.make_graph(
        [helper.make_node("Relu", [hostile], ["y"])],
        "hostile",
        [helper.make_tensor_value_info(hostile, TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    job_id = upload(client, data, name="hostile").json["job"]["id"]
    run_inspect(app, job_id)
    text = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert hostile not in text
    assert "&lt;script&gt;" in text


def test_job_listing_filters(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    job_id = upload(client, small_cnn.data).json["job"]["id"]
    assert [j["id"] for j in client.get("/api/v1/jobs?state=queued").json["items"]] == [job_id]
    run_inspect(app, job_id)
    assert client.get("/api/v1/jobs?state=queued").json["items"] == []
    assert [j["state"] for j in client.get("/api/v1/jobs?profile=cpu").json["items"]] == [
        JobState.SUCCEEDED.value
    ]


def test_reupload_after_a_failed_inspection_inspects_again(
    app: Flask, client: FlaskClient, small_cnn
) -> None:  # type: ignore[no-untyped-def]
    first = upload(client, small_cnn.data).json
    with app.extensions["farm"].db.session() as session:
        job = session.get(Job, first["job"]["id"])
        assert job is not None
        job.state = JobState.FAILED
    queued_messages(app, "profile.cpu")  # drop the first message
    second = upload(client, small_cnn.data)
    assert second.status_code == 200  # the version already existed ...
    assert second.json["created"] is False
    assert second.json["job"]["id"] != first["job"]["id"]  # ... but it gets a new inspection
    assert second.json["job"]["state"] == "queued"
    assert queued_messages(app, "profile.cpu") == [
        {"task": "farm.inspect_model", "args": [second.json["job"]["id"]]}
    ]


def test_broker_down_is_503_and_the_job_is_failed_visibly(
    tmp_path: Path, database_url: str, small_cnn
) -> None:  # type: ignore[no-untyped-def]
    from farm.app import create_app
    from farm.config import load_settings

    settings = load_settings(
        {}, database_url=database_url, broker_url="redis://127.0.0.1:9/0", artifacts_url=str(tmp_path / "a")
    )
    broken = create_app(settings)
    broken.extensions["celery"].conf.broker_connection_max_retries = 1
    from farm.api.auth import issue_token

    broken_client = broken.test_client()
    token = issue_token(broken.extensions["farm"].db, "tests", ["submit"])
    broken_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    response = upload(broken_client, small_cnn.data)
    assert response.status_code == 503
    assert "broker" in response.json["message"]
    with broken.extensions["farm"].db.session() as session:
        job = session.execute(select(Job)).scalar_one()
        assert job.state == JobState.FAILED
        assert "could not enqueue" in (job.error or "")
    health = broken.test_client().get("/api/v1/health")
    assert health.status_code == 503 and health.json["broker"]["ok"] is False


def test_model_with_external_weights_is_refused_clearly(
    app: Flask, client: FlaskClient, small_cnn, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load_from_string(small_cnn.data)
    path = tmp_path / "external" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    response = upload(client, path.read_bytes())
    assert response.status_code == 400
    assert "external data" in response.json["message"]
    assert stored_artifacts(app) == [] and row_counts(app) == (0, 0, 0)


def test_listings_paginate_newest_first(app: Flask, client: FlaskClient, small_cnn) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load_from_string(small_cnn.data)
    for index in range(3):
        model.producer_version = str(index)
        assert upload(client, model.SerializeToString(), name=f"model-{index}").status_code == 201
    first = client.get("/api/v1/models?limit=2").json
    assert [m["name"] for m in first["items"]] == ["model-2", "model-1"]
    rest_page = client.get(f"/api/v1/models?limit=2&cursor={first['next_cursor']}").json
    assert rest_page["next_cursor"] is None
    rest = rest_page["items"]
    assert [m["name"] for m in rest] == ["model-0"]
    jobs = client.get("/api/v1/jobs?limit=1").json["items"]
    assert len(jobs) == 1 and jobs[0]["model"] == "model-2"
    assert client.get("/api/v1/models/model-0").json["versions"][0]["label"] == "v1"
    assert client.get("/api/v1/models/nope").status_code == 404


def test_unexpected_error_is_a_json_500_without_internals(app: Flask) -> None:
    def explode() -> None:
        raise RuntimeError("secret internal detail")

    app.add_url_rule("/api/v1/test-explode", "test_explode", explode)
    app.config["TESTING"] = False  # production behaviour: errors are handled, not re-raised
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/api/v1/test-explode")
    assert response.status_code == 500
    assert response.json["error"] == "internal_error"
    assert "secret internal detail" not in response.get_data(as_text=True)
