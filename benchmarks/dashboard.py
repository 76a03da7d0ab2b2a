"""Dashboard load benchmark: server time of every page with 10,000 stored results.

``python -m benchmarks.dashboard`` (also a section of ``make bench``). One small build job runs
through the real worker pipeline first; its engine build report, latency samples, accuracy rows
and verdicts are the templates of the load rows. Then 10,000 build jobs (models × versions ×
profiles × precisions), each with an engine, a candidate benchmark (a baseline benchmark from the
second version on), accuracy and verdict rows, are bulk-inserted — realistic rows for this load
test only; the dashboard's tests use real pipeline results. Each page is then requested in-process
(Flask test client: routing, queries, rendering; no network) and timed.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import numpy as np
from sqlalchemy import func, insert, select

from farm.db import (
    AccuracyResult,
    BenchmarkResult,
    Engine,
    Job,
    JobKind,
    JobState,
    Model,
    ModelVersion,
    Submission,
    Verdict,
    utcnow,
)

BUDGET_MS = 300.0
PROFILES = ("cpu", "nvidia-h200")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "best")
SAMPLES_PER_ROW = 500  # per benchmark row (the pipeline keeps every run; small models make thousands)


@dataclass
class PageTiming:
    """Server time of one page over repeated requests."""

    page: str
    path: str
    median_ms: float
    p95_ms: float
    max_ms: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        """The timing as JSON."""
        return dict(self.__dict__)


def template_results(app: Any) -> dict[str, Any]:
    """Run one small build job through the real pipeline and return its rows as templates."""
    from farm.api.commands import UploadModelCommand, VersionMetadata
    from farm.api.submissions import CreateSubmissionCommand, SubmissionRequest
    from farm.worker.pipeline import BuildJobCommand
    from farm.zoo import build_model

    services = app.extensions["farm"]
    model = build_model("mlp", in_features=256, hidden=(512, 256))
    with app.app_context():
        upload = UploadModelCommand(
            services, name="template", stream=io.BytesIO(model.SerializeToString()), filename="mlp.onnx",
            metadata=VersionMetadata(),
        )  # fmt: skip
        upload.validate()
        upload.run()
        submission = CreateSubmissionCommand(
            services,
            SubmissionRequest(model="template", profiles=["cpu"], precisions=["fp32"], batch_sizes=[1],
                              options={"benchmark": {"warmup_ms": 50, "min_iterations": 200, "min_duration_s": 0.5}}),
        )  # fmt: skip
        submission.validate()
        job_id = submission.run().job_ids[0]
    BuildJobCommand(
        job_id, db=services.db, store=services.store, worker_name="bench", lease_seconds=300
    ).run()
    with services.db.session() as session:
        engine = session.execute(select(Engine).where(Engine.job_id == job_id)).scalar_one()
        bench = session.execute(select(BenchmarkResult).where(BenchmarkResult.job_id == job_id)).scalar_one()
        accuracy = (
            session.execute(select(AccuracyResult).where(AccuracyResult.job_id == job_id)).scalars().all()
        )
        job = session.get(Job, job_id)
        assert job is not None
        return {
            "job_id": job_id,
            "engine": {c: getattr(engine, c) for c in ("sha256", "artifact_key", "size_bytes", "compiler_version",
                                                        "fingerprint", "build_report", "build_seconds")},
            "samples": list(bench.samples_ms)[:SAMPLES_PER_ROW],
            "host": bench.host_fingerprint,
            "accuracy": [{"output_name": a.output_name, "budget": a.budget} for a in accuracy],
            "result": job.result,
            "log_key": job.log_artifact_key,
        }  # fmt: skip


def insert_load(db: Any, template: dict[str, Any], *, models: int, versions: int, seed: int = 0) -> int:
    """Bulk-insert ``models × versions × profiles × precisions`` succeeded build jobs with results;
    the number of jobs inserted."""
    rng = np.random.default_rng(seed)
    base_samples = np.asarray(template["samples"], dtype=np.float64)
    now = utcnow()
    jobs_inserted = 0
    with db.session() as session:
        next_job = (session.execute(select(func.max(Job.id))).scalar() or 0) + 1
        next_engine = (session.execute(select(func.max(Engine.id))).scalar() or 0) + 1
        for m in range(models):
            model_id = session.execute(
                insert(Model).returning(Model.id), [{"name": f"load-model-{m:03d}", "created_at": now}]
            ).scalar_one()
            scale = float(rng.lognormal(0.0, 1.0))
            versions_rows = [
                {"model_id": model_id, "number": v + 1, "label": None, "sha256": f"{m:04d}{v:04d}".ljust(64, "0"),
                 "artifact_key": template["engine"]["artifact_key"], "size_bytes": 100_000, "filename": "model.onnx",
                 "branch": "main", "git_commit": f"{rng.integers(1 << 40):010x}",
                 "created_at": now - timedelta(hours=versions - v)}
                for v in range(versions)
            ]  # fmt: skip
            version_ids = (
                session.execute(insert(ModelVersion).returning(ModelVersion.id), versions_rows)
                .scalars()
                .all()
            )
            submission_ids = session.execute(
                insert(Submission).returning(Submission.id),
                [{"model_version_id": vid, "options": {}, "created_at": now - timedelta(hours=versions - i)}
                 for i, vid in enumerate(version_ids)],
            ).scalars().all()  # fmt: skip
            jobs, engines, benches, accuracies, verdicts = [], [], [], [], []
            previous: dict[tuple[str, str], tuple[int, float, int]] = {}  # engine, median, job
            for v, (version_id, submission_id) in enumerate(zip(version_ids, submission_ids, strict=True)):
                drift = float(rng.normal(1.0, 0.03)) * (1.25 if rng.random() < 0.05 else 1.0)
                for profile in PROFILES:
                    for p_index, precision in enumerate(PRECISIONS):
                        job_id, engine_id = next_job, next_engine
                        next_job += 1
                        next_engine += 1
                        finished = now - timedelta(hours=versions - v, minutes=-p_index)
                        failed = rng.random() < 0.01
                        jobs.append({
                            "id": job_id, "kind": JobKind.BUILD, "submission_id": submission_id,
                            "model_version_id": version_id, "profile": profile, "precision": precision,
                            "batch_size": 1, "state": JobState.FAILED if failed else JobState.SUCCEEDED,
                            "attempts": 1, "max_attempts": 3, "worker_name": f"{profile}.1@host",
                            "error": "BuildError: out of memory" if failed else None, "result": template["result"],
                            "log_artifact_key": template["log_key"], "created_at": finished, "started_at": finished,
                            "finished_at": finished, "updated_at": finished,
                        })  # fmt: skip
                        if failed:
                            continue
                        speed = scale * drift * (0.25 if profile != "cpu" else 1.0) * (1.0 - 0.12 * p_index)
                        samples = base_samples * speed * rng.normal(1.0, 0.01, size=base_samples.size)
                        median = float(np.median(samples))
                        engines.append({"id": engine_id, "job_id": job_id, "profile": profile, "precision": precision,
                                        **template["engine"]})  # fmt: skip
                        benches.append(_bench_row(job_id, engine_id, "candidate", samples, template["host"]))
                        key = (profile, precision)
                        baseline = previous.get(key)
                        cosine = 1.0 - 10.0 ** -(7 - 1.2 * p_index) * float(rng.uniform(0.5, 1.5))
                        for acc in template["accuracy"]:
                            accuracies.append({
                                "job_id": job_id, "engine_id": engine_id, "output_name": acc["output_name"],
                                "max_abs_error": 1e-6 * (p_index + 1), "rel_l2_error": 1e-7 * 10 ** p_index,
                                "cosine": cosine, "snr_db": 120.0 - 15 * p_index, "top1_agreement": 1.0,
                                "budget": acc["budget"], "passed": cosine >= 0.999, "created_at": finished,
                            })  # fmt: skip
                        outcome = "no_baseline"
                        if baseline is not None:
                            base_samples_v = samples / (median / baseline[1])
                            benches.append(
                                _bench_row(job_id, baseline[0], "baseline", base_samples_v, template["host"])
                            )
                            change = (median / baseline[1] - 1) * 100
                            outcome = (
                                "regressed" if change > 5 else "improved" if change < -5 else "unchanged"
                            )
                            details = {"outcome": outcome, "ratio": median / baseline[1], "change_pct": change,
                                       "ci_low": (median / baseline[1]) * 0.98, "ci_high": (median / baseline[1]) * 1.02,
                                       "threshold_pct": 5.0, "pairs": int(samples.size),
                                       "candidate_median_ms": median, "baseline_median_ms": baseline[1]}  # fmt: skip
                            verdicts.append({"job_id": job_id, "baseline_job_id": baseline[2],
                                             "kind": "latency", "outcome": outcome, "metric": "median_ms",
                                             "change_pct": change, "p_value": 0.001, "threshold": 5.0,
                                             "details": details, "created_at": finished})  # fmt: skip
                        verdicts.append({"job_id": job_id, "kind": "overall", "outcome": outcome, "metric": "verdict",
                                         "details": {"outcome": outcome}, "created_at": finished})  # fmt: skip
                        verdicts.append({"job_id": job_id, "kind": "accuracy", "outcome": "unchanged", "metric": "cosine",
                                         "details": {"cosine": cosine}, "created_at": finished})  # fmt: skip
                        previous[key] = (engine_id, median, job_id)
            session.execute(insert(Job), jobs)
            session.execute(insert(Engine), engines)
            session.execute(insert(BenchmarkResult), benches)
            session.execute(insert(AccuracyResult), accuracies)
            session.execute(insert(Verdict), verdicts)
            jobs_inserted += len(jobs)
    return jobs_inserted


def _bench_row(
    job_id: int, engine_id: int, role: str, samples: np.ndarray, host: dict[str, Any]
) -> dict[str, Any]:
    values = np.sort(samples)
    p = np.percentile(values, [50, 90, 95, 99])
    return {
        "job_id": job_id, "engine_id": engine_id, "role": role, "batch_size": 1,
        "samples_ms": [round(float(v), 5) for v in samples], "count": int(values.size),
        "min_ms": float(values[0]), "mean_ms": float(values.mean()), "median_ms": float(p[0]),
        "p90_ms": float(p[1]), "p95_ms": float(p[2]), "p99_ms": float(p[3]), "max_ms": float(values[-1]),
        "throughput_per_s": 1000.0 / float(p[0]), "cv": float(values.std() / values.mean()),
        "host_fingerprint": host,
    }  # fmt: skip


def time_pages(client: Any, pages: dict[str, str], *, repeat: int) -> list[PageTiming]:
    """Request each page once to warm up, then ``repeat`` times; server time per request."""
    timings = []
    for name, path in pages.items():
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        samples.sort()
        timings.append(
            PageTiming(
                name,
                path,
                statistics.median(samples),
                samples[max(0, int(len(samples) * 0.95) - 1)],
                samples[-1],
                len(response.data),
            )  # fmt: skip
        )
    return timings


def run(
    *, models: int = 20, versions: int = 50, repeat: int = 15, database_url: str | None = None
) -> dict[str, Any]:
    """Build the loaded farm and time every page; the results as JSON-ready data."""
    from farm.app import create_app
    from farm.config import load_settings
    from farm.db.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="farm-dashboard-bench-") as folder:
        url = database_url or f"sqlite:///{Path(folder) / 'farm.db'}"
        upgrade(url)
        settings = load_settings(
            {}, database_url=url, broker_url="memory://", artifacts_url=str(Path(folder) / "artifacts")
        )
        app = create_app(settings)
        services = app.extensions["farm"]
        template = template_results(app)
        started = time.perf_counter()
        inserted = insert_load(services.db, template, models=models, versions=versions)
        insert_s = time.perf_counter() - started
        with services.db.engine.connect() as connection:  # fresh planner statistics, as autovacuum would keep
            connection.exec_driver_sql("ANALYZE")
            connection.commit()
        with services.db.session() as session:
            counts = {
                table.__tablename__: session.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (Job, Engine, BenchmarkResult, AccuracyResult, Verdict)
            }
            model = f"load-model-{models // 2:03d}"
            last = session.execute(
                select(Job.id, Engine.id)
                .join(Engine, Engine.job_id == Job.id)
                .join(ModelVersion, Job.model_version_id == ModelVersion.id)
                .join(Model, ModelVersion.model_id == Model.id)
                .where(Model.name == model, Job.profile == "cpu", Job.precision == "int8")
                .order_by(ModelVersion.number.desc())
                .limit(2)
            ).all()
        (b_job, b_engine), (a_job, _) = last[0], last[1]
        pages = {
            "overview": "/",
            "overview, filtered": "/?profile=nvidia-h200",
            "model": f"/models/{model}",
            "history": f"/history?model={model}&profile=cpu&precision=int8&batch=1&metric=median_ms",
            "compare engines": f"/compare?a={a_job}&b={b_job}",
            "compare versions": f"/compare?model={model}&va={versions - 1}&vb={versions}",
            "engine": f"/engines/{b_engine}",
            "job": f"/jobs/{b_job}",
            "job live": f"/jobs/{b_job}/live",
        }
        timings = time_pages(app.test_client(), pages, repeat=repeat)
        services.db.dispose()
    return {
        "database": url.split(":", 1)[0],
        "jobs": inserted,
        "rows": counts,
        "samples_per_benchmark": len(template["samples"]),
        "insert_s": insert_s,
        "budget_ms": BUDGET_MS,
        "pages": [t.to_json() for t in timings],
        "all_under_budget": all(t.p95_ms < BUDGET_MS for t in timings),
    }


def markdown(results: dict[str, Any]) -> str:
    """The section docs/BENCHMARKS.md records."""
    rows = results["rows"]
    lines = [
        f"{results['jobs']:,} build jobs on {results['database']} ({rows['benchmark_results']:,} benchmark rows with "
        f"{results['samples_per_benchmark']} samples each, {rows['accuracy_results']:,} accuracy rows, "
        f"{rows['verdicts']:,} verdicts, {rows['engines']:,} engines). Server time per request (Flask test client: "
        f"routing, queries, rendering), {results.get('repeat', 15)} requests after one warm-up; budget "
        f"{results['budget_ms']:.0f} ms.",
        "",
        "| page | path | median ms | p95 ms | max ms | bytes |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for p in results["pages"]:
        lines.append(
            f"| {p['page']} | `{p['path']}` | {p['median_ms']:.1f} | {p['p95_ms']:.1f} | {p['max_ms']:.1f} | {p['bytes']:,} |"
        )
    return "\n".join(lines)


@click.command()
@click.option("--models", default=20, show_default=True)
@click.option("--versions", default=50, show_default=True)
@click.option("--repeat", default=15, show_default=True)
@click.option(
    "--database-url", default=None, help="Run against this (empty) database instead of a temporary SQLite."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(models: int, versions: int, repeat: int, database_url: str | None, json_path: Path | None) -> None:
    """Time every dashboard page with models × versions × 10 stored results."""
    results = run(models=models, versions=versions, repeat=repeat, database_url=database_url)
    results["repeat"] = repeat
    print(markdown(results))
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    sys.exit(0 if results["all_under_budget"] else 1)


if __name__ == "__main__":
    main()
