"""JSON representations of the farm's records (shared by the API and the dashboard) and the API's schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.api.openapi import MAX_ID
from farm.db import Job, Model, ModelVersion, Worker


def iso(value: datetime | None) -> str | None:
    """A timestamp as ISO 8601 (UTC), or ``None``."""
    return value.isoformat() if value else None


def model_version_to_dict(version: ModelVersion, *, with_facts: bool = True) -> dict[str, Any]:
    """A model version with its storage details and, optionally, its facts."""
    data: dict[str, Any] = {
        "id": version.id,
        "model": version.model.name,
        "number": version.number,
        "label": version.display_label,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "filename": version.filename,
        "git_commit": version.git_commit,
        "branch": version.branch,
        "ci_url": version.ci_url,
        "created_at": iso(version.created_at),
    }
    if with_facts:
        data["facts"] = version.facts
    return data


def model_to_dict(model: Model, *, with_versions: bool = False) -> dict[str, Any]:
    """A model; with its versions (newest first) when asked."""
    data: dict[str, Any] = {
        "id": model.id,
        "name": model.name,
        "description": model.description,
        "created_at": iso(model.created_at),
        "version_count": len(model.versions),
    }
    if with_versions:
        data["versions"] = [model_version_to_dict(v, with_facts=False) for v in reversed(model.versions)]
    return data


def job_to_dict(job: Job) -> dict[str, Any]:
    """A job: state machine fields, its model version and its result (the facts, for inspect jobs)."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "state": job.state.value,
        "profile": job.profile,
        "queue": job.queue,
        "precision": job.precision,
        "batch_size": job.batch_size,
        "submission_id": job.submission_id,
        "model": job.model_version.model.name,
        "model_version": {
            "id": job.model_version.id,
            "label": job.model_version.display_label,
            "sha256": job.model_version.sha256,
        },
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "worker": job.worker_name,
        "error": job.error,
        "result": job.result,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "lease_expires_at": iso(job.lease_expires_at),
    }


def worker_to_dict(worker: Worker, *, alive: bool) -> dict[str, Any]:
    """A worker as last seen; ``alive`` says whether its heartbeat is recent."""
    return {
        "name": worker.name,
        "hostname": worker.hostname,
        "profiles": worker.profiles,
        "queues": worker.queues,
        "state": worker.state if alive or worker.state == "offline" else "lost",
        "alive": alive,
        "version": worker.version,
        "started_at": iso(worker.started_at),
        "heartbeat_at": iso(worker.heartbeat_at),
        "fingerprint": worker.fingerprint,
    }


# ---------------------------------------------------------------------------------------------
# Request and response models of the API (pydantic). They validate requests and, through
# farm.api.openapi, ARE the OpenAPI spec; views answer through the response models.
# ---------------------------------------------------------------------------------------------

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
ShortText = Annotated[str, Field(min_length=1, max_length=128)]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Precision = Literal["fp32", "fp16", "bf16", "int8", "best"]
Calibrator = Literal["minmax", "percentile", "entropy", "mse"]
JobStateName = Literal["queued", "building", "benchmarking", "checking", "succeeded", "failed", "cancelled"]


class RequestModel(BaseModel):
    """Base of request models: unknown fields are refused, NaN and infinity too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


class QueryModel(BaseModel):
    """Base of query-string models: unknown parameters are ignored (browsers add their own)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_strip_whitespace=True)


class ResponseModel(BaseModel):
    """Base of response models."""

    model_config = ConfigDict(from_attributes=True)


class OpenResponse(ResponseModel):
    """A response whose extra keys are part of the answer (host facts, profiles)."""

    model_config = ConfigDict(from_attributes=True, extra="allow")


class PageQuery(QueryModel):
    """Cursor pagination: pass ``next_cursor`` of one page as ``cursor`` to get the next."""

    limit: int = Field(50, ge=1, le=200, description="Items per page (1-200).")
    cursor: str | None = Field(None, max_length=64, description="The next_cursor of the previous page.")


class ModelListQuery(PageQuery):
    """Models, newest first."""


