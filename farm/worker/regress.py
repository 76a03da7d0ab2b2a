"""Pipeline step ``verdict``: is this engine slower or less accurate than its baseline?

Baseline: the latest succeeded build job of the same model name, profile, precision and batch
size on an earlier version (by version number); or, when the submission names one
(``options["baseline"] = {"version": N | "label"}`` or ``{"branch": "main"}``), the latest succeeded
job of that version or of the newest version on that branch.

Latency: the baseline engine is benchmarked **interleaved** with the new one on this host, so
sample ``i`` of both comes from the same round and sees the same machine. The change is the
median of the per-round ratios new_i / baseline_i (a burst of load slows both runs of a round and
cancels out of its ratio). Its 95 % confidence interval comes from a paired bootstrap
(resampling rounds, 2,000 resamples, fixed seed); the Wilcoxon signed-rank p-value on the
per-round log ratios and the plain ratio of medians are reported alongside. A regression needs
BOTH a change above the threshold (default 5 %) AND an interval entirely above 1 (the slowdown
is significant); an improvement is the mirror image; anything else is unchanged. See
docs/REGRESSIONS.md.

Accuracy: a missed budget fails the verdict; with a baseline, a worst-output cosine similarity
lower than the baseline's by more than the margin (default 0.001) is a regression, higher by more
than the margin an improvement.

Overall: failed (accuracy budget missed, or the job failed) > regressed > improved > unchanged;
``no_baseline`` when there is nothing to compare with and the budget is met.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db import Engine as EngineRow
from farm.db import Job, JobKind, JobState, ModelVersion

DEFAULT_LATENCY_THRESHOLD_PCT = 5.0
DEFAULT_ACCURACY_MARGIN = 1e-3
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261121
MAX_BENCHMARK_EXTENSIONS = 4  # more interleaved rounds while a large change is not yet significant

IMPROVED, UNCHANGED, REGRESSED, FAILED, NO_BASELINE = (  # verdict outcomes
    "improved",
    "unchanged",
    "regressed",
    "failed",
    "no_baseline",
)


def find_baseline(session: Session, job: Job, options: Mapping[str, Any] | None = None) -> Job | None:
    """The baseline job of ``job`` (see the module docstring), or ``None``; it always has an engine."""
    version = job.model_version
    query = (
        select(Job)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .join(EngineRow, EngineRow.job_id == Job.id)
        .where(
            Job.id != job.id,
            Job.kind == JobKind.BUILD,
            Job.state == JobState.SUCCEEDED,
            Job.profile == job.profile,
            Job.precision == job.precision,
            Job.batch_size == job.batch_size,
            ModelVersion.model_id == version.model_id,
        )
    )
    named = dict((options or {}).get("baseline") or {})
    if "version" in named:
        wanted = str(named["version"])
        match = ModelVersion.label == wanted
        if wanted.isdigit():
            match = match | (ModelVersion.number == int(wanted))
        elif wanted.startswith("v") and wanted[1:].isdigit():
            match = match | (ModelVersion.number == int(wanted[1:]))
        query = query.where(match)
    elif "branch" in named:
        query = query.where(ModelVersion.branch == str(named["branch"]), ModelVersion.id != version.id)
    else:
        query = query.where(ModelVersion.number < version.number)
    query = query.order_by(ModelVersion.number.desc(), Job.finished_at.desc(), Job.id.desc()).limit(1)
    return session.execute(query).scalars().first()


@dataclass
class LatencyComparison:
    """The latency verdict and the numbers behind it."""

    outcome: str
    ratio: float  # median of the per-round ratios new_i / baseline_i
    ratio_of_medians: float
    change_pct: float
    ci_low: float
    ci_high: float
    p_value: float | None
    threshold_pct: float
    pairs: int
    candidate_median_ms: float
    baseline_median_ms: float
    method: str = "median of paired ratios, paired bootstrap CI (95%); Wilcoxon signed-rank p on log ratios"

    def to_json(self) -> dict[str, Any]:
        """The comparison as JSON."""
        return asdict(self)


def compare_latency(
    candidate_ms: Sequence[float],
    baseline_ms: Sequence[float],
    *,
    threshold_pct: float = DEFAULT_LATENCY_THRESHOLD_PCT,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> LatencyComparison:
    """Judge paired latency samples (sample ``i`` of both from the same interleaved round)."""
    pairs = min(len(candidate_ms), len(baseline_ms))
    if pairs < 5:
        raise ValueError(f"need at least 5 paired samples to compare latencies, got {pairs}")
    new = np.asarray(candidate_ms[:pairs], dtype=np.float64)
    old = np.asarray(baseline_ms[:pairs], dtype=np.float64)
    log_ratios = np.log(new) - np.log(old)
    ratio = float(np.exp(np.median(log_ratios)))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, pairs, size=(resamples, pairs))
    resampled = np.exp(np.median(log_ratios[picks], axis=1))
    tail = (1 - CONFIDENCE) / 2 * 100
    ci_low, ci_high = (float(v) for v in np.percentile(resampled, [tail, 100 - tail]))
    change_pct = (ratio - 1) * 100
    if change_pct > threshold_pct and ci_low > 1:
        outcome = REGRESSED
    elif change_pct < -threshold_pct and ci_high < 1:
        outcome = IMPROVED
    else:
        outcome = UNCHANGED
    return LatencyComparison(
        outcome=outcome,
        ratio=ratio,
        ratio_of_medians=float(np.median(new) / np.median(old)),
        change_pct=change_pct,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=_wilcoxon_p(log_ratios),
        threshold_pct=threshold_pct,
        pairs=pairs,
        candidate_median_ms=float(np.median(new)),
        baseline_median_ms=float(np.median(old)),
    )


def undecided(comparison: LatencyComparison) -> bool:
    """A change beyond the threshold whose interval still includes 1: more samples may decide it."""
    return comparison.outcome == UNCHANGED and abs(comparison.change_pct) > comparison.threshold_pct


def _wilcoxon_p(log_ratios: np.ndarray) -> float | None:
    from scipy.stats import wilcoxon

    if not np.any(log_ratios):
        return 1.0
    try:
        return float(wilcoxon(log_ratios).pvalue)
    except ValueError:  # too few non-zero differences
        return None


@dataclass
class AccuracyJudgement:
    """The accuracy verdict: the budget, and the margin against the baseline's worst cosine."""

    outcome: str
    passed_budget: bool
    failures: list[str]
    cosine: float | None
    baseline_cosine: float | None
    margin: float

    def to_json(self) -> dict[str, Any]:
        """The judgement as JSON."""
        return asdict(self)


