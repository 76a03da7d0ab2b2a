"""The farm's data model (DESIGN §4) as SQLAlchemy 2.0 typed models.

One table per thing the farm keeps: models and their versions, datasets, submissions, jobs (the
state machine lives here, not in the broker), engines, benchmark and accuracy results, verdicts,
workers, the shared timing cache and API tokens. Times are timezone-aware UTC on every database.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256_LENGTH = 64
ARTIFACT_KEY_LENGTH = 128


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as naive UTC
    and made aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every farm table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        str: String(255),
    }


class JobState(enum.StrEnum):
    """Where a job is; the last three are final."""

    QUEUED = "queued"
    BUILDING = "building"
    BENCHMARKING = "benchmarking"
    CHECKING = "checking"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for succeeded, failed and cancelled: nothing changes a final job."""
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
RUNNING_JOB_STATES = frozenset({JobState.BUILDING, JobState.BENCHMARKING, JobState.CHECKING})


class JobKind(enum.StrEnum):
    """What a job does: ``inspect`` computes a model's facts; ``build`` builds, benchmarks and checks."""

    INSPECT = "inspect"
    BUILD = "build"


def _enum_column(enum_class: type[enum.Enum]) -> Enum:
    # stored as plain VARCHAR holding the enum's value: adding a state needs no schema change
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Model(Base):
    """A named model (e.g. ``resnet50``) whose versions are uploaded over time."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.number", cascade="all, delete-orphan"
    )


class ModelVersion(Base):
    """One uploaded ONNX file of a model, stored by its sha256; the same bytes are one version."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "sha256"),
        UniqueConstraint("model_id", "number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), index=True)
    artifact_key: Mapped[str] = mapped_column(String(ARTIFACT_KEY_LENGTH))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255), default="model.onnx")
    git_commit: Mapped[str | None] = mapped_column(String(64))
    branch: Mapped[str | None] = mapped_column(String(255))
    ci_url: Mapped[str | None] = mapped_column(String(1024))
    facts: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(back_populates="versions")
    jobs: Mapped[list[Job]] = relationship(back_populates="model_version", order_by="Job.id")

    @property
    def display_label(self) -> str:
        """The user's label, or ``v<number>``."""
        return self.label or f"v{self.number}"


class Dataset(Base):
    """Validation or calibration data (an ``.npz``), stored by sha256."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), index=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), index=True)
    artifact_key: Mapped[str] = mapped_column(String(ARTIFACT_KEY_LENGTH))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16), default="npz")
    arrays: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> {"shape", "dtype"}
    has_labels: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Submission(Base):
    """A request to build one model version for several profiles × precisions × batch sizes."""

    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    # INT8 calibration data when it differs from the validation data (dataset_id)
    calibration_dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    # sha256 of the normalized request: the same Idempotency-Key with another body is a conflict
    request_sha256: Mapped[str | None] = mapped_column(String(SHA256_LENGTH))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model_version: Mapped[ModelVersion] = relationship()
    jobs: Mapped[list[Job]] = relationship(back_populates="submission", order_by="Job.id")


class Job(Base):
    """One unit of work on one profile; its state machine is the source of truth, not the broker."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_profile", "state", "profile"),
        Index("ix_jobs_baseline_lookup", "profile", "precision", "batch_size", "state"),
        # a submission fans out into one job per (profile, precision, batch): never twice
        UniqueConstraint("submission_id", "profile", "precision", "batch_size"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum_column(JobKind), default=JobKind.BUILD)
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    profile: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str | None] = mapped_column(String(16))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(_enum_column(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_name: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    log_artifact_key: Mapped[str | None] = mapped_column(String(ARTIFACT_KEY_LENGTH))
    # {"step": "build", "done": 3, "total": 12, "detail": "...", "steps": [...]} while it runs
    progress: Mapped[dict[str, Any] | None] = mapped_column()
    # when the job's message was last sent to the broker (the reconciler re-sends lost ones)
    enqueued_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    submission: Mapped[Submission | None] = relationship(back_populates="jobs")
    model_version: Mapped[ModelVersion] = relationship(back_populates="jobs")
    engine: Mapped[Engine | None] = relationship(back_populates="job", uselist=False)

    @property
    def queue(self) -> str:
        """The Celery queue this job is sent to."""
        return queue_for_profile(self.profile)

    def cancel(self, now: datetime | None = None) -> None:
        """Mark the job cancelled: a queued one is never claimed; a running one's lease thread
        sees the state at its next renewal and stops the run (the caller checks it is not final)."""
        self.state = JobState.CANCELLED
        self.finished_at = now or utcnow()
        self.lease_expires_at = None


def queue_for_profile(profile: str) -> str:
    """The Celery queue of a profile: ``profile.<name>``."""
    return f"profile.{profile}"


class Engine(Base):
    """A built engine file, stored by sha256, with its fingerprint and build report."""

    __tablename__ = "engines"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), index=True)
    artifact_key: Mapped[str] = mapped_column(String(ARTIFACT_KEY_LENGTH))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    profile: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16))
    compiler_version: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    build_report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    build_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="engine")


class BenchmarkResult(Base):
    """Latency samples and their statistics for one engine at one batch size on one host."""

    __tablename__ = "benchmark_results"
    __table_args__ = (UniqueConstraint("job_id", "role", "batch_size"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="candidate")  # candidate | baseline
    batch_size: Mapped[int] = mapped_column(Integer)
    samples_ms: Mapped[list[Any]] = mapped_column(default=list)
    count: Mapped[int] = mapped_column(Integer)
    min_ms: Mapped[float] = mapped_column(Float)
    mean_ms: Mapped[float] = mapped_column(Float)
    median_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    p95_ms: Mapped[float] = mapped_column(Float)
    p99_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)
    throughput_per_s: Mapped[float] = mapped_column(Float)
    cv: Mapped[float] = mapped_column(Float)
    host_fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AccuracyResult(Base):
    """How far one output of an engine is from the reference runtime on the validation data."""

    __tablename__ = "accuracy_results"
    __table_args__ = (UniqueConstraint("job_id", "output_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    output_name: Mapped[str] = mapped_column(String(255))
    max_abs_error: Mapped[float] = mapped_column(Float)
    rel_l2_error: Mapped[float] = mapped_column(Float)
    cosine: Mapped[float] = mapped_column(Float)
    snr_db: Mapped[float] = mapped_column(Float)
    top1_agreement: Mapped[float | None] = mapped_column(Float)
    task_accuracy: Mapped[float | None] = mapped_column(Float)
    budget: Mapped[dict[str, Any]] = mapped_column(default=dict)
    passed: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Verdict(Base):
    """The regression decision of one job against its baseline, with the numbers behind it."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("job_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    baseline_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))  # latency | accuracy | overall
    outcome: Mapped[str] = mapped_column(String(16))  # improved | unchanged | regressed | failed | no_baseline
    metric: Mapped[str] = mapped_column(String(64))
    change_pct: Mapped[float | None] = mapped_column(Float)
    p_value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker process as last seen through its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    profiles: Mapped[list[Any]] = mapped_column(default=list)
    queues: Mapped[list[Any]] = mapped_column(default=list)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="online")  # online | offline
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class TimingCacheEntry(Base):
    """One autotuner measurement shared by every worker of a profile."""

    __tablename__ = "timing_cache"
    __table_args__ = (UniqueConstraint("profile", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    profile: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512))
    value: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiToken(Base):
    """A bearer token; only its sha256 is stored, with a short prefix to recognise it."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(SHA256_LENGTH), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
