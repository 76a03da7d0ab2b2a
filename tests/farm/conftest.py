"""Fixtures of the farm tests: databases migrated to head, and a Flask app on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from farm.config import Settings, load_settings
from farm.db import Database
from farm.db.migrate import upgrade


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp folder, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'farm.db'}"
        upgrade(url)
        yield url
        return
    empty: str = request.getfixturevalue("empty_postgres_url")
    url = "postgresql+psycopg://" + empty.split("://", 1)[1]
    upgrade(url)
    yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A :class:`Database` on the migrated test database."""
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for an app on the test database, an in-memory broker and a temp artifact folder."""
    return load_settings(
        {},
        database_url=database_url,
        broker_url="memory://",
        artifacts_url=str(tmp_path / "artifacts"),
        max_upload_mb=1,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The Flask app for :func:`settings`."""
    from farm.app import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    # kombu's memory transport is one store per process: start each test with empty queues
    with flask_app.extensions["celery"].connection_for_write() as connection:
        for queue in ("profile.cpu",):
            connection.SimpleQueue(queue).clear()
    yield flask_app
    flask_app.extensions["farm"].db.dispose()
