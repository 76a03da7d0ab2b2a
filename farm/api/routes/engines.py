"""Engines: metadata, download (sha256 ETag, Range, If-None-Match) and two-engine comparison."""

from __future__ import annotations

import io
from typing import Any

from flask import send_file

from farm.api.errors import ApiError
from farm.api.openapi import BinaryResponse
from farm.api.registry import IF_NONE_MATCH, RANGE, api
from farm.api.results import compare_jobs, engine_to_dict
from farm.api.schemas import CompareJobsOut, CompareJobsQuery, EngineOut
from farm.app import current_services
from farm.db import Engine as EngineRow
from farm.db import Job
from farm.storage import FileArtifactStore

ENGINE_HEADERS = {
    "ETag": "The engine's sha256, quoted.",
    "Accept-Ranges": "bytes",
    "Content-Length": "Bytes in this response.",
}


@api.operation("GET", "/engines/<int:engine_id>", summary="One engine", tag="engines", response=EngineOut)
def get_engine(engine_id: int) -> Any:
    """An engine's sha256, size, profile, precision, fingerprint, build report and download URL."""
    with current_services().db.session() as session:
        return engine_to_dict(_engine(session, engine_id), with_report=True)


@api.operation(
    "GET",
    "/engines/<int:engine_id>/download",
    summary="Download an engine",
    tag="engines",
    response=BinaryResponse("application/octet-stream", "The engine file.", ENGINE_HEADERS),
    extra_responses={
        206: BinaryResponse("application/octet-stream", "The requested byte range.", ENGINE_HEADERS),
        304: "Not modified: If-None-Match named this engine's ETag.",
    },
    errors=(416,),
    headers=[RANGE, IF_NONE_MATCH],
)
def download_engine(engine_id: int) -> Any:
    """The engine file. ETag = its sha256; ``Range`` resumes a download (206, or 416 beyond the end)."""
    services = current_services()
    with services.db.session() as session:
        engine = _engine(session, engine_id)
        key, sha256, profile, precision = engine.artifact_key, engine.sha256, engine.profile, engine.precision
    name = f"engine-{engine_id}-{profile}-{precision}.engine"
    store = services.store
    source: Any = (
        store.local_path(key) if isinstance(store, FileArtifactStore) else io.BytesIO(store.read_bytes(key))
    )
    response = send_file(
        source,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=name,
        conditional=True,
        etag=sha256,
        max_age=3600,
    )
    response.headers["X-Content-SHA256"] = sha256
    return response


@api.operation("GET", "/compare", summary="Compare two engines", tag="results", query=CompareJobsQuery,
               response=CompareJobsOut)  # fmt: skip
def compare_engines(query: CompareJobsQuery) -> Any:
    """Two build jobs (engines) side by side: latency, accuracy, verdicts; ratios are b / a."""
    with current_services().db.session() as session:
        job_a, job_b = session.get(Job, query.a), session.get(Job, query.b)
        for ident, job in ((query.a, job_a), (query.b, job_b)):
            if job is None:
                raise ApiError(404, f"no job {ident}", field="a" if ident == query.a else "b")
        assert job_a is not None and job_b is not None
        return compare_jobs(session, job_a, job_b)


def _engine(session: Any, engine_id: int) -> EngineRow:
    engine = session.get(EngineRow, engine_id)
    if engine is None:
        raise ApiError(404, f"no engine {engine_id}")
    return engine
