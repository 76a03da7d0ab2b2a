"""The farm's database: typed models, sessions and migrations."""

from farm.db.models import (
    AccuracyResult,
    ApiToken,
    Base,
    BenchmarkResult,
    Dataset,
    Engine,
    Job,
    JobKind,
    JobState,
    Model,
    ModelVersion,
    Submission,
    TimingCacheEntry,
    Verdict,
    Worker,
    queue_for_profile,
    utcnow,
)
from farm.db.session import Database

__all__ = [
    "AccuracyResult",
    "ApiToken",
    "Base",
    "BenchmarkResult",
    "Database",
    "Dataset",
    "Engine",
    "Job",
    "JobKind",
    "JobState",
    "Model",
    "ModelVersion",
    "Submission",
    "TimingCacheEntry",
    "Verdict",
    "Worker",
    "queue_for_profile",
    "utcnow",
]
