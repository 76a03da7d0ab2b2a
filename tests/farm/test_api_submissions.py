"""Submissions: validation naming the field, unknown profiles, Idempotency-Key, jobs listing, cancel, results."""

from __future__ import annotations

import pytest
from api_support import client_with, finished_build_job, upload_model
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from farm.db import Job, Submission, Verdict


@pytest.fixture
def client(app: Flask, small_cnn) -> FlaskClient:  # type: ignore[no-untyped-def]
    client = client_with(app, "submit")
    assert upload_model(client, small_cnn.data, name="cnn").status_code == 201
    return client


def submit(client: FlaskClient, key: str | None = None, **fields):  # type: ignore[no-untyped-def]
    body = {
        "model": "cnn",
        "profiles": ["cpu"],
        "precisions": ["fp32", "int8"],
        "batch_sizes": [1, 8],
    } | fields
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/v1/submissions", json=body, headers=headers)


def test_submission_fans_out_one_job_per_combination(client: FlaskClient) -> None:
    response = submit(client, options={"baseline": {"branch": "main"}, "calibrator": "percentile"})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["state"] == "queued" and body["options"]["calibrator"] == "percentile"
    combos = {(job["profile"], job["precision"], job["batch_size"]) for job in body["jobs"]}
    assert combos == {("cpu", p, b) for p in ("fp32", "int8") for b in (1, 8)}
    assert any("no worker serving profile 'cpu'" in warning for warning in body["warnings"])


def test_unknown_profile_is_400_naming_it(client: FlaskClient) -> None:
    response = submit(client, profiles=["cpu", "nvidia-h300"])
    assert response.status_code == 400
    assert "nvidia-h300" in response.json["message"]
    assert (
        response.json["details"]["field"] == "profiles"
        and response.json["details"]["profile"] == "nvidia-h300"
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"precisions": ["fp8"]}, "precisions.0"),
        ({"batch_sizes": [0]}, "batch_sizes.0"),
        ({"profiles": []}, "profiles"),
        ({"options": {"latency_threshold_pct": -1}}, "options.latency_threshold_pct"),
        ({"options": {"calibrator": "magic"}}, "options.calibrator"),
        ({"options": {"baseline": {"version": "1", "branch": "main"}}}, "options.baseline"),
        ({"options": {"surprise": 1}}, "options.surprise"),
        ({"options": {"disabled_tactics": ["x" * 129]}}, "options.disabled_tactics.0"),
        ({"options": {"disabled_tactics": [""]}}, "options.disabled_tactics.0"),
        ({"model": "bad name!"}, "model"),
        ({"dataset_id": "x"}, "dataset_id"),
    ],
)
def test_validation_failures_are_400_naming_the_field(client: FlaskClient, fields, field) -> None:  # type: ignore[no-untyped-def]
    response = submit(client, **fields)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_request"
    assert response.json["details"]["field"] == field and field in response.json["message"]


def test_unknown_model_version_and_dataset_are_404(client: FlaskClient) -> None:
    assert submit(client, model="other").status_code == 404
    response = submit(client, version=7)
    assert response.status_code == 404 and "no version '7'" in response.json["message"]
    response = submit(client, dataset_id=99)
    assert response.status_code == 404 and response.json["details"]["field"] == "dataset_id"


def test_non_json_body_is_refused(client: FlaskClient) -> None:
    response = client.post("/api/v1/submissions", data="model=cnn", content_type="text/plain")
    assert response.status_code == 415 and response.json["error"] == "unsupported_media_type"
    response = client.post("/api/v1/submissions", data="{nope", content_type="application/json")
    assert response.status_code == 400


def test_same_idempotency_key_same_body_is_the_same_submission(client: FlaskClient, app: Flask) -> None:
    first = submit(client, key="ci-run-42")
    again = submit(client, key="ci-run-42")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json["id"] == first.json["id"]
    assert [job["id"] for job in again.json["jobs"]] == [job["id"] for job in first.json["jobs"]]
    with app.extensions["farm"].db.session() as session:
        assert session.execute(select(func.count()).select_from(Submission)).scalar_one() == 1
        assert (
            session.execute(select(func.count()).select_from(Job).where(Job.kind == "build")).scalar_one()
            == 4
        )


def test_same_idempotency_key_other_body_is_409(client: FlaskClient) -> None:
    first = submit(client, key="ci-run-43")
    conflict = submit(client, key="ci-run-43", precisions=["fp16"])
    assert conflict.status_code == 409 and conflict.json["error"] == "conflict"
    assert conflict.json["details"]["submission_id"] == first.json["id"]
    assert submit(client, key="ci-run-44", precisions=["fp16"]).status_code == 201


def test_jobs_list_filters_and_cursor_pagination(client: FlaskClient) -> None:
    submission = submit(client).json
    build_ids = sorted((job["id"] for job in submission["jobs"]), reverse=True)
    seen: list[int] = []
    cursor = None
    while True:
        query = f"/api/v1/jobs?kind=build&limit=3&submission_id={submission['id']}" + (
            f"&cursor={cursor}" if cursor else ""
        )
        page = client.get(query).json
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == build_ids
    int8 = client.get("/api/v1/jobs?precision=int8&model=cnn").json["items"]
    assert len(int8) == 2 and {job["precision"] for job in int8} == {"int8"}
    assert client.get("/api/v1/jobs?state=succeeded").json["items"] == []
    bad = client.get("/api/v1/jobs?state=done")
    assert bad.status_code == 400 and bad.json["details"]["field"] == "state"
    assert client.get("/api/v1/jobs?cursor=garbage!").status_code == 400
    assert client.get("/api/v1/jobs?limit=0").status_code == 400


def test_cancel_a_job_and_a_submission(client: FlaskClient) -> None:
    submission = submit(client).json
    first = submission["jobs"][0]["id"]
    assert client.post(f"/api/v1/jobs/{first}/cancel").json["state"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{first}/cancel").status_code == 409
    cancelled = client.post(f"/api/v1/submissions/{submission['id']}/cancel").json
    assert cancelled["state"] == "finished" and {job["state"] for job in cancelled["jobs"]} == {"cancelled"}
    results = client.get(f"/api/v1/submissions/{submission['id']}/results").json
    assert results["outcome"] == "failed" and results["finished"]


def test_results_outcome_follows_the_verdicts(client: FlaskClient, app: Flask) -> None:
    version_id = client.get("/api/v1/models/cnn").json["versions"][0]["id"]
    job_id, engine_id = finished_build_job(app, version_id, b"engine bytes")
    with app.extensions["farm"].db.session() as session:
        submission_id = session.get(Job, job_id).submission_id  # type: ignore[union-attr]
        session.add(Verdict(job_id=job_id, kind="overall", outcome="unchanged", metric="verdict", details={}))
    results = client.get(f"/api/v1/submissions/{submission_id}/results").json
    assert results["outcome"] == "passed" and results["rows"][0]["engine"]["id"] == engine_id
    with app.extensions["farm"].db.session() as session:
        verdict = session.execute(select(Verdict).where(Verdict.job_id == job_id)).scalar_one()
        verdict.outcome = "regressed"
    assert client.get(f"/api/v1/submissions/{submission_id}/results").json["outcome"] == "regressed"
    compare = client.get(f"/api/v1/compare?a={job_id}&b={job_id}").json
    assert compare["a"]["job_id"] == job_id and compare["a"]["engine"]["id"] == engine_id
    versions = client.get("/api/v1/models/cnn/compare?a=1&b=latest").json
    assert versions["rows"][0]["a_job_id"] == job_id
