"""Pipeline step ``build``: compile the job's model for its profile, precision and batch size.

The compiler (:func:`farm.compiler.build`) does the work; this step turns a job and its
submission's options into a :class:`~farm.compiler.BuilderConfig`, hands it the profile's
database-backed timing cache (:class:`~farm.worker.timing_cache.DatabaseTimingCache`), and
reports the build time and the cache's hits and misses.

Submission options read here (all optional): ``tuning_level`` (0-3, default 1), ``input_shapes``
(``{"input_ids": [1, 128]}`` for models with symbolic dims other than the batch),
``disabled_passes``, ``disabled_tactics`` (tactic name globs), ``in_engine_tuning`` (default
true), ``strict_precision``, ``layer_precision``, ``calibrator``, ``threads`` (cores the engine
runs on; default all).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from farm.compiler import BuilderConfig, Engine, build
from farm.worker.timing_cache import DatabaseTimingCache

DEFAULT_TUNING_LEVEL = 1


@dataclass
class BuildOutcome:
    """A built engine, its serialized bytes, how long the build took and the cache's use."""

    engine: Engine
    data: bytes
    seconds: float
    cache_hits: int
    cache_misses: int

    @property
    def cache_hit_rate(self) -> float | None:
        """Hits over lookups (``None`` when the build looked nothing up)."""
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else None


def builder_config(
    *,
    precision: str,
    batch: int,
    options: Mapping[str, Any],
    timing_cache: DatabaseTimingCache,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> BuilderConfig:
    """The compiler's config for one job: tuned at ``batch``, accepting batches 1..``batch``."""
    return BuilderConfig(
        precision=precision,
        tuning_level=int(options.get("tuning_level", DEFAULT_TUNING_LEVEL)),
        timing_cache=timing_cache,
        batch_range=(1, batch, batch),
        input_shapes={k: [int(d) for d in v] for k, v in dict(options.get("input_shapes") or {}).items()},
        disabled_passes=tuple(options.get("disabled_passes") or ()),
        disabled_tactics=tuple(options.get("disabled_tactics") or ()),
        in_engine_tuning=options.get("in_engine_tuning") is not False,
        strict=bool(options.get("strict_precision", False)),
        layer_precision=options.get("layer_precision") or {},
        calibration=calibration if precision in ("int8", "best") else None,
        calibrator=str(options.get("calibrator", "entropy")),
        threads=int(options["threads"]) if options.get("threads") else None,
    )


def build_engine(
    model_path: Path,
    *,
    profile: str,
    config: BuilderConfig,
    timing_cache: DatabaseTimingCache,
    progress: Callable[[str, int, int, str], None],
) -> BuildOutcome:
    """Build, flush the new timings to the shared cache, and serialize the engine."""
    started = time.perf_counter()
    engine = build(model_path, profile, config, progress=progress)
    seconds = time.perf_counter() - started
    timing_cache.flush()
    cache_report = engine.report.get("timing_cache", {})
    return BuildOutcome(
        engine=engine,
        data=engine.to_bytes(),
        seconds=seconds,
        cache_hits=int(cache_report.get("hits", timing_cache.hits)),
        cache_misses=int(cache_report.get("misses", timing_cache.misses)),
    )
