"""What each dashboard page reads from the database, as plain dataclasses and dicts.

Every page reads a bounded number of rows with a fixed number of queries (no query per row), and
only the columns it shows: the per-run latency samples (``benchmark_results.samples_ms``, often
thousands of numbers) are read only by the pages that draw their distribution (compare, job).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session, defer

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
    Worker,
    utcnow,
)
from farm.db.models import RUNNING_JOB_STATES

CANDIDATE = "candidate"
# listings never read a job's result/progress JSON or a version's facts: leave them in the database
LIGHT_ROWS = (defer(Job.result), defer(Job.progress), defer(ModelVersion.facts))
PRECISION_ORDER = ("fp32", "tf32", "bf16", "fp16", "int8", "best")
# accuracy metrics a page may show: column, label, whether higher is better
ACCURACY_METRICS: dict[str, tuple[str, str, bool]] = {
    "cosine": ("cosine", "cosine similarity (worst output)", True),
    "rel_l2": ("rel_l2_error", "relative L2 error (worst output)", False),
    "max_abs": ("max_abs_error", "max abs error (worst output)", False),
    "snr_db": ("snr_db", "SNR dB (worst output)", True),
}
# latency metrics stored per benchmark row: column, label, whether higher is better
LATENCY_METRICS: dict[str, tuple[str, str, bool]] = {
    "median_ms": ("median_ms", "median latency (ms)", False),
    "p99_ms": ("p99_ms", "p99 latency (ms)", False),
    "mean_ms": ("mean_ms", "mean latency (ms)", False),
    "min_ms": ("min_ms", "min latency (ms)", False),
    "throughput": ("throughput_per_s", "throughput (inferences/s)", True),
}


def precision_sort_key(precision: str | None) -> tuple[int, str]:
    """Order precisions from widest to narrowest (fp32 first), unknown ones last by name."""
    name = precision or ""
    return (PRECISION_ORDER.index(name) if name in PRECISION_ORDER else len(PRECISION_ORDER), name)


# ---------------------------------------------------------------------------------------------
# job summaries: the numbers of many jobs at once


@dataclass
class JobSummary:
    """One build job with the headline numbers of its results."""

    id: int
    version_id: int
    version_number: int
    version_label: str
    profile: str
    precision: str | None
    batch_size: int | None
    state: str
    verdict: str | None = None
    change_pct: float | None = None
    median_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)  # metric -> worst output
    accuracy_passed: bool | None = None
    engine_id: int | None = None
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """True when the job finished with results."""
        return self.state == JobState.SUCCEEDED.value


def summarize_jobs(session: Session, jobs: Sequence[tuple[Job, ModelVersion]]) -> list[JobSummary]:
    """Headline numbers of ``jobs`` (candidate benchmark, worst accuracy per metric, overall
    verdict, engine id) in four queries, whatever the number of jobs."""
    summaries = {
        job.id: JobSummary(
            id=job.id,
            version_id=version.id,
            version_number=version.number,
            version_label=version.display_label,
            profile=job.profile,
            precision=job.precision,
            batch_size=job.batch_size,
            state=job.state.value,
            finished_at=job.finished_at,
            error=job.error,
        )
        for job, version in jobs
    }
    ids = list(summaries)
    if not ids:
        return []
    for job_id, median, p99, throughput in session.execute(
        select(
            BenchmarkResult.job_id,
            BenchmarkResult.median_ms,
            BenchmarkResult.p99_ms,
            BenchmarkResult.throughput_per_s,
        ).where(BenchmarkResult.job_id.in_(ids), BenchmarkResult.role == CANDIDATE)
    ):
        summary = summaries[job_id]
        summary.median_ms, summary.p99_ms, summary.throughput = median, p99, throughput
    for row in session.execute(
        select(
            AccuracyResult.job_id,
            func.min(AccuracyResult.cosine),
            func.max(AccuracyResult.rel_l2_error),
            func.max(AccuracyResult.max_abs_error),
            func.min(AccuracyResult.snr_db),
            func.min(case((AccuracyResult.passed, 1), else_=0)),
        )
        .where(AccuracyResult.job_id.in_(ids))
        .group_by(AccuracyResult.job_id)
    ):
        summary = summaries[row[0]]
        summary.accuracy = {"cosine": row[1], "rel_l2": row[2], "max_abs": row[3], "snr_db": row[4]}
        summary.accuracy_passed = bool(row[5])
    for job_id, outcome, change in session.execute(
        select(Verdict.job_id, Verdict.outcome, Verdict.change_pct).where(
            Verdict.job_id.in_(ids), Verdict.kind == "overall"
        )
    ):
        summaries[job_id].verdict, summaries[job_id].change_pct = outcome, change
    for job_id, engine_id in session.execute(select(Engine.job_id, Engine.id).where(Engine.job_id.in_(ids))):
        summaries[job_id].engine_id = engine_id
    return list(summaries.values())


# ---------------------------------------------------------------------------------------------
# overview


@dataclass
class SubmissionRow:
    """A submission on the overview: its model, version, job states and verdicts."""

    id: int
    model: str
    version_label: str
    version_number: int
    created_at: datetime
    profiles: list[str]
    precisions: list[str]
    states: dict[str, int]
    verdicts: dict[str, int]
    branch: str | None

    @property
    def job_count(self) -> int:
        """How many jobs the submission fanned out into."""
        return sum(self.states.values())

    @property
    def worst_verdict(self) -> str | None:
        """The most severe verdict among the jobs (failed > regressed > improved > unchanged)."""
        for outcome in ("failed", "regressed", "improved", "unchanged", "no_baseline"):
            if self.verdicts.get(outcome):
                return outcome
        return None


@dataclass
class ProfileStatus:
    """Queue depth and workers of one profile."""

    profile: str
    queued: int = 0
    running: int = 0
    workers_online: int = 0
    workers_lost: int = 0
    last_heartbeat: datetime | None = None
    worker_names: list[str] = field(default_factory=list)


@dataclass
class Overview:
    """Everything the overview page shows."""

    submissions: list[SubmissionRow]
    next_before: int | None
    profiles: list[ProfileStatus]
    failures: list[dict[str, Any]]
    failure_count: int
    models: list[dict[str, Any]]
    total_jobs: int
    workers_online: int  # distinct workers (one may serve several profiles)


def overview(
    session: Session,
    *,
    worker_alive_after: datetime,
    model: str | None = None,
    profile: str | None = None,
    before: int | None = None,
    page_size: int = 20,
) -> Overview:
    """Recent submissions (newest first, keyset-paginated by id, filtered by model/profile), queue
    depth and workers per profile, failures in the last 24 hours, and the models."""
    query = (
        select(Submission.id, Submission.created_at, Model.name, ModelVersion.number, ModelVersion.label,
               ModelVersion.branch)
        .join(ModelVersion, Submission.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .order_by(Submission.id.desc())
        .limit(page_size + 1)
    )  # fmt: skip
    if before is not None:
        query = query.where(Submission.id < before)
    if model:
        query = query.where(Model.name == model)
    if profile:
        query = query.where(exists().where(Job.submission_id == Submission.id, Job.profile == profile))
    rows = session.execute(query).all()
    next_before = rows[page_size - 1][0] if len(rows) > page_size else None
    rows = rows[:page_size]
    ids = [row[0] for row in rows]
    states: dict[int | None, Counter[str]] = defaultdict(Counter)
    profiles_of: dict[int | None, set[str]] = defaultdict(set)
    precisions_of: dict[int | None, set[str]] = defaultdict(set)
    verdicts: dict[int | None, Counter[str]] = defaultdict(Counter)
    if ids:
        # the jobs of these submissions, then their verdicts by job id: both walk an index
        job_submission: dict[int, int | None] = {}
        for job_id, submission_id, job_profile, precision, state in session.execute(
            select(Job.id, Job.submission_id, Job.profile, Job.precision, Job.state).where(
                Job.submission_id.in_(ids)
            )
        ):
            job_submission[job_id] = submission_id
            states[submission_id][state.value] += 1
            profiles_of[submission_id].add(job_profile)
            if precision:
                precisions_of[submission_id].add(precision)
        for job_id, outcome in session.execute(
            select(Verdict.job_id, Verdict.outcome).where(
                Verdict.job_id.in_(list(job_submission)), Verdict.kind == "overall"
            )
        ):
            verdicts[job_submission[job_id]][outcome] += 1
    submissions = [
        SubmissionRow(
            id=sid, model=name, version_label=label or f"v{number}", version_number=number,
            created_at=created, profiles=sorted(profiles_of[sid]),
            precisions=sorted(precisions_of[sid], key=precision_sort_key),
            states=dict(states[sid]), verdicts=dict(verdicts[sid]), branch=branch,
        )
        for sid, created, name, number, label, branch in rows
    ]  # fmt: skip

    status: dict[str, ProfileStatus] = {}
    for job_profile, state, count in session.execute(
        select(Job.profile, Job.state, func.count())
        .where(Job.state.in_([JobState.QUEUED, *RUNNING_JOB_STATES]))
        .group_by(Job.profile, Job.state)
    ):
        entry = status.setdefault(job_profile, ProfileStatus(job_profile))
        if state == JobState.QUEUED:
            entry.queued += count
        else:
            entry.running += count
    for worker in session.execute(select(Worker.name, Worker.profiles, Worker.state, Worker.heartbeat_at)):
        alive = worker.state == "online" and worker.heartbeat_at >= worker_alive_after
        for worker_profile in worker.profiles or []:
            entry = status.setdefault(worker_profile, ProfileStatus(worker_profile))
            if alive:
                entry.workers_online += 1
                entry.worker_names.append(worker.name)
            elif worker.state != "offline":
                entry.workers_lost += 1
            if entry.last_heartbeat is None or worker.heartbeat_at > entry.last_heartbeat:
                entry.last_heartbeat = worker.heartbeat_at

    since = utcnow() - timedelta(days=1)
    failed_filter = (Job.state == JobState.FAILED, Job.finished_at >= since)
    failure_count = session.execute(select(func.count()).select_from(Job).where(*failed_filter)).scalar_one()
    failures = [
        {"id": job_id, "model": name, "version": label or f"v{number}", "profile": job_profile,
         "precision": precision, "finished_at": finished, "error": (error or "").strip().splitlines()[:1]}
        for job_id, name, number, label, job_profile, precision, finished, error in session.execute(
            select(Job.id, Model.name, ModelVersion.number, ModelVersion.label, Job.profile, Job.precision,
                   Job.finished_at, Job.error)
            .join(ModelVersion, Job.model_version_id == ModelVersion.id)
            .join(Model, ModelVersion.model_id == Model.id)
            .where(*failed_filter)
            .order_by(Job.finished_at.desc())
            .limit(10)
        )
    ]  # fmt: skip
    version_counts = (
        select(ModelVersion.model_id, func.count().label("versions"), func.max(ModelVersion.number).label("latest"))
        .group_by(ModelVersion.model_id)
        .subquery()
    )  # fmt: skip
    models = [
        {"name": name, "versions": versions or 0, "latest": latest, "created_at": created}
        for name, created, versions, latest in session.execute(
            select(Model.name, Model.created_at, version_counts.c.versions, version_counts.c.latest)
            .outerjoin(version_counts, version_counts.c.model_id == Model.id)
            .order_by(Model.created_at.desc(), Model.id.desc())
            .limit(30)
        )
    ]
    total_jobs = session.execute(select(func.count()).select_from(Job)).scalar_one()
    return Overview(
        submissions=submissions,
        next_before=next_before,
        profiles=sorted(status.values(), key=lambda s: s.profile),
        failures=failures,
        failure_count=failure_count,
        models=models,
        total_jobs=total_jobs,
        workers_online=len({name for entry in status.values() for name in entry.worker_names}),
    )


# ---------------------------------------------------------------------------------------------
# model page


@dataclass
class MatrixRow:
    """One version on the model page: a cell per (profile, precision)."""

    version_id: int
    number: int
    label: str
    created_at: datetime
    branch: str | None
    git_commit: str | None
    cells: dict[tuple[str, str], JobSummary]
    best: dict[str, str]  # profile -> precision with the lowest median latency that met its budget


@dataclass
class ModelMatrix:
    """The model page: versions × profiles × precisions at one batch size."""

    model: Model
    rows: list[MatrixRow]
    profiles: list[str]
    precisions: list[str]
    batch_sizes: list[int]
    batch: int | None
    version_count: int
    older_than: int | None  # the version number to page on from, when there are older versions


def model_matrix(
    session: Session,
    model: Model,
    *,
    batch: int | None = None,
    profile: str | None = None,
    precision: str | None = None,
    before_number: int | None = None,
    versions: int = 12,
) -> ModelMatrix:
    """The newest ``versions`` versions (older than ``before_number``) of ``model`` with their build
    jobs at ``batch`` (default: the smallest batch size built), optionally one profile/precision."""
    version_query = (
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.number.desc())
    )
    if before_number is not None:
        version_query = version_query.where(ModelVersion.number < before_number)
    version_rows = (
        session.execute(version_query.limit(versions + 1).options(defer(ModelVersion.facts))).scalars().all()
    )
    older_than = version_rows[versions - 1].number if len(version_rows) > versions else None
    version_rows = version_rows[:versions]
    version_count = session.execute(
        select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model.id)
    ).scalar_one()
    batch_sizes = sorted(
        b
        for b in session.execute(
            select(Job.batch_size)
            .join(ModelVersion, Job.model_version_id == ModelVersion.id)
            .where(ModelVersion.model_id == model.id, Job.kind == JobKind.BUILD)
            .distinct()
        ).scalars()
        if b is not None
    )
    if batch is None and batch_sizes:
        batch = batch_sizes[0]
    by_id = {v.id: v for v in version_rows}
    job_query = select(Job).where(
        Job.model_version_id.in_(list(by_id)), Job.kind == JobKind.BUILD, Job.batch_size == batch
    )
    if profile:
        job_query = job_query.where(Job.profile == profile)
    if precision:
        job_query = job_query.where(Job.precision == precision)
    jobs = (
        session.execute(job_query.order_by(Job.id).options(defer(Job.result), defer(Job.progress)))
        .scalars()
        .all()
    )
    summaries = summarize_jobs(session, [(job, by_id[job.model_version_id]) for job in jobs])
    cells: dict[int, dict[tuple[str, str], JobSummary]] = defaultdict(dict)
    for summary in summaries:  # by job id: a later resubmission of the same cell wins
        cells[summary.version_id][(summary.profile, summary.precision or "")] = summary
    profiles = sorted({s.profile for s in summaries})
    precisions = sorted({s.precision or "" for s in summaries}, key=precision_sort_key)
    rows = [
        MatrixRow(
            version_id=v.id, number=v.number, label=v.display_label, created_at=v.created_at,
            branch=v.branch, git_commit=v.git_commit, cells=cells[v.id],
            best=best_precisions(cells[v.id].values()),
        )
        for v in version_rows
    ]  # fmt: skip
    return ModelMatrix(model, rows, profiles, precisions, batch_sizes, batch, version_count, older_than)


def best_precisions(cells: Iterable[JobSummary]) -> dict[str, str]:
    """Per profile, the precision with the lowest median latency among jobs that met their
    accuracy budget (what a deployer should ship there)."""
    best: dict[str, JobSummary] = {}
    for cell in cells:
        if not cell.succeeded or not cell.accuracy_passed or cell.median_ms is None or not cell.precision:
            continue
        current = best.get(cell.profile)
        if current is None or cell.median_ms < (current.median_ms or float("inf")):
            best[cell.profile] = cell
    return {profile: cell.precision or "" for profile, cell in best.items()}


def pareto_front(
    points: Sequence[tuple[float, float]], *, higher_is_better: bool, tolerance: float = 1e-7
) -> list[int]:
    """Indices of the points not dominated by another (lower x is better; y per ``higher_is_better``),
    in order of increasing x: the speed/accuracy frontier. A y better by no more than ``tolerance``
    (relative) does not count as better."""
    order = sorted(
        range(len(points)), key=lambda i: (points[i][0], -points[i][1] if higher_is_better else points[i][1])
    )
    front: list[int] = []
    best_y: float | None = None
    for i in order:
        y = points[i][1]
        # differences below rounding noise (cosine 1.0000000000000002 vs 0.99999996...) are no gain
        margin = tolerance * max(abs(y), abs(best_y)) if best_y is not None else 0.0
        if best_y is None or (y > best_y + margin if higher_is_better else y < best_y - margin):
            front.append(i)
            best_y = y
    return front


# ---------------------------------------------------------------------------------------------
# history


@dataclass
class HistoryPoint:
    """One build job of the history: its version, value, baseline and verdict."""

    job_id: int
    version_number: int
    version_label: str
    value: float | None
    baseline: float | None
    band: tuple[float, float] | None
    verdict: str | None
    change_pct: float | None
    finished_at: datetime | None


def history(
    session: Session,
    model: Model,
    *,
    profile: str,
    precision: str,
    batch: int,
    metric: str,
    limit: int = 200,
) -> list[HistoryPoint]:
    """The succeeded jobs of ``model`` × ``profile`` × ``precision`` × ``batch`` across versions
    (oldest first, at most ``limit`` of the newest), with ``metric``, the baseline and the noise band.

    For latency metrics the baseline is the baseline engine's value measured interleaved in the same
    job, and the band is the 95 % bootstrap interval of the change (from the latency verdict)
    applied to that baseline; for accuracy metrics the baseline is the baseline job's value.
    """
    jobs = session.execute(
        select(Job, ModelVersion)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .where(
            ModelVersion.model_id == model.id, Job.kind == JobKind.BUILD, Job.state == JobState.SUCCEEDED,
            Job.profile == profile, Job.precision == precision, Job.batch_size == batch,
        )
        .order_by(ModelVersion.number.desc(), Job.id.desc())
        .limit(limit)
        .options(*LIGHT_ROWS)
    ).all()  # fmt: skip
    jobs = list(reversed(jobs))
    ids = [job.id for job, _ in jobs]
    values: dict[int, float | None] = {}
    baselines: dict[int, float | None] = {}
    bands: dict[int, tuple[float, float]] = {}
    latency_metric = metric in LATENCY_METRICS
    if latency_metric:
        column = getattr(BenchmarkResult, LATENCY_METRICS[metric][0])
        for job_id, role, value in session.execute(
            select(BenchmarkResult.job_id, BenchmarkResult.role, column).where(
                BenchmarkResult.job_id.in_(ids)
            )
        ):
            (values if role == CANDIDATE else baselines)[job_id] = value
        if metric == "median_ms":
            for job_id, details in session.execute(
                select(Verdict.job_id, Verdict.details).where(
                    Verdict.job_id.in_(ids), Verdict.kind == "latency"
                )
            ):
                base = details.get("baseline_median_ms")
                low, high = details.get("ci_low"), details.get("ci_high")
                if base is not None and low is not None and high is not None:
                    bands[job_id] = (base * low, base * high)
    else:
        column_name, _, higher_is_better = ACCURACY_METRICS[metric]
        column = getattr(AccuracyResult, column_name)
        worst = func.max(column) if not higher_is_better else func.min(column)
        for job_id, value in session.execute(
            select(AccuracyResult.job_id, worst)
            .where(AccuracyResult.job_id.in_(ids))
            .group_by(AccuracyResult.job_id)
        ):
            values[job_id] = value
    verdicts: dict[int, tuple[str | None, float | None, int | None]] = {}
    for job_id, judged, change, baseline_job in session.execute(
        select(Verdict.job_id, Verdict.outcome, Verdict.change_pct, Verdict.baseline_job_id).where(
            Verdict.job_id.in_(ids), Verdict.kind == ("latency" if latency_metric else "accuracy")
        )
    ):
        verdicts[job_id] = (judged, change, baseline_job)
    points = []
    for job, version in jobs:
        outcome, change, baseline_job = verdicts.get(job.id, (None, None, None))
        baseline = baselines.get(job.id) if latency_metric else values.get(baseline_job or -1)
        points.append(
            HistoryPoint(
                job_id=job.id, version_number=version.number, version_label=version.display_label,
                value=values.get(job.id), baseline=baseline, band=bands.get(job.id), verdict=outcome,
                change_pct=change, finished_at=job.finished_at,
            )
        )  # fmt: skip
    return points


def history_choices(session: Session, model: Model) -> dict[str, list[Any]]:
    """The profiles, precisions and batch sizes ``model`` has build jobs for."""
    rows = session.execute(
        select(Job.profile, Job.precision, Job.batch_size)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .where(ModelVersion.model_id == model.id, Job.kind == JobKind.BUILD)
        .distinct()
    ).all()
    return {
        "profiles": sorted({r[0] for r in rows}),
        "precisions": sorted({r[1] for r in rows if r[1]}, key=precision_sort_key),
        "batch_sizes": sorted({r[2] for r in rows if r[2] is not None}),
    }


# ---------------------------------------------------------------------------------------------
# one job with everything it produced (job, engine and compare pages)


@dataclass
class JobDetail:
    """A build job, its version and model, engine, benchmark rows, accuracy rows and verdicts."""

    job: Job
    version: ModelVersion
    model: Model
    engine: Engine | None
    benchmarks: list[BenchmarkResult]
    accuracy: list[AccuracyResult]
    verdicts: dict[str, Verdict]

    @property
    def candidate(self) -> BenchmarkResult | None:
        """The job's own engine's benchmark (not the interleaved baseline's)."""
        return next((b for b in self.benchmarks if b.role == CANDIDATE), None)

    @property
    def baseline_benchmark(self) -> BenchmarkResult | None:
        """The baseline engine's benchmark measured interleaved in this job, if any."""
        return next((b for b in self.benchmarks if b.role != CANDIDATE), None)

    @property
    def title(self) -> str:
        """``model vN · profile · precision · batch B``."""
        return (
            f"{self.model.name} {self.version.display_label} · {self.job.profile} · "
            f"{self.job.precision or self.job.kind.value} · batch {self.job.batch_size}"
        )


def job_detail(session: Session, job_id: int, *, with_samples: bool = True) -> JobDetail | None:
    """Everything ``job_id`` produced, or ``None`` when there is no such job."""
    row = session.execute(
        select(Job, ModelVersion, Model)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .where(Job.id == job_id)
    ).first()
    if row is None:
        return None
    job, version, model = row
    engine = session.execute(select(Engine).where(Engine.job_id == job_id)).scalar_one_or_none()
    bench_query = select(BenchmarkResult).where(BenchmarkResult.job_id == job_id).order_by(BenchmarkResult.id)
    if not with_samples:
        from sqlalchemy.orm import defer

        bench_query = bench_query.options(defer(BenchmarkResult.samples_ms))
    benchmarks = list(session.execute(bench_query).scalars())
    accuracy = list(
        session.execute(
            select(AccuracyResult).where(AccuracyResult.job_id == job_id).order_by(AccuracyResult.id)
        ).scalars()
    )
    verdicts = {v.kind: v for v in session.execute(select(Verdict).where(Verdict.job_id == job_id)).scalars()}
    return JobDetail(job, version, model, engine, benchmarks, accuracy, verdicts)


def engine_job_id(session: Session, engine_id: int) -> int | None:
    """The job that built engine ``engine_id``."""
    return session.execute(select(Engine.job_id).where(Engine.id == engine_id)).scalar_one_or_none()


def matching_job(
    session: Session, model: Model, version_number: int, *, profile: str, precision: str, batch: int
) -> int | None:
    """The newest succeeded job of one version × profile × precision × batch, or ``None``."""
    return session.execute(
        select(Job.id)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .where(
            ModelVersion.model_id == model.id, ModelVersion.number == version_number,
            Job.kind == JobKind.BUILD, Job.state == JobState.SUCCEEDED, Job.profile == profile,
            Job.precision == precision, Job.batch_size == batch,
        )
        .order_by(Job.id.desc())
        .limit(1)
    ).scalar_one_or_none()  # fmt: skip


def version_jobs(session: Session, model: Model, numbers: Sequence[int]) -> list[JobSummary]:
    """Summaries of every build job of the given version numbers of ``model``."""
    rows = session.execute(
        select(Job, ModelVersion)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .where(
            ModelVersion.model_id == model.id,
            ModelVersion.number.in_(list(numbers)),
            Job.kind == JobKind.BUILD,
        )
        .order_by(Job.id)
        .options(*LIGHT_ROWS)
    ).all()
    return summarize_jobs(session, [(job, version) for job, version in rows])


def find_model(session: Session, name: str) -> Model | None:
    """The model named ``name``."""
    return session.execute(select(Model).where(Model.name == name)).scalar_one_or_none()
