"""Hostile requests against the API and the dashboard: missing, wrong, revoked and under-scoped
tokens, oversized and malformed bodies, injection strings in every text field, path traversal,
script tags in names the dashboard shows, hostile datasets.

Every one must get a JSON 4xx (or be stored verbatim and shown escaped), never a 500, and must
leave what is stored as it was.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flask import Flask
from hostile_onnx import valid_model
from reliability_support import MAX_UPLOAD_MB, Tokens, client_with, leftover_temp_files, stored_state

from farm.storage import InvalidKeyError, open_store

INJECTIONS = [
    "'; DROP TABLE jobs; --",
    '" OR 1=1 --',
    "%s%s%s%n%x{0}{__class__.__mro__}",
    "${jndi:ldap://127.0.0.1/x}",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "\x00nul",
    "\u202egnp.exe \U0001d54f\U0001f600 \ud7ff",
    "a" * 5000,
]
WRITES = [
    ("POST", "/api/v1/models"),
    ("POST", "/api/v1/datasets"),
    ("POST", "/api/v1/submissions"),
    ("POST", "/api/v1/jobs/1/cancel"),
    ("POST", "/api/v1/submissions/1/cancel"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/1"),
]
READS = ["/api/v1/models", "/api/v1/jobs", "/api/v1/submissions", "/api/v1/jobs/1", "/api/v1/tokens"]


def _error_body(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.get_json(silent=True)
    assert isinstance(body, dict) and body.get("error") and body.get("message"), (response.status_code, body)
    return body


def _upload(client, name: str = "good", **fields: str):  # type: ignore[no-untyped-def]
    data = {"name": name, "file": (io.BytesIO(valid_model().SerializeToString()), "m.onnx"), **fields}
    return client.post("/api/v1/models", data=data, content_type="multipart/form-data")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_writes_need_a_valid_token_with_the_right_scope(
    app: Flask, tokens: Tokens, method: str, path: str
) -> None:
    before = stored_state(app)
    cases = {
        None: 401,
        "not-a-token": 401,
        tokens.revoked: 401,
        tokens.read: 403,
    }
    if path.startswith("/api/v1/tokens"):
        cases[tokens.submit] = 403  # scope escalation: a submit token cannot mint or revoke tokens
    for token, status in cases.items():
        response = client_with(app, token).open(path, method=method, json={})
        assert response.status_code == status, (token, response.status_code, response.get_json())
        body = _error_body(response)
        if token and token.startswith("farm"):
            assert token not in json.dumps(body)  # never echo a secret
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "bearer\x00x", "Token abc"):
        response = app.test_client().open(path, method=method, json={}, headers={"Authorization": header})
        assert response.status_code == 401, (header, response.status_code)
    assert stored_state(app).rows == before.rows


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_token_when_public_read_is_off(app: Flask, tokens: Tokens, path: str) -> None:
    assert client_with(app, None).get(path).status_code == 401
    assert client_with(app, "farm_wrong").get(path).status_code == 401
    status = client_with(app, tokens.read).get(path).status_code
    assert status == (403 if path == "/api/v1/tokens" else 200) or (status == 404 and path.endswith("/1")), (
        status
    )


def test_a_submit_token_cannot_mint_an_admin_token(app: Flask, tokens: Tokens) -> None:
    response = client_with(app, tokens.submit).post(
        "/api/v1/tokens", json={"name": "mine", "scopes": ["admin"]}
    )
    assert response.status_code == 403
    created = client_with(app, tokens.admin).post("/api/v1/tokens", json={"name": "ok", "scopes": ["read"]})
    assert created.status_code == 201, created.get_json()
    listed = client_with(app, tokens.admin).get("/api/v1/tokens").get_json()
    assert all(tokens.admin not in json.dumps(item) for item in listed["items"])  # only hashes are kept


def test_oversized_bodies_are_413_and_store_nothing(app: Flask, tokens: Tokens) -> None:
    client = client_with(app, tokens.submit)
    before = stored_state(app)
    big = b"\0" * ((MAX_UPLOAD_MB << 20) + 1024)
    response = client.post(
        "/api/v1/models",
        data={"name": "big", "file": (io.BytesIO(big), "big.onnx")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413 and str(MAX_UPLOAD_MB) in _error_body(response)[
        "message"
    ] + json.dumps(response.get_json())
    response = client.post(
        "/api/v1/submissions",
        data=b'{"model": "' + b"a" * (MAX_UPLOAD_MB << 20) + b'"}',
        content_type="application/json",
    )
    assert response.status_code == 413, response.status_code
    _error_body(response)
    assert stored_state(app) == before
    assert leftover_temp_files(app) == []


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1, 2]", b'"just a string"', b"null", b"\xff\xfe\x00", b'{"model": "good"' + b" " * 10, b"[" * 100_000 + b"]" * 100_000,
     b'{"model": "good", "profiles": ["cpu"], "precisions": ["fp32"], "batch_sizes": [1e999]}',
     b'{"model": "good", "profiles": ["cpu"], "batch_sizes": [-1]}', b'{"model": "good", "profiles": "cpu"}',
     b'{"model": "good", "profiles": ["cpu"], "options": {"tuning_level": 99999999999999999999999}}',
     b'{"model": "good", "profiles": ["cpu"], "unknown_field": 1}'],
)  # fmt: skip
def test_malformed_json_is_a_400(app: Flask, tokens: Tokens, body: bytes) -> None:
    client = client_with(app, tokens.submit)
    assert _upload(client).status_code == 201
    before = stored_state(app)
    response = client.post("/api/v1/submissions", data=body, content_type="application/json")
    assert 400 <= response.status_code < 500, (response.status_code, response.get_json())
    _error_body(response)
    assert stored_state(app).rows == before.rows


def test_wrong_content_type_is_a_4xx(app: Flask, tokens: Tokens) -> None:
    client = client_with(app, tokens.submit)
    response = client.post(
        "/api/v1/submissions", data="model=good", content_type="application/x-www-form-urlencoded"
    )
    assert 400 <= response.status_code < 500
    response = client.post("/api/v1/models", json={"name": "x"})
    assert 400 <= response.status_code < 500
    _error_body(response)


@pytest.mark.parametrize("text", INJECTIONS, ids=[f"injection{i}" for i in range(len(INJECTIONS))])
def test_injection_strings_in_every_text_field(app: Flask, tokens: Tokens, text: str) -> None:
    """Each text field gets the string: a 4xx, or it is stored and returned verbatim; never a 500."""
    client = client_with(app, tokens.submit)
    admin = client_with(app, tokens.admin)
    assert _upload(client).status_code == 201
    tables_before = stored_state(app).rows
    statuses = []

    def check(response, field: str) -> None:  # type: ignore[no-untyped-def]
        statuses.append((field, response.status_code))
        assert response.status_code < 500, (field, response.status_code, response.get_data()[:300])
        if response.status_code >= 400:
            _error_body(response)

    for field in ("label", "git_commit", "branch", "ci_url"):
        response = _upload(client, "good", **{field: text})
        check(response, field)
        if response.status_code in (200, 201):
            version = response.get_json()["model_version"]
            shown = version.get(field)
            assert shown in (text, None) or field == "label", (field, shown)
    check(_upload(client, text), "name")
    check(client.post("/api/v1/submissions", json={"model": text, "profiles": ["cpu"]}), "submission.model")
    check(
        client.post("/api/v1/submissions", json={"model": "good", "version": text, "profiles": ["cpu"]}),
        "version",
    )
    check(client.post("/api/v1/submissions", json={"model": "good", "profiles": [text]}), "profiles")
    check(client.post("/api/v1/submissions", json={"model": "good", "profiles": ["cpu"], "precisions": [text]}),
          "precisions")  # fmt: skip
    check(client.post("/api/v1/submissions", json={"model": "good", "profiles": ["cpu"], "idempotency_key": text}),
          "idempotency_key")  # fmt: skip
    check(client.post("/api/v1/submissions", json={"model": "good", "profiles": ["cpu"]},
                      headers={"Idempotency-Key": text.encode("utf-8", "surrogatepass").decode("latin-1")}),
          "Idempotency-Key")  # fmt: skip
    check(client.post("/api/v1/submissions", json={"model": "good", "profiles": ["cpu"],
                                                   "options": {"baseline": text, "calibration": text}}),
          "options")  # fmt: skip
    npz = io.BytesIO()
    np.savez(npz, x=np.ones((2, 4), np.float32))
    check(client.post("/api/v1/datasets", data={"name": text, "file": (io.BytesIO(npz.getvalue()), "d.npz")},
                      content_type="multipart/form-data"), "dataset.name")  # fmt: skip
    check(admin.post("/api/v1/tokens", json={"name": text, "scopes": ["read"]}), "token.name")
    for path in (
        f"/api/v1/models/{text}", f"/api/v1/models/good/versions/{text}", f"/api/v1/models/good/compare?a={text}&b=1",
        f"/api/v1/jobs?state={text}", f"/api/v1/jobs?cursor={text}", f"/api/v1/jobs?profile={text}",
        f"/api/v1/models?cursor={text}", f"/api/v1/submissions?cursor={text}&limit={text}",
    ):  # fmt: skip
        check(client.get(path), path[:40])
    rows = stored_state(app).rows
    for table in ("jobs", "models", "model_versions", "engines"):  # SQL metacharacters dropped nothing
        assert rows[table] >= tables_before[table], table


def test_path_traversal_in_artifact_keys_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(str(tmp_path / "store"))
    secret = tmp_path / "secret"
    secret.write_text("do not read")
    for key in ("../secret", "sha256/../../secret", "sha256/ab/../../../secret", "/etc/passwd",
                "sha256/ab/" + "a" * 64, "sha256/aa/" + "A" * 64, "sha256/aa/" + "a" * 63 + "/", "sha256/aa/aa\x00"):  # fmt: skip
        for operation in (store.read_bytes, store.exists, store.delete):
            with pytest.raises(InvalidKeyError):
                operation(key)
    assert secret.read_text() == "do not read"


def test_path_traversal_in_urls_is_a_404(app: Flask, tokens: Tokens) -> None:
    client = client_with(app, tokens.read)
    for path in ("/api/v1/models/..%2F..%2Fetc%2Fpasswd", "/api/v1/models/../../etc/passwd",
                 "/api/v1/engines/..%2F1", "/engines/-1/download", "/models/..%2F..%2Fetc%2Fpasswd",
                 "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/api/v1/jobs/1%00/log"):  # fmt: skip
        response = client.get(path)
        assert response.status_code in (400, 401, 404, 405), (path, response.status_code)
        assert b"root:" not in response.get_data()


def test_script_tags_in_shown_names_are_escaped_on_the_dashboard(app: Flask, tokens: Tokens) -> None:
    script = "<script>alert('xss')</script>"
    client = client_with(app, tokens.submit)
    uploaded = _upload(client, "xss-model", label=script, branch=script, git_commit=script[:60],
                       ci_url="javascript:alert(document.cookie)")  # fmt: skip
    assert uploaded.status_code == 201, uploaded.get_json()
    job_id = uploaded.get_json()["job"]["id"]
    submitted = client.post("/api/v1/submissions", json={"model": "xss-model", "profiles": ["cpu"]})
    assert submitted.status_code < 500
    for page in ("/", "/models/xss-model", f"/jobs/{job_id}", "/history?model=xss-model", "/compare"):
        response = client.get(page)
        assert response.status_code < 500, (page, response.status_code)
        html = response.get_data(as_text=True)
        assert "<script>alert(" not in html, page
        assert 'href="javascript:' not in html.lower(), page
    job_html = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert job_html.count("&lt;script&gt;alert(") >= 2  # label and branch are shown, escaped


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _pickled_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"os.system": "echo pwned"}, None], dtype=object))
    return buffer.getvalue()


HOSTILE_DATASETS = {
    "pickled_object_array": (_pickled_npz(), "pickle"),
    "nan": (_npz(x=np.array([[np.nan, 1, 2, 3]] * 2, np.float32)), "nan"),
    "inf": (_npz(x=np.array([[np.inf, 1, 2, 3]] * 2, np.float32)), "infinite"),
    "empty_array": (_npz(x=np.zeros((0, 4), np.float32)), "empty"),
    "no_arrays": (_npz(), "no arrays"),
    "wrong_shape": (_npz(x=np.ones((2, 5), np.float32)), "x"),
    "wrong_dtype": (_npz(x=np.ones((2, 4), np.complex64)), "x"),
    "string_dtype": (_npz(x=np.array([["a", "b", "c", "d"]] * 2)), "x"),
    "scalar": (_npz(x=np.float32(1.0)), "scalar"),
    "not_a_zip": (b"\x93NUMPY not an npz", "npz"),
    "wrong_input_name": (_npz(nope=np.ones((2, 4), np.float32)), "x"),
}


@pytest.mark.parametrize("name", HOSTILE_DATASETS)
def test_hostile_datasets_are_a_400_naming_the_problem(app: Flask, tokens: Tokens, name: str) -> None:
    client = client_with(app, tokens.submit)
    uploaded = _upload(client, "ds-model")
    assert uploaded.status_code == 201
    from farm.worker.jobs import InspectJobCommand

    services = app.extensions["farm"]
    with app.app_context():  # the model's input specs come from its inspection
        InspectJobCommand(uploaded.get_json()["job"]["id"], db=services.db, store=services.store,
                          worker_name="t", lease_seconds=60).run()  # fmt: skip
    before = stored_state(app)
    data, word = HOSTILE_DATASETS[name]
    response = client.post(
        "/api/v1/datasets",
        data={"name": name, "model": "ds-model", "file": (io.BytesIO(data), f"{name}.npz")},
        content_type="multipart/form-data",
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.get_json())
    body = _error_body(response)
    assert word in json.dumps(body).lower(), body
    assert stored_state(app) == before
    assert leftover_temp_files(app) == []
