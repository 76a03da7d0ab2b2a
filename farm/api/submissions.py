"""Submissions: one model version × profiles × precisions × batch sizes, fanned out into build jobs.

:class:`CreateSubmissionCommand` is the one way to create a submission (the API view calls it; so
can a script or a test with the farm's services)::

    command = CreateSubmissionCommand(services, SubmissionRequest(
        model="resnet50", version="latest", profiles=["cpu", "nvidia-h200"],
        precisions=["fp32", "fp16", "int8"], batch_sizes=[1, 8],
        options={"latency_threshold_pct": 5, "baseline": {"branch": "main"}},
    ))
    command.validate()           # ApiError(400/404) naming the bad field
    result = command.run()       # Submission row + one queued Job per combination, each enqueued

Each job goes to the queue ``profile.<name>`` of its profile. A profile that no live worker served
recently is accepted (the jobs wait for one) and named in ``warnings``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from farm.api.errors import ApiError
from farm.app import FarmServices
from farm.db import Dataset, Job, JobKind, JobState, ModelVersion, Submission, Worker, utcnow
from farm.profiles import UnknownProfileError, get_profile

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "best")
MAX_BATCH_SIZE = 4096
MAX_JOBS_PER_SUBMISSION = 256


@dataclass
class SubmissionRequest:
    """What to build: a model version (number, label, or ``latest``) and the combinations."""

    model: str
    profiles: Sequence[str]
    precisions: Sequence[str] = ("fp32",)
    batch_sizes: Sequence[int] = (1,)
    version: str | int = "latest"
    dataset_id: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    calibration_dataset_id: int | None = None

    def fingerprint(self) -> str:
        """sha256 of the request's meaning: the same Idempotency-Key must come with the same request."""
        canonical = {
            "model": self.model,
            "version": str(self.version),
            "profiles": list(dict.fromkeys(self.profiles)),
            "precisions": list(dict.fromkeys(self.precisions)),
            "batch_sizes": list(dict.fromkeys(int(b) for b in self.batch_sizes)),
            "dataset_id": self.dataset_id,
            "calibration_dataset_id": self.calibration_dataset_id,
            "options": dict(self.options),
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class SubmissionResult:
    """The submission, its jobs, and warnings (e.g. a profile no worker serves right now)."""

    submission_id: int
    job_ids: list[int]
    created: bool
    warnings: list[str]


class CreateSubmissionCommand:
    """Validate a :class:`SubmissionRequest`, record the submission and its jobs, enqueue them."""

    def __init__(
        self, services: FarmServices, request: SubmissionRequest, *, token_id: int | None = None
    ) -> None:
        self.services = services
        self.request = request
        self.token_id = token_id
        self._version_id: int | None = None

    def _replay(self, existing: Submission, fingerprint: str) -> SubmissionResult:
        """The submission an earlier request with the same Idempotency-Key created; 409 if it asked otherwise."""
        if existing.request_sha256 is not None and existing.request_sha256 != fingerprint:
            raise ApiError(
                409,
                f"Idempotency-Key {existing.idempotency_key!r} was used for submission {existing.id} with a "
                "different request; use a new key for a new submission",
                submission_id=existing.id,
            )
        return SubmissionResult(existing.id, [job.id for job in existing.jobs], False, [])

    def validate(self) -> None:
        """Check profiles, precisions, batch sizes, options, the model version and the dataset."""
        request = self.request
        if not request.profiles:
            raise ApiError(400, "'profiles' must name at least one profile", field="profiles")
        for name in request.profiles:
            try:
                get_profile(name)
            except UnknownProfileError as exc:
                raise ApiError(400, str(exc), field="profiles", profile=name) from None
        for precision in request.precisions:
            if precision not in PRECISIONS:
                raise ApiError(
                    400,
                    f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}",
                    field="precisions",
                )
        if not request.precisions:
            raise ApiError(400, "'precisions' must name at least one precision", field="precisions")
        for batch in request.batch_sizes:
            if not 1 <= batch <= MAX_BATCH_SIZE:
                raise ApiError(
                    400, f"batch sizes must be 1-{MAX_BATCH_SIZE}, got {batch}", field="batch_sizes"
                )
        if not request.batch_sizes:
            raise ApiError(400, "'batch_sizes' must name at least one batch size", field="batch_sizes")
        combinations = (
            len(set(request.profiles)) * len(set(request.precisions)) * len(set(request.batch_sizes))
        )
        if combinations > MAX_JOBS_PER_SUBMISSION:
            raise ApiError(400, f"{combinations} jobs is more than the limit of {MAX_JOBS_PER_SUBMISSION}")
        self._validate_options(request.options)
        with self.services.db.session() as session:
            version = self._find_version(session)
            self._check_dataset(session, version, request.dataset_id, "dataset_id")
            self._check_dataset(session, version, request.calibration_dataset_id, "calibration_dataset_id")
            self._version_id = version.id

    def _validate_options(self, options: Mapping[str, Any]) -> None:
        from pydantic import ValidationError

        from farm.api.schemas import SubmissionOptions
        from farm.compiler.precision.budget import AccuracyBudget, BudgetError

        if not isinstance(options, Mapping):
            raise ApiError(400, "'options' must be an object", field="options")
        try:
            SubmissionOptions.model_validate(dict(options))
            for value in dict(options.get("accuracy_budgets") or {}).values():
                for text in [value] if isinstance(value, str) else list(value):
                    AccuracyBudget.parse(text)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            location = ".".join(["options", *(str(part) for part in error["loc"])])
            raise ApiError(400, f"invalid options: {location}: {error['msg']}", field=location) from None
        except (ValueError, TypeError, BudgetError) as exc:
            raise ApiError(400, f"invalid options: {exc}", field="options") from None

    def _find_version(self, session: Any) -> ModelVersion:
        from farm.api.datasets import find_version

        return find_version(session, self.request.model, self.request.version)

    def _check_dataset(
        self, session: Any, version: ModelVersion, dataset_id: int | None, field_name: str
    ) -> None:
        from farm.api.datasets import check_against_inputs, model_inputs

        if dataset_id is None:
            return
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise ApiError(404, f"no dataset {dataset_id}", field=field_name)
        check_against_inputs(dataset.arrays, model_inputs(self.services, version))

    def run(self) -> SubmissionResult:
        """Record the submission and its jobs, then send each job to its profile's queue."""
        if self._version_id is None:
            self.validate()
        request = self.request
        max_attempts = self.services.settings.max_attempts
        fingerprint = request.fingerprint()
        try:
            with self.services.db.session() as session:
                if request.idempotency_key:
                    existing = session.execute(
                        select(Submission).where(Submission.idempotency_key == request.idempotency_key)
                    ).scalar_one_or_none()
                    if existing is not None:
                        return self._replay(existing, fingerprint)
                submission = Submission(
                    model_version_id=self._version_id,
                    dataset_id=request.dataset_id,
                    calibration_dataset_id=request.calibration_dataset_id,
                    options=dict(request.options),
                    idempotency_key=request.idempotency_key,
                    request_sha256=fingerprint,
                    token_id=self.token_id,
                )
                session.add(submission)
                for profile in dict.fromkeys(request.profiles):
                    for precision in dict.fromkeys(request.precisions):
                        for batch in dict.fromkeys(request.batch_sizes):
                            session.add(
                                Job(
                                    kind=JobKind.BUILD, submission=submission, model_version_id=self._version_id,
                                    profile=profile, precision=precision, batch_size=int(batch),
                                    state=JobState.QUEUED, max_attempts=max_attempts,
                                )
                            )  # fmt: skip
                session.flush()
                submission_id = submission.id
                job_ids = [job.id for job in submission.jobs]
        except IntegrityError:
            # the same idempotency key raced us: return the submission that won
            with self.services.db.session() as session:
                existing = session.execute(
                    select(Submission).where(Submission.idempotency_key == request.idempotency_key)
                ).scalar_one()
                return self._replay(existing, fingerprint)
        from farm.api.commands import enqueue_job

        for job_id in job_ids:
            enqueue_job(self.services, job_id)
        return SubmissionResult(
            submission_id, job_ids, True, unserved_profile_warnings(self.services, request.profiles)
        )


