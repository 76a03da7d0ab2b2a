"""Cold vs warm timing-cache build time of one model."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from farm import zoo
from farm.compiler.builder import BuilderConfig, build


@dataclass
class BuildTimeResult:
    """Seconds for a build with an empty timing cache and a rebuild with the cache it filled."""

    model: str
    cold_s: float
    warm_s: float
    cold_misses: int
    warm_misses: int

    @property
    def ratio(self) -> float:
        return self.warm_s / self.cold_s


def cold_vs_warm(name: str, batch: int = 1, tuning_level: int = 2) -> BuildTimeResult:
    """Build ``name`` twice with one JSON timing cache file (fresh the first time)."""
    onnx_bytes = zoo.build_model(name).SerializeToString()
    shapes = {k: list(v.shape) for k, v in zoo.sample_inputs(name, batch, seed=0).items()}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "timing.json"
        config = BuilderConfig(tuning_level=tuning_level, timing_cache=cache, input_shapes=shapes,
                               batch_range=(batch, batch, batch))  # fmt: skip
        t = time.perf_counter()
        cold = build(onnx_bytes, "cpu", config)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = build(onnx_bytes, "cpu", config)
        warm_s = time.perf_counter() - t
    return BuildTimeResult(name, cold_s, warm_s, cold.report["timing_cache"]["misses"],
                           warm.report["timing_cache"]["misses"])  # fmt: skip
