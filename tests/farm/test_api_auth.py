"""Bearer tokens: wrong token, missing scope, revoked token, public read on/off, the token CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import client_with, upload_model
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from farm.api.auth import hash_token, issue_token
from farm.cli import main
from farm.config import Settings
from farm.db import ApiToken


def test_tokens_are_stored_hashed(app: Flask) -> None:
    db = app.extensions["farm"].db
    token = issue_token(db, "ci", ["submit"])
    with db.session() as session:
        row = session.execute(select(ApiToken)).scalar_one()
        assert row.token_hash == hash_token(token) and token not in (row.token_hash, row.prefix)
        assert token.startswith(row.prefix) and row.scopes == ["submit"]


def test_writes_need_a_token(app: Flask, small_cnn) -> None:  # type: ignore[no-untyped-def]
    response = upload_model(client_with(app), small_cnn.data)
    assert response.status_code == 401
    assert response.json["error"] == "unauthorized" and "submit" in response.json["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_is_401_even_on_a_public_read(app: Flask) -> None:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer farm_not-a-real-token"
    for response in (client.get("/api/v1/jobs"), client.post("/api/v1/submissions", json={})):
        assert response.status_code == 401, response.json
        assert "invalid token" in response.json["message"]
    client.environ_base["HTTP_AUTHORIZATION"] = "Basic dXNlcjpwYXNz"
    assert client.get("/api/v1/jobs").status_code == 401


def test_missing_scope_is_403(app: Flask, small_cnn) -> None:  # type: ignore[no-untyped-def]
    reader = client_with(app, "read")
    assert reader.get("/api/v1/jobs").status_code == 200
    response = upload_model(reader, small_cnn.data)
    assert response.status_code == 403
    assert (
        "lacks scope 'submit'" in response.json["message"] and response.json["details"]["scope"] == "submit"
    )
    submitter = client_with(app, "submit")
    assert submitter.get("/api/v1/tokens").status_code == 403  # tokens need admin
    assert upload_model(submitter, small_cnn.data).status_code == 201
    admin = client_with(app, "admin")  # admin includes submit and read
    assert admin.get("/api/v1/tokens").status_code == 200


def test_revoked_token_is_refused(app: Flask, small_cnn) -> None:  # type: ignore[no-untyped-def]
    admin = client_with(app, "admin")
    created = admin.post("/api/v1/tokens", json={"name": "ci-runner", "scopes": ["submit"]})
    assert created.status_code == 201
    token, token_id = created.json["token"], created.json["id"]
    ci = app.test_client()
    ci.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    assert upload_model(ci, small_cnn.data).status_code == 201
    listed = admin.get("/api/v1/tokens").json["items"]
    assert {item["name"] for item in listed} >= {"ci-runner"} and all("token" not in item for item in listed)
    revoked = admin.delete(f"/api/v1/tokens/{token_id}")
    assert revoked.status_code == 200 and revoked.json["revoked_at"]
    response = upload_model(ci, small_cnn.data)
    assert response.status_code == 401 and "revoked" in response.json["message"]
    assert ci.get("/api/v1/models").status_code == 401


@pytest.fixture
def private_app(settings: Settings) -> Iterator[Flask]:
    from farm.app import create_app

    flask_app = create_app(settings.model_copy(update={"public_read": False}))
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["farm"].db.dispose()


def test_reads_need_a_token_when_public_read_is_off(private_app: Flask) -> None:
    anonymous = client_with(private_app)
    response = anonymous.get("/api/v1/models")
    assert response.status_code == 401 and "read" in response.json["message"]
    assert client_with(private_app, "read").get("/api/v1/models").status_code == 200


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    from farm.config import get_settings
    from farm.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(url)
    get_settings.cache_clear()
    yield {"FARM_DATABASE_URL": url, "FARM_ARTIFACTS_URL": str(tmp_path / "artifacts"),
           "FARM_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}"}  # fmt: skip
    get_settings.cache_clear()


def test_token_cli_create_list_revoke(cli_env: dict[str, str]) -> None:
    from farm.db import Database

    runner = CliRunner()
    created = runner.invoke(main, ["token", "create", "ci", "--scope", "submit"], env=cli_env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("farm_")
    db = Database(cli_env["FARM_DATABASE_URL"])
    with db.session() as session:
        row = session.execute(select(ApiToken)).scalar_one()
        assert row.token_hash == hash_token(token) and row.scopes == ["submit"]
    listed = runner.invoke(main, ["token", "list"], env=cli_env)
    assert listed.exit_code == 0 and "ci" in listed.output and token not in listed.output
    assert "active" in listed.output
    bad = runner.invoke(main, ["token", "create", "x", "--scope", "root"], env=cli_env)
    assert bad.exit_code != 0 and "unknown scope 'root'" in bad.output
    revoked = runner.invoke(main, ["token", "revoke", "ci"], env=cli_env)
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in runner.invoke(main, ["token", "list"], env=cli_env).output
    assert runner.invoke(main, ["token", "revoke", "ci"], env=cli_env).exit_code != 0
    db.dispose()
