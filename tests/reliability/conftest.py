"""Fixtures of the reliability tests: a Flask app on SQLite (a copy of a database migrated once per
session) with an in-memory broker and a temp store, and tokens of each scope."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from reliability_support import MAX_UPLOAD_MB, Tokens

from farm.config import load_settings
from farm.db.migrate import upgrade


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per session; tests start from a copy."""
    path = tmp_path_factory.mktemp("reliability-db") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(tmp_path: Path, migrated_sqlite: Path) -> Iterator[Flask]:
    """The farm's Flask app on a migrated SQLite database, an in-memory broker and a temp store."""
    from farm.app import create_app

    shutil.copyfile(migrated_sqlite, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    settings = load_settings(
        {}, database_url=url, broker_url="memory://", artifacts_url=str(tmp_path / "artifacts"),
        max_upload_mb=MAX_UPLOAD_MB, public_read=False,
    )  # fmt: skip
    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    with flask_app.extensions["celery"].connection_for_write() as connection:
        connection.SimpleQueue("profile.cpu").clear()
    yield flask_app
    flask_app.extensions["farm"].db.dispose()


@pytest.fixture
def tokens(app: Flask) -> Tokens:
    """Tokens with scopes read, submit and admin, and a revoked submit token."""
    from farm.api.auth import issue_token, revoke_token

    db = app.extensions["farm"].db
    revoked = issue_token(db, "revoked", scopes=("submit",))
    revoke_token(db, "revoked")
    return Tokens(
        read=issue_token(db, "reader", scopes=("read",)),
        submit=issue_token(db, "submitter", scopes=("submit",)),
        admin=issue_token(db, "administrator", scopes=("admin",)),
        revoked=revoked,
    )