def judge_accuracy(
    *,
    passed_budget: bool,
    failures: Sequence[str],
    cosine: float | None,
    baseline_cosine: float | None,
    margin: float = DEFAULT_ACCURACY_MARGIN,
) -> AccuracyJudgement:
    """Budget first (a miss fails), then the margin against the baseline when there is one."""
    if not passed_budget:
        outcome = FAILED
    elif baseline_cosine is None or cosine is None:
        outcome = NO_BASELINE
    elif cosine < baseline_cosine - margin:
        outcome = REGRESSED
    elif cosine > baseline_cosine + margin:
        outcome = IMPROVED
    else:
        outcome = UNCHANGED
    return AccuracyJudgement(outcome, passed_budget, list(failures), cosine, baseline_cosine, margin)


def overall_outcome(latency: str | None, accuracy: str) -> str:
    """One verdict for the job: failed > regressed > improved > unchanged > no_baseline."""
    outcomes = {accuracy} | ({latency} if latency else set())
    for outcome in (FAILED, REGRESSED, IMPROVED, UNCHANGED):
        if outcome in outcomes:
            return outcome
    return NO_BASELINE


def finite_or_none(value: float | None) -> float | None:
    """``value`` when it is a finite number, else ``None`` (JSON and SQL have no infinities)."""
    return value if value is not None and math.isfinite(value) else None
