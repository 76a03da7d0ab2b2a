"""Every zoo model at each batch size: our engine against ONNX Runtime, interleaved in one process.

ONNX Runtime runs with default session options except the intra-op thread count, which is set to
the same number of cores our engine uses. Both run the same feeds; the ratio is median(ours) /
median(ORT), so < 1 means we are faster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from farm import zoo
from farm.compiler.accuracy import compare_arrays, onnxruntime_session
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine import Engine
from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.kernels.threads import available_cores
from farm.compiler.tuner import TimingCache


@dataclass
class ModelResult:
    """One (model, batch) comparison."""

    model: str
    batch: int
    ours_ms: float
    ort_ms: float
    ours_cv: float
    ort_cv: float
    runs: int
    rel_l2: float
    build_s: float
    memory: dict[str, Any]
    # the engine's (BLAS, numba) thread setting, "blas=B,numba=N" (chosen by the builder)
    threads: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.ort_ms

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, ratio=self.ratio)


# Ours and ONNX Runtime take turns of this long (the first run of each turn dropped): each
# runtime's threads spin for a while after a call and would otherwise tax the other's next run.
CROSS_RUNTIME_BLOCK_MS = 250.0


def build_zoo_engine(
    name: str, batch: int, cache: TimingCache, tuning_level: int, disabled_tactics: tuple[str, ...] = ()
) -> tuple[Engine, bytes, dict]:
    """The zoo model's ONNX bytes, an engine built for exactly ``batch`` (without the tactics
    named in ``disabled_tactics``), and sample feeds."""
    onnx_bytes = zoo.build_model(name).SerializeToString()
    feeds = zoo.sample_inputs(name, batch, seed=0)
    config = BuilderConfig(
        tuning_level=tuning_level,
        timing_cache=cache,
        batch_range=(batch, batch, batch),
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        disabled_tactics=disabled_tactics,
    )
    return build(onnx_bytes, "cpu", config), onnx_bytes, feeds


def compare_model(
    name: str, batch: int, cache: TimingCache, *, tuning_level: int, duration_s: float, iterations: int
) -> ModelResult:
    """Build, check accuracy, then time ours and ORT interleaved."""
    started = time.perf_counter()
    engine, onnx_bytes, feeds = build_zoo_engine(name, batch, cache, tuning_level)
    build_s = time.perf_counter() - started
    session = onnxruntime_session(onnx_bytes, threads=available_cores())
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(names, feeds), strict=True))
    context = engine.create_context()
    got = context.run(feeds)
    rel_l2 = max(compare_arrays(k, got[k], want[k]).rel_l2 for k in want)
    stats = measure_interleaved(
        {"ours": lambda: context.run(feeds), "ort": lambda: session.run(names, feeds)},
        batch=batch,
        warmup_ms=300,
        duration_s=duration_s,
        iterations=iterations,
        block_ms=CROSS_RUNTIME_BLOCK_MS,
    )
    return ModelResult(
        model=name,
        batch=batch,
        ours_ms=stats["ours"].median_ms,
        ort_ms=stats["ort"].median_ms,
        ours_cv=stats["ours"].cv,
        ort_cv=stats["ort"].cv,
        runs=len(stats["ours"].samples_ms),
        rel_l2=rel_l2,
        build_s=build_s,
        memory=engine.report["memory"],
        threads=f"blas={engine.threads or 1},numba={engine.numba_threads or 'all'}",
    )


def geometric_mean(values: list[float]) -> float:
    """exp(mean(log(values)))."""
    return float(np.exp(np.mean(np.log(values))))