class JobListQuery(PageQuery):
    """Jobs, newest first, filtered."""

    state: JobStateName | None = None
    profile: str | None = Field(None, max_length=64)
    precision: Precision | None = None
    kind: Literal["inspect", "build"] | None = None
    model: str | None = Field(None, max_length=128, description="The model's name.")
    submission_id: Id | None = None


class SubmissionListQuery(PageQuery):
    """Submissions, newest first."""

    model: str | None = Field(None, max_length=128, description="The model's name.")


class ModelUploadForm(RequestModel):
    """Multipart fields next to ``file`` (an .onnx, or a .zip of the .onnx and its external-data files)."""

    name: ModelName | None = Field(None, description="Model name; default: the file name without .onnx/.zip.")
    label: str | None = Field(None, max_length=128, description="Version label, e.g. a release tag.")
    git_commit: str | None = Field(None, max_length=64)
    branch: str | None = Field(None, max_length=255)
    ci_url: str | None = Field(None, max_length=1024)


class DatasetUploadForm(RequestModel):
    """Multipart fields next to ``file`` (an .npz)."""

    name: ShortText = Field(description="A name for the dataset, e.g. 'imagenet-val-256'.")
    model: ModelName | None = Field(
        None, description="Check the arrays against this model's inputs (its latest inspected version)."
    )
    version: str | None = Field(
        None, max_length=128, description="The version to check against (default latest)."
    )


class BenchmarkOptions(RequestModel):
    """How long to benchmark (trtexec-like)."""

    warmup_ms: float | None = Field(None, ge=0, le=600_000)
    min_iterations: int | None = Field(None, ge=1, le=1_000_000)
    min_duration_s: float | None = Field(None, ge=0, le=3600)


class BaselineOption(RequestModel):
    """The baseline to judge against: a version (number or label) or the newest version on a branch."""

    version: Annotated[str, Field(max_length=128)] | Annotated[int, Field(ge=1, le=MAX_ID)] | None = None
    branch: str | None = Field(None, max_length=255)

    @model_validator(mode="after")
    def _one_of(self) -> BaselineOption:
        if (self.version is None) == (self.branch is None):
            raise ValueError("name exactly one of 'version' or 'branch'")
        return self


class SubmissionOptions(RequestModel):
    """Options of a submission; all optional."""

    latency_threshold_pct: float | None = Field(
        None, ge=0, le=1000, description="Regression threshold (default 5 %)."
    )
    accuracy_margin: float | None = Field(
        None, ge=0, le=1, description="Allowed cosine drop vs the baseline."
    )
    accuracy_budgets: dict[str, str | list[str]] | None = Field(
        None, description="Per precision, e.g. {'int8': 'cosine>=0.999'}."
    )
    baseline: BaselineOption | None = None
    benchmark: BenchmarkOptions | None = None
    tuning_level: int | None = Field(None, ge=0, le=3)
    input_shapes: dict[str, list[Annotated[int, Field(ge=1, le=1_000_000)]]] | None = None
    disabled_passes: list[Annotated[str, Field(max_length=64)]] | None = None
    disabled_tactics: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=64, description="Tactic name globs the tuner never chooses, e.g. 'cpu.conv.winograd*'."
    )
    in_engine_tuning: bool | None = Field(
        None, description="Time close calls between a layer's tactics inside the whole engine (default true)."
    )
    strict_precision: bool | None = None
    layer_precision: dict[str, Precision] | None = None
    calibrator: Calibrator | None = Field(None, description="INT8 calibration method (default entropy).")


class SubmissionIn(RequestModel):
    """Build a model version for profiles × precisions × batch sizes."""

    model: ModelName
    version: Annotated[str, Field(max_length=128)] | Annotated[int, Field(ge=1, le=MAX_ID)] = Field(
        "latest", description="Version number, label, or 'latest'."
    )
    profiles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=32)
    precisions: list[Precision] = Field(["fp32"], min_length=1, max_length=5)
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field([1], min_length=1, max_length=16)
    dataset_id: Id | None = Field(None, description="Validation data (and calibration data unless given).")
    calibration_dataset_id: Id | None = Field(None, description="INT8 calibration data.")
    options: SubmissionOptions = Field(default_factory=lambda: SubmissionOptions.model_validate({}))
    idempotency_key: str | None = Field(
        None, max_length=128, description="Same as the Idempotency-Key header."
    )