def unserved_profile_warnings(services: FarmServices, profiles: Sequence[str]) -> list[str]:
    """A warning for each profile no live worker heartbeat for recently."""
    served = served_profiles(services)
    seconds = services.settings.worker_seen_seconds
    return [
        f"no worker serving profile {name!r} has been seen in the last {seconds} s; its jobs wait for one"
        for name in dict.fromkeys(profiles)
        if name not in served
    ]


def served_profiles(services: FarmServices) -> set[str]:
    """Profiles with at least one online worker whose heartbeat is recent."""
    horizon = utcnow() - timedelta(seconds=services.settings.worker_seen_seconds)
    with services.db.session() as session:
        rows = session.execute(
            select(Worker.profiles).where(Worker.state == "online", Worker.heartbeat_at >= horizon)
        ).scalars()
        return {profile for profiles in rows for profile in profiles}


def submission_to_dict(submission: Submission) -> dict[str, Any]:
    """A submission with its options and the ids and states of its jobs."""
    version = submission.model_version
    return {
        "id": submission.id,
        "model": version.model.name,
        "model_version": {"id": version.id, "number": version.number, "label": version.display_label},
        "dataset_id": submission.dataset_id,
        "calibration_dataset_id": submission.calibration_dataset_id,
        "options": submission.options,
        "created_at": submission.created_at.isoformat(),
        "state": submission_state(submission),
        "jobs": [
            {
                "id": job.id,
                "profile": job.profile,
                "precision": job.precision,
                "batch_size": job.batch_size,
                "state": job.state.value,
                "verdict": (job.result or {}).get("verdict", {}).get("outcome"),
                "progress": _progress_summary(job.progress),
            }
            for job in submission.jobs
        ],
    }


