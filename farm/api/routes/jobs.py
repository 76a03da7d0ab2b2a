"""Jobs: list with filters and cursor pagination, get, results, log, cancel."""

from __future__ import annotations

from typing import Any

from flask import Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from farm.api.errors import ApiError
from farm.api.openapi import BinaryResponse
from farm.api.pagination import paginate
from farm.api.registry import api
from farm.api.schemas import JobListQuery, JobOut, JobPage, JobResultsOut, job_to_dict
from farm.api.submissions import job_results_to_dict, unserved_profile_warnings
from farm.app import current_services
from farm.db import Job, JobKind, JobState, Model, ModelVersion


@api.operation("GET", "/jobs", summary="List jobs", tag="jobs", query=JobListQuery, response=JobPage)
def list_jobs(query: JobListQuery) -> Any:
    """Jobs, newest first, filtered by state, profile, precision, kind, model or submission; cursor pagination."""
    # one query each for the page's versions and models, not two per job
    statement = select(Job).options(selectinload(Job.model_version).selectinload(ModelVersion.model))
    if query.state:
        statement = statement.where(Job.state == JobState(query.state))
    if query.profile:
        statement = statement.where(Job.profile == query.profile)
    if query.precision:
        statement = statement.where(Job.precision == query.precision)
    if query.kind:
        statement = statement.where(Job.kind == JobKind(query.kind))
    if query.submission_id:
        statement = statement.where(Job.submission_id == query.submission_id)
    if query.model:
        statement = (
            statement.join(ModelVersion, Job.model_version_id == ModelVersion.id)
            .join(Model, ModelVersion.model_id == Model.id)
            .where(Model.name == query.model)
        )
    with current_services().db.session() as session:
        jobs, next_cursor = paginate(session, statement, Job.id, limit=query.limit, cursor=query.cursor)
        return {"items": [job_to_dict(job) for job in jobs], "limit": query.limit, "next_cursor": next_cursor}


@api.operation("GET", "/jobs/<int:job_id>", summary="One job", tag="jobs", response=JobOut)
def get_job(job_id: int) -> Any:
    """One job with its state, progress and result; a queued job says when no worker serves its profile."""
    services = current_services()
    with services.db.session() as session:
        job = _job(session, job_id)
        body = job_to_dict(job) | {"progress": job.progress, "has_log": job.log_artifact_key is not None}
        if job.state == JobState.QUEUED:
            body["waiting_for_worker"] = next(iter(unserved_profile_warnings(services, [job.profile])), None)
        return body


@api.operation("GET", "/jobs/<int:job_id>/results", summary="A job's engine, benchmarks, accuracy, verdicts",
               tag="results", response=JobResultsOut)  # fmt: skip
def get_job_results(job_id: int) -> Any:
    """A build job's engine, benchmark rows (with every sample), accuracy per output and verdicts."""
    with current_services().db.session() as session:
        return job_results_to_dict(session, _job(session, job_id))


@api.operation("GET", "/jobs/<int:job_id>/log", summary="A job's log", tag="jobs",
               response=BinaryResponse("text/plain", "The log (a snapshot while the job runs)."))  # fmt: skip
def get_job_log(job_id: int) -> Any:
    """The job's log as text (a snapshot while it runs, the whole log once it finished)."""
    services = current_services()
    with services.db.session() as session:
        key = _job(session, job_id).log_artifact_key
    if key is None:
        raise ApiError(404, f"job {job_id} has no log yet")
    return Response(services.store.read_bytes(key), mimetype="text/plain")


@api.operation("POST", "/jobs/<int:job_id>/cancel", summary="Cancel a job", tag="jobs", response=JobOut,
               errors=(409,))  # fmt: skip
def cancel_job(job_id: int) -> Any:
    """Cancel a job: a queued one never runs; a running one stops at its next check, or is
    interrupted 5 s after its worker sees the cancel (409 when final)."""
    with current_services().db.session() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        if job.state.is_final:
            raise ApiError(409, f"job {job_id} is already {job.state.value}")
        job.cancel()
        session.flush()
        return job_to_dict(job)


def _job(session: Any, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return job
