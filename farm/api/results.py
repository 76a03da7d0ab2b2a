"""Results tables and comparisons, built from the rows the worker pipeline wrote.

A submission's outcome, which ``farm submit --wait`` turns into its exit code:
``failed`` when a job failed or was cancelled or its verdict is ``failed`` (e.g. a missed accuracy
budget), else ``regressed`` when any verdict is ``regressed``, else ``passed`` once every job
finished (``pending`` before).
"""

from __future__ import annotations

from typing import Any

from flask import url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.api.schemas import iso
from farm.db import AccuracyResult, BenchmarkResult, Job, JobKind, JobState, Submission, Verdict
from farm.db import Engine as EngineRow

FAILED_VERDICTS = {"failed"}
REGRESSED_VERDICTS = {"regressed"}


def engine_to_dict(engine: EngineRow, *, with_report: bool = False) -> dict[str, Any]:
    """An engine row with its download URL."""
    data: dict[str, Any] = {
        "id": engine.id,
        "job_id": engine.job_id,
        "sha256": engine.sha256,
        "size_bytes": engine.size_bytes,
        "profile": engine.profile,
        "precision": engine.precision,
        "compiler_version": engine.compiler_version,
        "build_seconds": engine.build_seconds,
        "fingerprint": engine.fingerprint,
        "created_at": iso(engine.created_at),
        "download_url": url_for("api.download_engine", engine_id=engine.id, _external=True),
    }
    if with_report:
        data["build_report"] = engine.build_report
    return data


def benchmark_to_dict(row: BenchmarkResult, *, samples: bool = False) -> dict[str, Any]:
    """A benchmark row (samples only when asked: they can be long)."""
    data = {
        key: getattr(row, key)
        for key in ("role", "engine_id", "batch_size", "count", "min_ms", "mean_ms", "median_ms", "p90_ms",
                    "p95_ms", "p99_ms", "max_ms", "throughput_per_s", "cv")
    }  # fmt: skip
    if samples:
        data["samples_ms"] = row.samples_ms
        data["host"] = row.host_fingerprint
    return data