class TokenIn(RequestModel):
    """A new API token."""

    name: ShortText
    scopes: list[Literal["read", "submit", "admin"]] = Field(["submit"], min_length=1, max_length=3)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class CompareJobsQuery(QueryModel):
    """Two build jobs (their engines and results) side by side."""

    a: Id = Field(description="Job id of the first (reference) engine.")
    b: Id = Field(description="Job id of the second engine.")


class CompareVersionsQuery(QueryModel):
    """Two versions of one model side by side, per profile × precision × batch."""

    a: str = Field(min_length=1, max_length=128, description="First version: number, label or 'latest'.")
    b: str = Field(min_length=1, max_length=128, description="Second version: number, label or 'latest'.")


# responses


class VersionRef(ResponseModel):
    """A model version named by id, number and label."""

    id: int
    number: int | None = None
    label: str
    sha256: str | None = None


class ModelVersionOut(ResponseModel):
    """A model version."""

    id: int
    model: str
    number: int
    label: str
    sha256: str
    size_bytes: int
    filename: str
    git_commit: str | None
    branch: str | None
    ci_url: str | None
    created_at: str | None
    facts: dict[str, Any] | None = None


class ModelOut(ResponseModel):
    """A model."""

    id: int
    name: str
    description: str
    created_at: str | None
    version_count: int


class ModelDetailOut(ModelOut):
    """A model with its versions, newest first."""

    versions: list[ModelVersionOut]


class ModelPage(ResponseModel):
    """A page of models."""

    items: list[ModelOut]
    limit: int
    next_cursor: str | None


class JobOut(ResponseModel):
    """A job: its state machine, its model version and its result."""

    id: int
    kind: Literal["inspect", "build"]
    state: JobStateName
    profile: str
    queue: str
    precision: str | None
    batch_size: int | None
    submission_id: int | None
    model: str
    model_version: VersionRef
    attempts: int
    max_attempts: int
    worker: str | None
    error: str | None
    result: dict[str, Any] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    lease_expires_at: str | None
    progress: dict[str, Any] | None = None
    has_log: bool | None = None
    waiting_for_worker: str | None = None


class JobPage(ResponseModel):
    """A page of jobs."""

    items: list[JobOut]
    limit: int
    next_cursor: str | None


class UploadModelOut(ResponseModel):
    """An uploaded model version and its inspect job."""

    created: bool
    model_version: ModelVersionOut
    job: JobOut
    job_url: str
    dashboard_url: str


class DatasetOut(ResponseModel):
    """A stored dataset and its arrays' shapes and dtypes."""

    id: int
    name: str
    model: str | None
    sha256: str
    size_bytes: int
    format: str
    arrays: dict[str, dict[str, Any]]
    has_labels: bool
    created_at: str | None
    created: bool | None = None


class SubmissionJobOut(ResponseModel):
    """A job of a submission, in short."""

    id: int
    profile: str
    precision: str | None
    batch_size: int | None
    state: JobStateName
    verdict: str | None
    progress: dict[str, Any] | None = Field(None, description="Current step: step, done, total, detail.")


class SubmissionOut(ResponseModel):
    """A submission with its jobs."""

    id: int
    model: str
    model_version: VersionRef
    dataset_id: int | None
    calibration_dataset_id: int | None = None
    options: dict[str, Any]
    created_at: str
    state: Literal["queued", "running", "finished"]
    jobs: list[SubmissionJobOut]
    warnings: list[str] = []


class SubmissionPage(ResponseModel):
    """A page of submissions."""

    items: list[SubmissionOut]
    limit: int
    next_cursor: str | None


class EngineOut(ResponseModel):
    """A built engine: where it came from and how to download it."""

    id: int
    job_id: int
    sha256: str
    size_bytes: int
    profile: str
    precision: str
    compiler_version: str
    build_seconds: float | None
    fingerprint: dict[str, Any]
    created_at: str | None
    download_url: str
    build_report: dict[str, Any] | None = None


class BenchmarkOut(ResponseModel):
    """Latency statistics of one engine at one batch size (milliseconds)."""

    role: str
    engine_id: int
    batch_size: int
    count: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput_per_s: float
    cv: float
    samples_ms: list[float] | None = None
    host: dict[str, Any] | None = None


