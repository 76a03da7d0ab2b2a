"""The Flask application factory: ``create_app(settings)``.

The app holds the farm's services (settings, database, artifact store, Celery app) in
``app.extensions["farm"]``; API views, dashboard views and Celery tasks reach them through
:func:`current_services`. The API blueprint is mounted at ``/api/v1`` and the dashboard at ``/``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from farm.config import Settings, get_settings
from farm.db import Database
from farm.storage import ArtifactStore, open_store

if TYPE_CHECKING:
    from celery import Celery


@dataclass
class FarmServices:
    """Everything a request or a task needs, created once per process from the settings."""

    settings: Settings
    db: Database
    store: ArtifactStore
    celery: Celery


def create_app(settings: Settings | None = None) -> Flask:
    """A Flask app for ``settings`` (default: read from the environment) with its Celery app."""
    from farm.api import api_blueprint
    from farm.api.errors import register_error_handlers
    from farm.dashboard import dashboard_blueprint
    from farm.metrics import metrics_blueprint
    from farm.worker.celery_app import create_celery

    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.ensure_local_paths()

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=settings.max_upload_mb * 1024 * 1024,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the order the schemas define
    services = FarmServices(
        settings=settings,
        db=Database(settings.sqlalchemy_url),
        store=open_store(settings.artifacts_url),
        celery=create_celery(settings, app),
    )
    app.extensions["farm"] = services
    app.extensions["celery"] = services.celery

    app.register_blueprint(api_blueprint, url_prefix="/api/v1")
    app.register_blueprint(dashboard_blueprint)
    app.register_blueprint(metrics_blueprint)  # GET /metrics (Prometheus)
    register_error_handlers(app)
    return app


def current_services() -> FarmServices:
    """The services of the current Flask app (inside a request or a task)."""
    services: FarmServices = current_app.extensions["farm"]
    return services
