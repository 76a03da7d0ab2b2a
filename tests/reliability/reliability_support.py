"""Helpers of the reliability tests: a snapshot of everything stored (artifact files and the row
count of every table) to prove that hostile input changed nothing, tokens of each scope, and test
clients that send them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from farm.db import Base

MAX_UPLOAD_MB = 4


@dataclass(frozen=True)
class StoredState:
    """Every artifact file (path relative to the store -> bytes' size) and every table's row count."""

    artifacts: dict[str, int]
    rows: dict[str, int]


def stored_state(app: Flask) -> StoredState:
    """What the app's artifact store and database hold right now (temporary upload files excluded)."""
    services = app.extensions["farm"]
    root = Path(services.store.root)
    artifacts = {
        str(path.relative_to(root)): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and "tmp" not in path.relative_to(root).parts
    }
    rows = {}
    with services.db.session() as session:
        for table in Base.metadata.sorted_tables:
            rows[table.name] = session.execute(select(func.count()).select_from(table)).scalar_one()
    return StoredState(artifacts, rows)


def leftover_temp_files(app: Flask) -> list[str]:
    """Files left in the store's temp folder (an upload that failed must clean up after itself)."""
    tmp = Path(app.extensions["farm"].store.root) / "tmp"
    return sorted(str(p) for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else []


@dataclass(frozen=True)
class Tokens:
    """Bearer tokens of each scope, plus one revoked."""

    read: str
    submit: str
    admin: str
    revoked: str


def client_with(app: Flask, token: str | None) -> FlaskClient:
    """A test client sending ``token`` as its bearer token (none when ``None``)."""
    client = app.test_client()
    if token is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client