def accuracy_to_dict(row: AccuracyResult) -> dict[str, Any]:
    """An accuracy row."""
    return {
        "output": row.output_name,
        "max_abs_error": _finite(row.max_abs_error),
        "rel_l2_error": _finite(row.rel_l2_error),
        "cosine": _finite(row.cosine),
        "snr_db": _finite(row.snr_db),
        "top1_agreement": row.top1_agreement,
        "budget": row.budget,
        "passed": row.passed,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and value == value and abs(value) != float("inf") else None


def _verdicts(session: Session, job_ids: list[int]) -> dict[int, dict[str, Verdict]]:
    found: dict[int, dict[str, Verdict]] = {}
    if job_ids:
        for row in session.execute(select(Verdict).where(Verdict.job_id.in_(job_ids))).scalars():
            found.setdefault(row.job_id, {})[row.kind] = row
    return found


def result_row(session: Session, job: Job, verdicts: dict[str, Verdict]) -> dict[str, Any]:
    """One line of the results table for ``job``."""
    benchmarks = {
        row.role: row
        for row in session.execute(select(BenchmarkResult).where(BenchmarkResult.job_id == job.id)).scalars()
    }
    cosines = [
        row
        for row in session.execute(select(AccuracyResult).where(AccuracyResult.job_id == job.id)).scalars()
    ]
    candidate, baseline = benchmarks.get("candidate"), benchmarks.get("baseline")
    latency, overall = verdicts.get("latency"), verdicts.get("overall")
    finite_cosines = [value for row in cosines if (value := _finite(row.cosine)) is not None]
    worst = min(finite_cosines) if finite_cosines else None
    outcome = overall.outcome if overall else None
    if outcome is None and job.state in (JobState.FAILED, JobState.CANCELLED):
        outcome = "failed"
    return {
        "job_id": job.id,
        "profile": job.profile,
        "precision": job.precision,
        "batch_size": job.batch_size,
        "state": job.state.value,
        "error": job.error,
        "median_ms": candidate.median_ms if candidate else None,
        "p99_ms": candidate.p99_ms if candidate else None,
        "throughput_per_s": candidate.throughput_per_s if candidate else None,
        "baseline_median_ms": baseline.median_ms if baseline else None,
        "change_pct": latency.change_pct if latency else None,
        "baseline_job_id": overall.baseline_job_id if overall else None,
        "worst_cosine": worst,
        "accuracy_passed": all(row.passed for row in cosines) if cosines else None,
        "verdict": outcome,
        "engine": engine_to_dict(job.engine) if job.engine else None,
    }


def submission_results(session: Session, submission: Submission) -> dict[str, Any]:
    """The results table of a submission and its overall outcome (module docstring)."""
    jobs = list(submission.jobs)
    verdicts = _verdicts(session, [job.id for job in jobs])
    rows = [result_row(session, job, verdicts.get(job.id, {})) for job in jobs]
    finished = all(job.state.is_final for job in jobs)
    outcomes = {row["verdict"] for row in rows}
    if any(job.state in (JobState.FAILED, JobState.CANCELLED) for job in jobs) or outcomes & FAILED_VERDICTS:
        outcome = "failed"
    elif outcomes & REGRESSED_VERDICTS:
        outcome = "regressed"
    elif finished:
        outcome = "passed"
    else:
        outcome = "pending"
    version = submission.model_version
    return {
        "submission_id": submission.id,
        "model": version.model.name,
        "model_version": {"id": version.id, "number": version.number, "label": version.display_label},
        "finished": finished,
        "outcome": outcome,
        "rows": rows,
    }


def compare_side(session: Session, job: Job) -> dict[str, Any]:
    """One side of a two-engine comparison."""
    candidate = session.execute(
        select(BenchmarkResult).where(BenchmarkResult.job_id == job.id, BenchmarkResult.role == "candidate")
    ).scalar_one_or_none()
    accuracy = session.execute(
        select(AccuracyResult).where(AccuracyResult.job_id == job.id).order_by(AccuracyResult.id)
    ).scalars()
    overall = session.execute(
        select(Verdict).where(Verdict.job_id == job.id, Verdict.kind == "overall")
    ).scalar_one_or_none()
    version = job.model_version
    return {
        "job_id": job.id,
        "model": version.model.name,
        "version": {"id": version.id, "number": version.number, "label": version.display_label},
        "profile": job.profile,
        "precision": job.precision,
        "batch_size": job.batch_size,
        "engine": engine_to_dict(job.engine) if job.engine else None,
        "latency": benchmark_to_dict(candidate, samples=True) if candidate else None,
        "accuracy": [accuracy_to_dict(row) for row in accuracy],
        "verdict": overall.outcome if overall else None,
    }


def compare_jobs(session: Session, a: Job, b: Job) -> dict[str, Any]:
    """Two build jobs side by side; ratios are b / a (below 1: b is faster)."""
    side_a, side_b = compare_side(session, a), compare_side(session, b)
    lat_a, lat_b = side_a["latency"], side_b["latency"]

    def ratio(key: str) -> float | None:
        if lat_a and lat_b and lat_a[key] > 0:
            return float(lat_b[key] / lat_a[key])
        return None

    def worst(side: dict[str, Any]) -> float | None:
        values = [row["cosine"] for row in side["accuracy"] if row["cosine"] is not None]
        return min(values) if values else None

    cos_a, cos_b = worst(side_a), worst(side_b)
    same_host = None
    if lat_a and lat_b:
        same_host = (lat_a.get("host") or {}).get("hostname") == (lat_b.get("host") or {}).get("hostname")
    return {
        "a": side_a,
        "b": side_b,
        "median_ratio": ratio("median_ms"),
        "p99_ratio": ratio("p99_ms"),
        "cosine_delta": cos_b - cos_a if cos_a is not None and cos_b is not None else None,
        "same_host": same_host,
    }


def latest_succeeded_jobs(session: Session, version_id: int) -> dict[tuple[str, str | None, int | None], Job]:
    """The newest succeeded build job of a version per (profile, precision, batch)."""
    jobs = session.execute(
        select(Job)
        .where(Job.model_version_id == version_id, Job.kind == JobKind.BUILD, Job.state == JobState.SUCCEEDED)
        .order_by(Job.id)
    ).scalars()
    return {(job.profile, job.precision, job.batch_size): job for job in jobs}


def compare_versions(session: Session, version_a: Any, version_b: Any) -> list[dict[str, Any]]:
    """Rows of a two-version comparison: every combination either version has results for."""
    jobs_a = latest_succeeded_jobs(session, version_a.id)
    jobs_b = latest_succeeded_jobs(session, version_b.id)
    rows = []
    for key in sorted(set(jobs_a) | set(jobs_b), key=lambda k: (k[0], k[1] or "", k[2] or 0)):
        job_a, job_b = jobs_a.get(key), jobs_b.get(key)
        side_a = compare_side(session, job_a) if job_a else None
        side_b = compare_side(session, job_b) if job_b else None

        def median(side: dict[str, Any] | None) -> float | None:
            return side["latency"]["median_ms"] if side and side["latency"] else None

        def worst(side: dict[str, Any] | None) -> float | None:
            values = [row["cosine"] for row in (side or {}).get("accuracy", []) if row["cosine"] is not None]
            return min(values) if values else None

        med_a, med_b = median(side_a), median(side_b)
        rows.append(
            {
                "profile": key[0],
                "precision": key[1],
                "batch_size": key[2],
                "a_job_id": job_a.id if job_a else None,
                "b_job_id": job_b.id if job_b else None,
                "a_median_ms": med_a,
                "b_median_ms": med_b,
                "median_ratio": med_b / med_a if med_a and med_b else None,
                "a_worst_cosine": worst(side_a),
                "b_worst_cosine": worst(side_b),
            }
        )
    return rows
