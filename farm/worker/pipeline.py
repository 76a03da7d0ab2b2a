"""The build job's pipeline: inspect → build → store → benchmark → accuracy → verdict.

:class:`BuildJobCommand` is what the Celery task runs (the task stays thin). Each step lives in
its own module (``build``, ``bench``, ``accuracy``, ``regress``); this module orders them, moves
the job through its states (building → benchmarking → checking → succeeded | failed), and writes
the results.

Written exactly once: the engine row is unique per job (a retried job whose engine was already
stored resumes from it instead of building again); benchmark, accuracy and verdict rows and the
job's final state are written in ONE transaction, only while this worker still holds the job
(:func:`~farm.worker.jobs.finish_job`), and unique constraints reject any second copy.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from farm.compiler import Engine
from farm.compiler import __version__ as compiler_version
from farm.compiler.engine.benchmark import LatencyStats, latency_stats
from farm.db import (
    AccuracyResult,
    BenchmarkResult,
    Job,
    JobState,
    Verdict,
)
from farm.db import Engine as EngineRow
from farm.db.models import FINAL_JOB_STATES
from farm.profiles import detect_host
from farm.worker import accuracy as accuracy_step
from farm.worker import bench as bench_step
from farm.worker import regress
from farm.worker.build import BuildOutcome, build_engine, builder_config
from farm.worker.host_lock import measurement_lock
from farm.worker.inspect import inspect_model_file
from farm.worker.jobrun import JobInterrupted, JobRun, JobStopped
from farm.worker.jobs import ClaimedJobCommand, finish_job
from farm.worker.timing_cache import DatabaseTimingCache

log = logging.getLogger(__name__)

CALIBRATION_SEED = 1000  # calibration data differs from the validation data (seed 0)


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth retrying: the database, the broker or the artifact store briefly unreachable."""
    from botocore.exceptions import ConnectionError as S3ConnectionError
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import InterfaceError, OperationalError

    return (OperationalError, InterfaceError, BrokerError, RedisConnectionError, S3ConnectionError)


@dataclass
class _JobInputs:
    """What the pipeline reads from the database before it starts."""

    profile: str
    precision: str
    batch: int
    options: dict[str, Any]
    model_key: str
    model_facts: dict[str, Any] | None
    version_id: int
    dataset_key: str | None
    dataset_id: int | None
    calibration_key: str | None  # INT8 calibration data, when other than the validation data
    engine_key: str | None  # an engine stored by an earlier attempt


@dataclass
class _Baseline:
    job_id: int
    engine: Engine
    cosine: float | None


