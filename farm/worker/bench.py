"""Pipeline step ``benchmark``: latency and throughput of an engine on this host, trtexec-style.

Method (the measurement itself is the compiler's, :mod:`farm.compiler.engine.benchmark`, the one
``farm bench`` uses): warm up for a fixed time, then time runs until BOTH a minimum count and a
minimum duration are reached; every per-run sample is kept; the statistics are min, mean, median,
p90/p95/p99, max, throughput (items per second at the job's batch) and the coefficient of
variation. With a baseline engine, both engines run interleaved (A B B A …) in one process, so they
see the same machine conditions; the verdict then compares the paired samples (see ``regress``).

The host's state is recorded with every result: the host fingerprint, load average, CPU frequency
and governor where readable, available memory, and the threads the run used. The CPU backend runs
on the host; a GPU profile would time on the device with CUDA events (the CUDA backend is not part
of this compiler yet, see the issue notes).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from farm.compiler import Engine
from farm.compiler.engine.benchmark import LatencyStats, measure, measure_interleaved
from farm.profiles import detect_host, meminfo_bytes


@dataclass(frozen=True)
class BenchmarkSettings:
    """How long to measure: warm-up time, then at least ``min_iterations`` AND ``min_duration_s``."""

    warmup_ms: float = 200.0
    min_iterations: int = 30
    min_duration_s: float = 1.0

    @staticmethod
    def from_options(options: Mapping[str, Any] | None) -> BenchmarkSettings:
        """Settings from a submission's ``benchmark`` options (unknown keys are an error)."""
        options = dict(options or {})
        known = {"warmup_ms", "min_iterations", "min_duration_s"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown benchmark option(s) {unknown}; known: {sorted(known)}")
        settings = BenchmarkSettings(
            **{key: type(getattr(BenchmarkSettings, key))(v) for key, v in options.items()}
        )
        if settings.warmup_ms < 0 or settings.min_iterations < 1 or settings.min_duration_s < 0:
            raise ValueError(
                "benchmark options must be warmup_ms >= 0, min_iterations >= 1, min_duration_s >= 0"
            )
        return settings

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON."""
        return asdict(self)


def benchmark_engine(
    engine: Engine,
    feeds: Mapping[str, np.ndarray],
    *,
    batch: int,
    settings: BenchmarkSettings,
    check: Callable[[], None] = lambda: None,
) -> LatencyStats:
    """Latency of ``engine`` on ``feeds``; ``check()`` runs before every iteration (cancellation)."""
    context = engine.create_context()

    def run() -> None:
        check()
        context.run(feeds)

    return measure(
        run,
        batch=batch,
        warmup_ms=settings.warmup_ms,
        duration_s=settings.min_duration_s,
        iterations=settings.min_iterations,
    )


def benchmark_interleaved(
    engines: Mapping[str, Engine],
    feeds: Mapping[str, np.ndarray],
    *,
    batch: int,
    settings: BenchmarkSettings,
    check: Callable[[], None] = lambda: None,
) -> dict[str, LatencyStats]:
    """Latency of several engines on the same ``feeds``, alternating them run by run.

    Sample ``i`` of each engine comes from the same round, so the samples are paired. Every
    engine runs under the first engine's thread setting: switching BLAS and numba thread counts
    between calls costs milliseconds and would land on whichever engine runs after the switch,
    making the paired ratios bimodal.
    """
    first = next(iter(engines.values()))
    pinned = (first.threads, first.numba_threads)
    contexts = {name: engine.create_context(threads=pinned) for name, engine in engines.items()}

    def runner(name: str) -> Callable[[], None]:
        context = contexts[name]

        def run() -> None:
            check()
            context.run(feeds)

        return run

    return measure_interleaved(
        {name: runner(name) for name in contexts},
        batch=batch,
        warmup_ms=settings.warmup_ms,
        duration_s=settings.min_duration_s,
        iterations=settings.min_iterations,
    )


def host_state() -> dict[str, Any]:
    """The host's fingerprint and its state right now (load, clocks, governor, free memory)."""
    state: dict[str, Any] = {"fingerprint": detect_host().fingerprint()}
    try:
        state["load_average"] = list(os.getloadavg())
    except OSError:
        state["load_average"] = None
    state["cpu_mhz"] = _cpu_mhz()
    state["scaling_governor"] = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    state["memory_available_bytes"] = meminfo_bytes("MemAvailable")
    state["process_cpus"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    state["platform"] = platform.platform()
    try:
        from farm.compiler.kernels.threads import threading_info

        state["threads"] = threading_info()
    except Exception as exc:  # the numbers stay useful without the thread details
        state["threads"] = {"error": f"{type(exc).__name__}: {exc}"}
    return state


def stats_to_row(stats: LatencyStats) -> dict[str, Any]:
    """The columns of a ``benchmark_results`` row for ``stats``."""
    return {
        "batch_size": stats.batch,
        "samples_ms": [round(sample, 6) for sample in stats.samples_ms],
        "count": len(stats.samples_ms),
        "min_ms": stats.min_ms,
        "mean_ms": stats.mean_ms,
        "median_ms": stats.median_ms,
        "p90_ms": stats.p90_ms,
        "p95_ms": stats.p95_ms,
        "p99_ms": stats.p99_ms,
        "max_ms": stats.max_ms,
        "throughput_per_s": stats.throughput_per_s,
        "cv": stats.cv,
    }


def _cpu_mhz() -> list[float] | None:
    values: list[float] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("cpu mhz"):
                    values.append(float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        return None
    return values or None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