class AccuracyOut(ResponseModel):
    """Accuracy of one output against the reference runtime."""

    output: str
    max_abs_error: float | None
    rel_l2_error: float | None
    cosine: float | None
    snr_db: float | None
    top1_agreement: float | None
    budget: dict[str, Any]
    passed: bool


class VerdictOut(ResponseModel):
    """A regression decision with the numbers behind it."""

    kind: str
    outcome: str
    baseline_job_id: int | None
    metric: str
    change_pct: float | None
    p_value: float | None
    threshold: float | None
    details: dict[str, Any]


class JobEngineOut(ResponseModel):
    """The engine of a job, in short."""

    id: int
    sha256: str
    size_bytes: int
    profile: str
    precision: str
    compiler_version: str
    build_seconds: float | None
    timing_cache: Any = None
    fingerprint: dict[str, Any]


class JobResultsOut(ResponseModel):
    """Everything a build job produced."""

    job_id: int
    state: JobStateName
    engine: JobEngineOut | None
    benchmarks: list[BenchmarkOut]
    accuracy: list[AccuracyOut]
    verdicts: list[VerdictOut]


class ResultRow(ResponseModel):
    """One line of a submission's results table."""

    job_id: int
    profile: str
    precision: str | None
    batch_size: int | None
    state: JobStateName
    error: str | None
    median_ms: float | None
    p99_ms: float | None
    throughput_per_s: float | None
    baseline_median_ms: float | None
    change_pct: float | None
    baseline_job_id: int | None
    worst_cosine: float | None
    accuracy_passed: bool | None
    verdict: str | None
    engine: EngineOut | None


class SubmissionResultsOut(ResponseModel):
    """A submission's results, one row per job, and the overall outcome a CI job acts on."""

    submission_id: int
    model: str
    model_version: VersionRef
    finished: bool
    outcome: Literal["pending", "passed", "regressed", "failed"]
    rows: list[ResultRow]


class CompareSide(ResponseModel):
    """One side of a comparison."""

    job_id: int
    model: str
    version: VersionRef
    profile: str
    precision: str | None
    batch_size: int | None
    engine: EngineOut | None
    latency: BenchmarkOut | None
    accuracy: list[AccuracyOut]
    verdict: str | None


class CompareJobsOut(ResponseModel):
    """Two engines side by side; ratios are b / a."""

    a: CompareSide
    b: CompareSide
    median_ratio: float | None
    p99_ratio: float | None
    cosine_delta: float | None
    same_host: bool | None


class VersionCompareRow(ResponseModel):
    """One profile × precision × batch of a version comparison (latest succeeded job of each)."""

    profile: str
    precision: str | None
    batch_size: int | None
    a_job_id: int | None
    b_job_id: int | None
    a_median_ms: float | None
    b_median_ms: float | None
    median_ratio: float | None
    a_worst_cosine: float | None
    b_worst_cosine: float | None


class CompareVersionsOut(ResponseModel):
    """Two versions of a model side by side; ratios are b / a."""

    model: str
    a: VersionRef
    b: VersionRef
    rows: list[VersionCompareRow]


class ProfileOut(OpenResponse):
    """A hardware profile and whether a live worker serves it."""

    name: str
    description: str
    backend: str
    precisions: list[str]
    queue: str
    served: bool


class ProfileList(ResponseModel):
    """Every hardware profile."""

    items: list[ProfileOut]


class WorkerOut(ResponseModel):
    """A worker as last seen."""

    name: str
    hostname: str
    profiles: list[str]
    queues: list[str]
    state: str
    alive: bool
    version: str
    started_at: str | None
    heartbeat_at: str | None
    fingerprint: dict[str, Any]


class WorkerList(ResponseModel):
    """Every worker seen."""

    items: list[WorkerOut]


class TokenOut(ResponseModel):
    """An API token (never the token itself)."""

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: str | None
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None


class TokenCreatedOut(TokenOut):
    """A new token; ``token`` is shown this once."""

    token: str


class TokenList(ResponseModel):
    """Every token."""

    items: list[TokenOut]


class HealthOut(OpenResponse):
    """Health of the farm's parts."""

    ok: bool
    status: str
    profiles_served: list[str]
