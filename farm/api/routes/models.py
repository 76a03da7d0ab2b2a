"""Models and their versions: upload (an .onnx, or a zip with external data), list, get, compare."""

from __future__ import annotations

from typing import Any

from flask import request, url_for
from sqlalchemy import select

from farm.api.commands import UploadModelCommand, VersionMetadata
from farm.api.datasets import find_version
from farm.api.errors import ApiError
from farm.api.pagination import paginate
from farm.api.registry import api
from farm.api.results import compare_versions
from farm.api.schemas import (
    CompareVersionsOut,
    CompareVersionsQuery,
    ModelDetailOut,
    ModelListQuery,
    ModelPage,
    ModelUploadForm,
    ModelVersionOut,
    UploadModelOut,
    job_to_dict,
    model_to_dict,
    model_version_to_dict,
)
from farm.app import current_services
from farm.db import Job, Model


@api.operation("POST", "/models", summary="Upload a model version", tag="models", form=ModelUploadForm,
               files={"file": "The .onnx file, or a .zip of the .onnx and its external-data files."},
               response=UploadModelOut, status=201, extra_responses={200: UploadModelOut})  # fmt: skip
def upload_model(form: ModelUploadForm) -> Any:
    """Check the model with onnx's full checker, store it by sha256 and enqueue its inspection.

    The same bytes for the same model name return the existing version (200) instead of a duplicate.
    """
    upload = request.files["file"]
    filename = upload.filename or "model.onnx"
    default_name = filename.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".zip").removesuffix(".onnx")
    name = form.name or default_name
    command = UploadModelCommand(
        current_services(),
        name=name,
        stream=upload.stream,
        filename=filename,
        metadata=VersionMetadata(
            label=form.label, git_commit=form.git_commit, branch=form.branch, ci_url=form.ci_url
        ),
    )
    command.validate()
    result = command.run()
    with current_services().db.session() as session:
        job = session.get(Job, result.job_id)
        assert job is not None
        body = {
            "created": result.created,
            "model_version": model_version_to_dict(job.model_version),
            "job": job_to_dict(job),
            "job_url": url_for("api.get_job", job_id=job.id, _external=True),
            "dashboard_url": url_for("dashboard.job_page", job_id=job.id, _external=True),
        }
    return body, 201 if result.created else 200


@api.operation(
    "GET", "/models", summary="List models", tag="models", query=ModelListQuery, response=ModelPage
)
def list_models(query: ModelListQuery) -> Any:
    """Models, newest first, with cursor pagination."""
    with current_services().db.session() as session:
        models, next_cursor = paginate(
            session, select(Model), Model.id, limit=query.limit, cursor=query.cursor
        )
        return {"items": [model_to_dict(m) for m in models], "limit": query.limit, "next_cursor": next_cursor}


@api.operation(
    "GET", "/models/<name>", summary="One model and its versions", tag="models", response=ModelDetailOut
)
def get_model(name: str) -> Any:
    """One model with its versions, newest first."""
    with current_services().db.session() as session:
        model = session.execute(select(Model).where(Model.name == name)).scalar_one_or_none()
        if model is None:
            raise ApiError(404, f"no model named {name!r}")
        return model_to_dict(model, with_versions=True)


@api.operation("GET", "/models/<name>/versions/<version>", summary="One model version with its facts",
               tag="models", response=ModelVersionOut)  # fmt: skip
def get_model_version(name: str, version: str) -> Any:
    """A version by number (``3`` or ``v3``), label or ``latest``, with the facts its inspection found."""
    with current_services().db.session() as session:
        return model_version_to_dict(find_version(session, name, version))


@api.operation("GET", "/models/<name>/compare", summary="Compare two versions of a model", tag="results",
               query=CompareVersionsQuery, response=CompareVersionsOut)  # fmt: skip
def compare_model_versions(name: str, query: CompareVersionsQuery) -> Any:
    """Latency and accuracy of two versions per profile × precision × batch (ratios are b / a)."""
    with current_services().db.session() as session:
        version_a = find_version(session, name, query.a)
        version_b = find_version(session, name, query.b)
        return {
            "model": name,
            "a": {"id": version_a.id, "number": version_a.number, "label": version_a.display_label},
            "b": {"id": version_b.id, "number": version_b.number, "label": version_b.display_label},
            "rows": compare_versions(session, version_a, version_b),
        }