class BuildJobCommand(ClaimedJobCommand):
    """Run one build job end to end (``validate()`` claims it; ``run()`` does the work)."""

    claimed_state = JobState.BUILDING

    def run(self) -> JobState | None:
        """Run the pipeline; the job's final state, or ``None`` when this delivery had nothing to do."""
        if self._claim is None and not self.validate():
            return None
        assert self._claim is not None
        claim = self._claim
        with JobRun(
            self.db, self.store, claim, worker_name=self.worker_name, lease_seconds=self.lease_seconds
        ) as run:
            try:
                with (
                    tempfile.TemporaryDirectory(prefix=f"farm-job-{self.job_id}-") as folder,
                    run.interruptible(),
                ):
                    return self._pipeline(run, Path(folder))
            except (JobStopped, JobInterrupted) as stopped:
                late = (
                    " (interrupted: it did not stop by itself)" if isinstance(stopped, JobInterrupted) else ""
                )
                run.log(f"stopped: {run.stopped_reason or stopped}{late}")
                return None
            except transient_errors():
                raise
            except Exception as exc:
                log.exception("job %s failed", self.job_id)
                run.log(f"failed: {type(exc).__name__}: {exc}")
                return self._fail(run, f"{type(exc).__name__}: {exc}")

    # the steps

    def _pipeline(self, run: JobRun, folder: Path) -> JobState | None:
        run.step("inspect")
        inputs = self._read_inputs()
        model_path = self.store.fetch_to(inputs.model_key, folder / "model.onnx")
        model = accuracy_step.load_model_proto(model_path)
        if inputs.model_facts is None:
            self._store_facts(inputs.version_id, inspect_model_file(model_path))
        dataset = calibration = None
        if inputs.dataset_key:
            dataset = accuracy_step.load_dataset(
                self.store.fetch_to(inputs.dataset_key, folder / "dataset.npz")
            )
        if inputs.calibration_key:
            calibration = accuracy_step.load_dataset(
                self.store.fetch_to(inputs.calibration_key, folder / "calibration.npz")
            )
        run.log(
            f"model {inputs.model_key}, profile {inputs.profile}, {inputs.precision}, batch {inputs.batch}"
        )

        run.step("build", f"{inputs.profile} {inputs.precision} batch {inputs.batch}")
        outcome: BuildOutcome | None = None
        if inputs.engine_key is not None:
            run.log(f"resuming from the engine an earlier attempt stored ({inputs.engine_key})")
            engine = Engine.from_bytes(self.store.read_bytes(inputs.engine_key))
            engine_id = self._engine_id()
        else:
            with self._measuring(run):
                outcome = self._build(run, inputs, model_path, calibration or dataset, model)
            engine = outcome.engine
            run.step("store", f"{len(outcome.data)} bytes")
            engine_id = self._store_engine(run, inputs, outcome)

        run.set_state(JobState.BENCHMARKING)
        run.step("benchmark")
        settings = bench_step.BenchmarkSettings.from_options(inputs.options.get("benchmark"))
        feed_batches, source = accuracy_step.validation_batches(
            engine, model, batch=inputs.batch, dataset=dataset
        )
        baseline = self._baseline(run, inputs.options)
        with self._measuring(run):
            if baseline is not None:
                run.log(f"baseline: job {baseline.job_id}; benchmarking both engines interleaved")
                stats = bench_step.benchmark_interleaved(
                    {"candidate": engine, "baseline": baseline.engine},
                    feed_batches[0],
                    batch=inputs.batch,
                    settings=settings,
                    check=run.check,
                )
                candidate_stats, baseline_stats = stats["candidate"], stats["baseline"]
                candidate_stats, baseline_stats = self._extend_until_decided(
                    run,
                    engine,
                    baseline.engine,
                    feed_batches[0],
                    inputs,
                    settings,
                    candidate_stats,
                    baseline_stats,
                )
            else:
                run.log("no baseline: benchmarking the engine alone")
                candidate_stats = bench_step.benchmark_engine(
                    engine, feed_batches[0], batch=inputs.batch, settings=settings, check=run.check
                )
                baseline_stats = None
        host = bench_step.host_state()
        run.log(
            f"median {candidate_stats.median_ms:.4f} ms, p99 {candidate_stats.p99_ms:.4f} ms, "
            f"cv {candidate_stats.cv:.3f}, {len(candidate_stats.samples_ms)} runs"
        )

        run.set_state(JobState.CHECKING)
        run.step("accuracy", f"{source} validation data")
        budgets = accuracy_step.budgets_for(inputs.precision, inputs.options.get("accuracy_budgets"))
        report = accuracy_step.check_accuracy(engine, model_path, feed_batches, budgets, source=source)
        run.log(
            f"accuracy {'met' if report.passed else 'MISSED'} {report.budgets}: worst cosine {report.worst('cosine')}"
        )

        run.step("verdict")
        latency = None
        if baseline is not None and baseline_stats is not None:
            latency = regress.compare_latency(
                candidate_stats.samples_ms,
                baseline_stats.samples_ms,
                threshold_pct=float(
                    inputs.options.get("latency_threshold_pct", regress.DEFAULT_LATENCY_THRESHOLD_PCT)
                ),
            )
        judgement = regress.judge_accuracy(
            passed_budget=report.passed,
            failures=report.failures,
            cosine=report.worst("cosine"),
            baseline_cosine=baseline.cosine if baseline else None,
            margin=float(inputs.options.get("accuracy_margin", regress.DEFAULT_ACCURACY_MARGIN)),
        )
        overall = regress.overall_outcome(latency.outcome if latency else None, judgement.outcome)
        run.log(
            f"verdict {overall}"
            + (
                f": latency {latency.change_pct:+.2f}% [{latency.ci_low:.3f}, {latency.ci_high:.3f}]"
                if latency
                else ""
            )
        )
        return self._finish(
            run,
            engine_id=engine_id,
            outcome=outcome,
            candidate_stats=candidate_stats,
            baseline=baseline,
            baseline_stats=baseline_stats,
            host=host,
            settings=settings,
            report=report,
            dataset_id=inputs.dataset_id,
            latency=latency,
            judgement=judgement,
            overall=overall,
        )

    @contextlib.contextmanager
    def _measuring(self, run: JobRun) -> Iterator[None]:
        """Hold this host's measurement lock (see farm/worker/host_lock.py) around a timed step."""
        with measurement_lock(
            check=run.check, on_wait=lambda: run.log("waiting for this host's measurement lock")
        ) as waited:
            if waited >= 1:
                run.log(f"measurement lock acquired after {waited:.1f} s")
            yield

    def _extend_until_decided(
        self,
        run: JobRun,
        engine: Engine,
        baseline: Engine,
        feeds: dict[str, Any],
        inputs: _JobInputs,
        settings: bench_step.BenchmarkSettings,
        candidate: LatencyStats,
        reference: LatencyStats,
    ) -> tuple[LatencyStats, LatencyStats]:
        """On a noisy host a real change can miss significance: measure more rounds, up to a cap."""
        threshold = float(inputs.options.get("latency_threshold_pct", regress.DEFAULT_LATENCY_THRESHOLD_PCT))
        for extension in range(regress.MAX_BENCHMARK_EXTENSIONS):
            comparison = regress.compare_latency(
                candidate.samples_ms, reference.samples_ms, threshold_pct=threshold
            )
            if not regress.undecided(comparison):
                break
            run.log(
                f"change {comparison.change_pct:+.1f}% not yet significant "
                f"[{comparison.ci_low:.3f}, {comparison.ci_high:.3f}]: measuring more ({extension + 1})"
            )
            more = bench_step.benchmark_interleaved(
                {"candidate": engine, "baseline": baseline},
                feeds,
                batch=inputs.batch,
                settings=settings,
                check=run.check,
            )
            candidate = latency_stats(candidate.samples_ms + more["candidate"].samples_ms, inputs.batch)
            reference = latency_stats(reference.samples_ms + more["baseline"].samples_ms, inputs.batch)
        return candidate, reference

    def _read_inputs(self) -> _JobInputs:
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            if job.precision is None or job.batch_size is None:
                raise ValueError(f"job {job.id} has no precision or batch size; it is not a build job")
            submission = job.submission
            engine = session.execute(select(EngineRow).where(EngineRow.job_id == job.id)).scalar_one_or_none()
            dataset = submission.dataset_id if submission else None
            calibration = getattr(submission, "calibration_dataset_id", None) if submission else None
            dataset_key = _dataset_key(session, dataset)
            calibration_key = _dataset_key(session, calibration)
            return _JobInputs(
                profile=job.profile,
                precision=job.precision,
                batch=job.batch_size,
                options=dict(submission.options or {}) if submission else {},
                model_key=job.model_version.artifact_key,
                model_facts=job.model_version.facts,
                version_id=job.model_version_id,
                dataset_key=dataset_key,
                dataset_id=dataset,
                calibration_key=calibration_key,
                engine_key=engine.artifact_key if engine else None,
            )

    def _store_facts(self, version_id: int, facts: dict[str, Any]) -> None:
        from farm.db import ModelVersion

        with self.db.session() as session:
            version = session.get(ModelVersion, version_id)
            if version is not None and version.facts is None:
                version.facts = facts

    def _build(
        self,
        run: JobRun,
        inputs: _JobInputs,
        model_path: Path,
        dataset: dict[str, Any] | None,
        model: Any,
    ) -> BuildOutcome:
        cache = DatabaseTimingCache(self.db, inputs.profile)
        run.log(f"timing cache of profile {inputs.profile}: {len(cache)} entries")
        calibration = None
        if inputs.precision in ("int8", "best"):
            calibration = accuracy_step.calibration_batches(
                model,
                batch=inputs.batch,
                input_shapes=inputs.options.get("input_shapes"),
                dataset=dataset,
                seed=CALIBRATION_SEED,
            )
        config = builder_config(
            precision=inputs.precision,
            batch=inputs.batch,
            options=inputs.options,
            timing_cache=cache,
            calibration=calibration,
        )

        def on_progress(stage: str, done: int, total: int, detail: str) -> None:
            run.progress(f"build:{stage}", done, total, detail)

        outcome = build_engine(
            model_path, profile=inputs.profile, config=config, timing_cache=cache, progress=on_progress
        )
        run.log(
            f"built in {outcome.seconds:.3f} s; timing cache {outcome.cache_hits} hits, {outcome.cache_misses} misses"
        )
        return outcome

    def _store_engine(self, run: JobRun, inputs: _JobInputs, outcome: BuildOutcome) -> int:
        stored = self.store.put_bytes(outcome.data)
        fingerprint = {"device": outcome.engine.fingerprint, "host": detect_host().fingerprint()}
        assert self._claim is not None
        try:
            with self.db.session() as session:
                self._require_held(session, run)
                row = EngineRow(
                    job_id=self.job_id,
                    sha256=stored.sha256,
                    artifact_key=stored.key,
                    size_bytes=stored.size_bytes,
                    profile=inputs.profile,
                    precision=inputs.precision,
                    compiler_version=compiler_version,
                    fingerprint=fingerprint,
                    build_report=_json_safe(outcome.engine.report),
                    build_seconds=outcome.seconds,
                )
                session.add(row)
                session.flush()
                engine_id = row.id
        except IntegrityError:
            # another attempt stored this job's engine first: the job has exactly one engine
            run.log("an engine for this job was stored meanwhile; using it")
            return self._engine_id()
        run.log(f"engine {stored.key} ({stored.size_bytes} bytes) stored as engine {engine_id}")
        return engine_id

    def _engine_id(self) -> int:
        with self.db.session() as session:
            return int(
                session.execute(select(EngineRow.id).where(EngineRow.job_id == self.job_id)).scalar_one()
            )

    def _require_held(self, session: Session, run: JobRun) -> None:
        assert self._claim is not None
        job = session.execute(select(Job).where(Job.id == self.job_id).with_for_update()).scalar_one()
        if (
            job.state in FINAL_JOB_STATES
            or job.worker_name != self.worker_name
            or job.attempts != self._claim.attempt
        ):
            run.stopped_reason = run.stopped_reason or run.why_lost(session)
            run.check()

    def _baseline(self, run: JobRun, options: dict[str, Any]) -> _Baseline | None:
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            found = regress.find_baseline(session, job, options)
            if found is None:
                return None
            engine_key = found.engine.artifact_key if found.engine else None
            cosines = (
                session.execute(select(AccuracyResult.cosine).where(AccuracyResult.job_id == found.id))
                .scalars()
                .all()
            )
            baseline_id = found.id
        if engine_key is None:
            return None
        try:
            engine = Engine.from_bytes(self.store.read_bytes(engine_key))
        except Exception as exc:  # e.g. built on another kind of host: no fair comparison possible here
            run.log(f"baseline job {baseline_id}'s engine cannot run here ({exc}); judging without it")
            return None
        return _Baseline(baseline_id, engine, min(cosines) if cosines else None)

    def _finish(
        self,
        run: JobRun,
        *,
        engine_id: int,
        outcome: BuildOutcome | None,
        candidate_stats: LatencyStats,
        baseline: _Baseline | None,
        baseline_stats: LatencyStats | None,
        host: dict[str, Any],
        settings: bench_step.BenchmarkSettings,
        report: accuracy_step.AccuracyReport,
        dataset_id: int | None,
        latency: regress.LatencyComparison | None,
        judgement: regress.AccuracyJudgement,
        overall: str,
    ) -> JobState | None:
        assert self._claim is not None
        steps = run.finish_steps()
        run.log(f"finished: {overall}")
        log_key = run.final_log_key()
        with self.db.session() as session:
            job = finish_job(session, self._claim, worker_name=self.worker_name, state=JobState.SUCCEEDED)
            if job is None:
                return None
            job.log_artifact_key = log_key or job.log_artifact_key
            session.add(
                BenchmarkResult(
                    job_id=job.id, engine_id=engine_id, role="candidate", host_fingerprint=host,
                    **bench_step.stats_to_row(candidate_stats),
                )
            )  # fmt: skip
            if baseline is not None and baseline_stats is not None:
                baseline_engine_id = session.execute(
                    select(EngineRow.id).where(EngineRow.job_id == baseline.job_id)
                ).scalar_one()
                session.add(
                    BenchmarkResult(
                        job_id=job.id, engine_id=baseline_engine_id, role="baseline", host_fingerprint=host,
                        **bench_step.stats_to_row(baseline_stats),
                    )
                )  # fmt: skip
            for output in report.outputs:
                session.add(
                    AccuracyResult(
                        job_id=job.id,
                        engine_id=engine_id,
                        dataset_id=dataset_id,
                        output_name=output.name,
                        max_abs_error=output.max_abs,
                        rel_l2_error=output.rel_l2,
                        cosine=output.cosine,
                        snr_db=output.snr_db,
                        top1_agreement=output.top1,
                        budget={"budgets": report.budgets},
                        passed=not any(f.startswith(f"{output.name}:") for f in report.failures),
                    )
                )
            baseline_job_id = baseline.job_id if baseline else None
            if latency is not None:
                session.add(
                    Verdict(
                        job_id=job.id, baseline_job_id=baseline_job_id, kind="latency", outcome=latency.outcome,
                        metric="median_ms", change_pct=latency.change_pct, p_value=latency.p_value,
                        threshold=latency.threshold_pct, details=latency.to_json(),
                    )
                )  # fmt: skip
            session.add(
                Verdict(
                    job_id=job.id, baseline_job_id=baseline_job_id, kind="accuracy", outcome=judgement.outcome,
                    metric="cosine", change_pct=None, p_value=None, threshold=judgement.margin,
                    details=judgement.to_json(),
                )
            )  # fmt: skip
            verdict = {
                "outcome": overall,
                "baseline_job_id": baseline_job_id,
                "latency": latency.to_json() if latency else None,
                "accuracy": judgement.to_json(),
            }
            session.add(
                Verdict(
                    job_id=job.id, baseline_job_id=baseline_job_id, kind="overall", outcome=overall,
                    metric="verdict", change_pct=latency.change_pct if latency else None,
                    p_value=latency.p_value if latency else None,
                    threshold=latency.threshold_pct if latency else None, details=verdict,
                )
            )  # fmt: skip
            job.result = _json_safe(
                {
                    "engine_id": engine_id,
                    "build": (
                        {
                            "seconds": outcome.seconds,
                            "timing_cache": {
                                "hits": outcome.cache_hits,
                                "misses": outcome.cache_misses,
                                "hit_rate": outcome.cache_hit_rate,
                            },
                        }
                        if outcome
                        else {"resumed": True}
                    ),
                    "benchmark": {
                        "settings": settings.to_json(),
                        "candidate": candidate_stats.to_json(),
                        "baseline": baseline_stats.to_json() if baseline_stats else None,
                        "host": {k: v for k, v in host.items() if k != "threads"},
                    },
                    "accuracy": report.to_json(),
                    "verdict": verdict,
                    "steps": steps,
                }
            )
            job.progress = {"step": "done", "done": 1, "total": 1, "detail": overall, "steps": steps}
        return JobState.SUCCEEDED

    def _fail(self, run: JobRun, error: str) -> JobState | None:
        assert self._claim is not None
        steps = run.finish_steps()
        try:
            log_key = run.final_log_key()
        except Exception:  # the store may be what failed (full, read-only): fail the job all the same
            log.exception("job %s: could not store its final log", self.job_id)
            log_key = None
        with self.db.session() as session:
            job = finish_job(
                session, self._claim, worker_name=self.worker_name, state=JobState.FAILED, error=error
            )
            if job is None:
                return None
            job.log_artifact_key = log_key or job.log_artifact_key
            session.add(
                Verdict(
                    job_id=job.id, kind="overall", outcome=regress.FAILED, metric="verdict",
                    details={"outcome": regress.FAILED, "error": error},
                )
            )  # fmt: skip
            job.result = {"verdict": {"outcome": regress.FAILED, "error": error}, "steps": steps}
            job.progress = {"step": "failed", "done": 1, "total": 1, "detail": error[:500], "steps": steps}
        return JobState.FAILED


def _dataset_key(session: Session, dataset_id: int | None) -> str | None:
    from farm.db import Dataset

    row = session.get(Dataset, dataset_id) if dataset_id is not None else None
    return row.artifact_key if row else None


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and numpy scalars as Python numbers."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value
