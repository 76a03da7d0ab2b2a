"""Submissions: create (idempotent with Idempotency-Key), list, get, results, cancel."""

from __future__ import annotations

from typing import Any

from flask import request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from farm.api.auth import current_principal
from farm.api.errors import ApiError
from farm.api.pagination import paginate
from farm.api.registry import IDEMPOTENCY_KEY, api
from farm.api.results import submission_results
from farm.api.schemas import (
    SubmissionIn,
    SubmissionListQuery,
    SubmissionOut,
    SubmissionPage,
    SubmissionResultsOut,
)
from farm.api.submissions import CreateSubmissionCommand, SubmissionRequest, submission_to_dict
from farm.app import current_services
from farm.db import Job, Model, ModelVersion, Submission, utcnow


@api.operation("POST", "/submissions", summary="Submit a build", tag="submissions", body=SubmissionIn,
               response=SubmissionOut, status=201, extra_responses={200: SubmissionOut}, errors=(409,),
               headers=[IDEMPOTENCY_KEY])  # fmt: skip
def create_submission(body: SubmissionIn) -> Any:
    """Fan a model version out into one job per profile × precision × batch size, each on its profile's queue.

    An unknown profile is a 400 naming it; a profile no live worker serves is accepted (its jobs
    wait) and named in ``warnings``. With an ``Idempotency-Key`` header (or body field), a retry
    returns the first submission (200) and the same key with another request is a 409.
    """
    header_key = request.headers.get("Idempotency-Key")
    if header_key is not None and (not header_key.strip() or len(header_key) > 128 or "\x00" in header_key):
        raise ApiError(400, "Idempotency-Key must be 1-128 characters", field="Idempotency-Key")
    if header_key and body.idempotency_key and header_key.strip() != body.idempotency_key:
        raise ApiError(
            400, "the Idempotency-Key header and the body's idempotency_key differ", field="idempotency_key"
        )
    services = current_services()
    command = CreateSubmissionCommand(
        services,
        SubmissionRequest(
            model=body.model,
            version=body.version,
            profiles=body.profiles,
            precisions=list(body.precisions),
            batch_sizes=body.batch_sizes,
            dataset_id=body.dataset_id,
            calibration_dataset_id=body.calibration_dataset_id,
            options=body.options.model_dump(exclude_none=True),
            idempotency_key=(header_key or "").strip() or body.idempotency_key,
        ),
        token_id=current_principal().token_id,
    )
    command.validate()
    result = command.run()
    with services.db.session() as session:
        submission = session.get(Submission, result.submission_id)
        assert submission is not None
        return submission_to_dict(submission) | {"warnings": result.warnings}, 201 if result.created else 200


@api.operation("GET", "/submissions", summary="List submissions", tag="submissions", query=SubmissionListQuery,
               response=SubmissionPage)  # fmt: skip
def list_submissions(query: SubmissionListQuery) -> Any:
    """Submissions, newest first, optionally of one model; cursor pagination."""
    statement = select(Submission).options(
        selectinload(Submission.jobs), selectinload(Submission.model_version).selectinload(ModelVersion.model)
    )
    if query.model:
        statement = (
            statement.join(ModelVersion, Submission.model_version_id == ModelVersion.id)
            .join(Model, ModelVersion.model_id == Model.id)
            .where(Model.name == query.model)
        )
    with current_services().db.session() as session:
        items, next_cursor = paginate(
            session, statement, Submission.id, limit=query.limit, cursor=query.cursor
        )
        return {
            "items": [submission_to_dict(s) for s in items],
            "limit": query.limit,
            "next_cursor": next_cursor,
        }


@api.operation("GET", "/submissions/<int:submission_id>", summary="One submission", tag="submissions",
               response=SubmissionOut)  # fmt: skip
def get_submission(submission_id: int) -> Any:
    """One submission with its jobs' states and verdicts."""
    with current_services().db.session() as session:
        return submission_to_dict(_submission(session, submission_id))


@api.operation("GET", "/submissions/<int:submission_id>/results", summary="A submission's results table",
               tag="results", response=SubmissionResultsOut)  # fmt: skip
def get_submission_results(submission_id: int) -> Any:
    """Per job: latency median/p99, change vs baseline, worst cosine, verdict, engine; and the overall outcome."""
    with current_services().db.session() as session:
        return submission_results(session, _submission(session, submission_id))


@api.operation("POST", "/submissions/<int:submission_id>/cancel", summary="Cancel a submission's jobs",
               tag="submissions", response=SubmissionOut)  # fmt: skip
def cancel_submission(submission_id: int) -> Any:
    """Cancel every job of the submission that has not finished (finished jobs keep their results)."""
    with current_services().db.session() as session:
        submission = _submission(session, submission_id)
        jobs = session.execute(
            select(Job).where(Job.submission_id == submission.id).with_for_update()
        ).scalars()
        now = utcnow()
        for job in jobs:
            if not job.state.is_final:
                job.cancel(now)
        session.flush()
        session.refresh(submission)
        return submission_to_dict(submission)


def _submission(session: Any, submission_id: int) -> Submission:
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise ApiError(404, f"no submission {submission_id}")
    return submission
