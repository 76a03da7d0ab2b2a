"""JSON errors for every HTTP error under ``/api/``; the dashboard keeps HTML error pages.

Every API error has the same body, whatever raised it::

    {"error": "not_found", "message": "no job 12", "details": {}}

``error`` is a stable, machine-readable code (see :data:`ERROR_CODES`), ``message`` a sentence for
humans and ``details`` an object (``field`` names the request field a 400 is about).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

log = logging.getLogger(__name__)

ERROR_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "unprocessable",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


def error_code(status: int) -> str:
    """The stable code of an HTTP error status."""
    return ERROR_CODES.get(status, "client_error" if status < 500 else "server_error")


class ApiError(HTTPException):
    """An error a view raises on purpose: a status, a clear message and optional details."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.details = details
        self.extra_headers = headers or {}


def error_response(status: int, message: str, details: dict[str, Any] | None = None) -> tuple[Response, int]:
    """The JSON body of every API error: ``{"error": code, "message": ..., "details": {...}}``."""
    body = {"error": error_code(status), "message": message, "details": dict(details or {})}
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    """Answer errors under ``/api/`` with JSON (including 404 and 405 of unknown routes and 500)."""

    def handle_http(exc: HTTPException) -> Any:
        if not request.path.startswith("/api/"):
            return exc
        status = exc.code or 500
        details = getattr(exc, "details", None)
        message = exc.description or exc.name
        if status == 413 and not isinstance(exc, ApiError):
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the upload is larger than the limit of {limit} bytes (FARM_MAX_UPLOAD_MB)"
            details = {"limit_bytes": limit}
        response, status = error_response(status, message, details)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        for name, value in getattr(exc, "extra_headers", {}).items():
            response.headers[name] = value
        length = getattr(exc, "length", None)
        if status == 416 and length is not None:
            response.headers["Content-Range"] = f"bytes */{length}"
        if status == 401:
            response.headers.setdefault("WWW-Authenticate", 'Bearer realm="farm"')
        return response, status

    def handle_unexpected(exc: Exception) -> Any:
        from farm.storage import ArtifactNotFoundError

        if isinstance(exc, HTTPException):
            return handle_http(exc)
        if isinstance(exc, ArtifactNotFoundError) and request.path.startswith("/api/"):
            log.error("artifact missing from the store on %s %s: %s", request.method, request.path, exc)
            return error_response(
                404,
                "the stored file is missing from the artifact store",
                {"key": str(exc.args[0]) if exc.args else None},
            )
        log.exception("unhandled error on %s %s", request.method, request.path)
        if not request.path.startswith("/api/"):
            return InternalServerError()
        return error_response(500, "internal server error; the server log has the details")

    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(Exception, handle_unexpected)
