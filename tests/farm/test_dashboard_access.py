"""With FARM_PUBLIC_READ off, the dashboard (pages and engine downloads) needs a read token too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from farm.api.auth import issue_token, revoke_token
from farm.app import create_app
from farm.config import load_settings
from farm.db.migrate import upgrade


@pytest.fixture
def private_app(tmp_path: Path) -> Iterator[Flask]:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(url)
    settings = load_settings(
        {},
        database_url=url,
        broker_url="memory://",
        artifacts_url=str(tmp_path / "artifacts"),
        heartbeat_seconds=3600,
        public_read=False,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["farm"].db.dispose()


def test_pages_and_downloads_redirect_to_sign_in_without_a_token(private_app: Flask) -> None:
    client = private_app.test_client()
    for path in ("/", "/models/mlp", "/engines/1", "/engines/1/download", "/jobs/1", "/history?model=mlp"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/sign-in?next=")
    assert client.get("/sign-in").status_code == 200


def test_scripts_get_a_plain_401_for_a_bad_bearer_token(private_app: Flask) -> None:
    response = private_app.test_client().get("/", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert "invalid token" in response.get_data(as_text=True)


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(private_app: Flask) -> None:
    db = private_app.extensions["farm"].db
    token = issue_token(db, "viewer", ["read"])
    client = private_app.test_client()

    refused = client.post("/sign-in", data={"token": "wrong", "next": "/"})
    assert refused.status_code == 401 and "invalid token" in refused.get_data(as_text=True)

    response = client.post("/sign-in", data={"token": token, "next": "/models/mlp"})
    assert response.status_code == 302 and response.headers["Location"] == "/models/mlp"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/").status_code == 200

    revoke_token(db, "viewer")
    assert client.get("/").status_code == 302  # a revoked token signs the browser out


def test_bearer_header_works_for_scripts(private_app: Flask) -> None:
    token = issue_token(private_app.extensions["farm"].db, "script", ["read"])
    response = private_app.test_client().get("/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_sign_in_never_redirects_off_site(private_app: Flask) -> None:
    token = issue_token(private_app.extensions["farm"].db, "viewer", ["read"])
    client = private_app.test_client()
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        response = client.post("/sign-in", data={"token": token, "next": target})
        assert response.headers["Location"] == "/", target
