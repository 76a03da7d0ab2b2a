"""The API blueprint and its operation registry (see :mod:`farm.api.openapi`)."""

from __future__ import annotations

from flask import Blueprint

from farm.api.auth import authorize
from farm.api.openapi import ApiRegistry, HeaderParam
from farm.app import current_services

api_blueprint = Blueprint("api", __name__)

api = ApiRegistry(
    api_blueprint,
    title="Engine Farm API",
    version="1",
    description=(
        "Upload ONNX models and datasets, submit builds for hardware profiles × precisions × batch sizes, "
        "follow jobs, read results and comparisons, and download engines. Writes need a bearer token "
        "(`farm token create NAME --scope submit`); reads need none while FARM_PUBLIC_READ is on. "
        'Every error is JSON: {"error": code, "message": text, "details": {...}}.'
    ),
)


def _authorize(scope: str) -> None:
    services = current_services()
    authorize(services.db, scope, public_read=services.settings.public_read)


api.authorize = _authorize

IDEMPOTENCY_KEY = HeaderParam(
    "Idempotency-Key",
    "A key unique to this submission (e.g. the CI run id): a retry with the same key and body returns the "
    "same submission; the same key with another body is a 409.",
    {"type": "string", "maxLength": 128},
)
RANGE = HeaderParam("Range", "Bytes to send, e.g. 'bytes=1048576-' to resume a download.")
IF_NONE_MATCH = HeaderParam("If-None-Match", "The engine's ETag (its quoted sha256): 304 when unchanged.")
