"""Engine downloads: sha256 ETag, If-None-Match, Range resume (206) and 416."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from api_support import client_with, finished_build_job, upload_model
from flask import Flask


def test_engine_download_etag_range_and_resume(app: Flask, small_cnn) -> None:  # type: ignore[no-untyped-def]
    client = client_with(app, "submit")
    version_id = upload_model(client, small_cnn.data, name="cnn").json["model_version"]["id"]
    data = np.random.default_rng(3).bytes(300_000)
    sha256 = hashlib.sha256(data).hexdigest()
    _, engine_id = finished_build_job(app, version_id, data)
    anonymous = client_with(app)  # FARM_PUBLIC_READ is on: downloads need no token

    meta = anonymous.get(f"/api/v1/engines/{engine_id}").json
    assert meta["sha256"] == sha256 and meta["size_bytes"] == len(data)
    assert meta["download_url"].endswith(f"/api/v1/engines/{engine_id}/download")

    full = anonymous.get(f"/api/v1/engines/{engine_id}/download")
    assert full.status_code == 200 and full.data == data
    assert full.headers["ETag"] == f'"{sha256}"' and full.headers["Accept-Ranges"] == "bytes"

    assert (
        anonymous.get(
            f"/api/v1/engines/{engine_id}/download", headers={"If-None-Match": f'"{sha256}"'}
        ).status_code
        == 304
    )
    assert (
        anonymous.get(
            f"/api/v1/engines/{engine_id}/download", headers={"If-None-Match": '"other"'}
        ).status_code
        == 200
    )

    # a download interrupted after 100 000 bytes resumes from there
    part = data[:100_000]
    rest = anonymous.get(f"/api/v1/engines/{engine_id}/download", headers={"Range": f"bytes={len(part)}-"})
    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes {len(part)}-{len(data) - 1}/{len(data)}"
    assert hashlib.sha256(part + rest.data).hexdigest() == sha256

    beyond = anonymous.get(
        f"/api/v1/engines/{engine_id}/download", headers={"Range": f"bytes={len(data) + 5}-"}
    )
    assert beyond.status_code == 416 and beyond.json["error"] == "range_not_satisfiable"
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"

    assert anonymous.get("/api/v1/engines/999/download").status_code == 404


def test_client_download_resumes_and_verifies(app: Flask, small_cnn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """FarmClient.download_engine resumes a .part file with Range and checks the sha256 (through WSGI)."""
    from farm.client import FarmClient, FarmClientError

    client = client_with(app, "submit")
    version_id = upload_model(client, small_cnn.data, name="cnn").json["model_version"]["id"]
    data = np.random.default_rng(4).bytes(200_000)
    _, engine_id = finished_build_job(app, version_id, data)
    farm = FarmClient("http://farm.test", session=wsgi_session(app))
    target = tmp_path / "out" / "model.engine"
    target.parent.mkdir()
    (target.parent / "model.engine.part").write_bytes(data[:50_000])
    assert farm.download_engine(engine_id, target).read_bytes() == data
    assert not (target.parent / "model.engine.part").exists()
    wrong = tmp_path / "wrong.engine"
    try:
        farm.download_engine(engine_id, wrong, expected_sha256="0" * 64)
    except FarmClientError as exc:
        assert "does not match" in str(exc)
    else:
        raise AssertionError("a wrong sha256 must fail the download")
    assert not wrong.exists()


def wsgi_session(app: Flask):  # type: ignore[no-untyped-def]
    """A requests session whose requests go to ``app`` through WSGI (no sockets)."""
    import requests
    from requests.adapters import BaseAdapter

    class WsgiAdapter(BaseAdapter):
        def send(self, request, stream=False, **kwargs):  # type: ignore[no-untyped-def]
            from urllib.parse import urlsplit

            url = urlsplit(request.url)
            response = app.test_client().open(
                url.path, query_string=url.query, method=request.method, headers=dict(request.headers),
                data=request.body,
            )  # fmt: skip
            result = requests.Response()
            result.status_code = response.status_code
            result.headers.update(response.headers)
            result.raw = io.BytesIO(response.get_data())
            result.url = request.url
            result.request = request
            return result

        def close(self) -> None:
            pass

    session = requests.Session()
    session.mount("http://farm.test", WsgiAdapter())
    return session


def test_an_engine_missing_from_the_store_is_a_clear_404(app: Flask, small_cnn) -> None:  # type: ignore[no-untyped-def]
    client = client_with(app, "submit")
    version_id = upload_model(client, small_cnn.data, name="cnn").json["model_version"]["id"]
    data = b"engine that will vanish"
    _, engine_id = finished_build_job(app, version_id, data)
    store = app.extensions["farm"].store
    store.delete(f"sha256/{hashlib.sha256(data).hexdigest()[:2]}/{hashlib.sha256(data).hexdigest()}")
    app.config["TESTING"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get(f"/api/v1/engines/{engine_id}/download")
    assert response.status_code == 404 and "missing from the artifact store" in response.json["message"]
