"""Autotuner and timing cache."""

from farm.compiler.tuner.autotune import (
    NodeChoice,
    TunerSettings,
    TuningError,
    compare_outputs,
    random_graph_inputs,
    tune,
)
from farm.compiler.tuner.cache import (
    JsonTimingCache,
    MemoryTimingCache,
    TimingCache,
    TimingRecord,
    op_signature,
    timing_key,
)

__all__ = [
    "JsonTimingCache",
    "MemoryTimingCache",
    "NodeChoice",
    "TimingCache",
    "TimingRecord",
    "TunerSettings",
    "TuningError",
    "compare_outputs",
    "op_signature",
    "random_graph_inputs",
    "timing_key",
    "tune",
]