def _progress_summary(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """The current step of a job's progress (without the per-step history)."""
    if not progress:
        return None
    return {key: progress[key] for key in ("step", "done", "total", "detail") if key in progress}


def submission_state(submission: Submission) -> str:
    """``finished`` when every job is final, ``queued`` when none started, else ``running``."""
    states = [job.state for job in submission.jobs]
    if all(state.is_final for state in states):
        return "finished"
    if all(state == JobState.QUEUED for state in states):
        return "queued"
    return "running"


def job_results_to_dict(session: Any, job: Job) -> dict[str, Any]:
    """Everything a build job produced: engine, benchmark rows (with samples), accuracy per output, verdicts."""
    from farm.api.results import accuracy_to_dict, benchmark_to_dict
    from farm.db import AccuracyResult, BenchmarkResult, Verdict

    engine = job.engine
    benchmarks = session.execute(
        select(BenchmarkResult).where(BenchmarkResult.job_id == job.id).order_by(BenchmarkResult.id)
    ).scalars()
    accuracy = session.execute(
        select(AccuracyResult).where(AccuracyResult.job_id == job.id).order_by(AccuracyResult.id)
    ).scalars()
    verdicts = session.execute(select(Verdict).where(Verdict.job_id == job.id).order_by(Verdict.id)).scalars()
    return {
        "job_id": job.id,
        "state": job.state.value,
        "engine": None
        if engine is None
        else {
            "id": engine.id,
            "sha256": engine.sha256,
            "size_bytes": engine.size_bytes,
            "profile": engine.profile,
            "precision": engine.precision,
            "compiler_version": engine.compiler_version,
            "build_seconds": engine.build_seconds,
            "timing_cache": engine.build_report.get("timing_cache"),
            "fingerprint": engine.fingerprint,
        },
        "benchmarks": [benchmark_to_dict(row, samples=True) for row in benchmarks],
        "accuracy": [accuracy_to_dict(row) for row in accuracy],
        "verdicts": [
            {
                "kind": row.kind,
                "outcome": row.outcome,
                "baseline_job_id": row.baseline_job_id,
                "metric": row.metric,
                "change_pct": row.change_pct,
                "p_value": row.p_value,
                "threshold": row.threshold,
                "details": row.details,
            }
            for row in verdicts
        ],  # fmt: skip
    }
