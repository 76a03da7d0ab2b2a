"""Latency measurement, trtexec-style: warm-up by time, then timed runs until both a minimum
count and a minimum duration are reached; every sample kept; summary statistics.

:func:`measure_interleaved` alternates several runners in one process (A B A B ...), which is the
only fair comparison on a shared, noisy machine (FACTS.md): quote the ratio of medians.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    """Summary of latency samples (milliseconds) for one batch size."""

    batch: int
    samples_ms: list[float] = field(repr=False)
    min_ms: float = 0.0
    mean_ms: float = 0.0
    median_ms: float = 0.0
    p90_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    cv: float = 0.0
    throughput_per_s: float = 0.0

    def to_json(self, *, with_samples: bool = False) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "samples_ms"}
        data["iterations"] = len(self.samples_ms)
        if with_samples:
            data["samples_ms"] = list(self.samples_ms)
        return data


def latency_stats(samples_ms: list[float], batch: int = 1) -> LatencyStats:
    """Min/mean/median/p90/p95/p99/max, coefficient of variation and throughput (items/s)."""
    if not samples_ms:
        raise ValueError("no latency samples")
    arr = np.asarray(samples_ms, dtype=np.float64)
    mean = float(arr.mean())
    return LatencyStats(
        batch=batch,
        samples_ms=list(samples_ms),
        min_ms=float(arr.min()),
        mean_ms=mean,
        median_ms=float(np.median(arr)),
        p90_ms=float(np.percentile(arr, 90)),
        p95_ms=float(np.percentile(arr, 95)),
        p99_ms=float(np.percentile(arr, 99)),
        max_ms=float(arr.max()),
        cv=float(arr.std() / mean) if mean > 0 else 0.0,
        throughput_per_s=batch * 1e3 / mean if mean > 0 else math.inf,
    )


def measure(
    run: Callable[[], Any],
    *,
    batch: int = 1,
    warmup_ms: float = 200.0,
    duration_s: float = 3.0,
    iterations: int = 10,
) -> LatencyStats:
    """Time ``run()``: warm up for ``warmup_ms``, then run until at least ``iterations`` runs
    AND ``duration_s`` seconds."""
    warm_end = time.perf_counter() + warmup_ms / 1e3
    run()
    while time.perf_counter() < warm_end:
        run()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < iterations or time.perf_counter() - started < duration_s:
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
    return latency_stats(samples, batch)


def measure_interleaved(
    runners: Mapping[str, Callable[[], Any]],
    *,
    batch: int = 1,
    warmup_ms: float = 200.0,
    duration_s: float = 3.0,
    iterations: int = 10,
    block_ms: float = 0.0,
) -> dict[str, LatencyStats]:
    """Like :func:`measure` for several runners, alternating them so they share the same machine
    conditions. The duration and count apply to each runner.

    With ``block_ms`` 0 the runners alternate run by run. With ``block_ms`` > 0 each turn runs one
    runner back to back for about ``block_ms`` and drops the turn's first run: runtimes whose idle
    threads keep spinning for a while after a call (ONNX Runtime's intra-op pool, OpenBLAS) then
    do not slow each other down, while slow drifts of the machine still reach every runner alike.
    Use blocks when comparing different runtimes; run-by-run suits engines of one runtime."""
    for run in runners.values():
        run()
    warm_end = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < warm_end:
        for run in runners.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    started = time.perf_counter()
    rounds = 0
    while min(
        len(s) for s in samples.values()
    ) < iterations or time.perf_counter() - started < duration_s * len(runners):
        order = list(runners.items())
        if rounds % 2:
            order.reverse()  # neither runner always goes first (caches, turbo)
        for name, run in order:
            if block_ms > 0:
                run()  # the turn's first run pays for the previous runner's threads
            turn_end = time.perf_counter() + block_ms / 1e3
            while True:
                t = time.perf_counter()
                run()
                now = time.perf_counter()
                samples[name].append((now - t) * 1e3)
                if now >= turn_end:
                    break
        rounds += 1
    return {name: latency_stats(s, batch) for name, s in samples.items()}


def layer_profile(context: Any, feeds: Mapping[str, np.ndarray], runs: int = 10) -> list[dict[str, Any]]:
    """Per-layer mean/median time over ``runs`` profiled runs of an execution context, slowest
    first, with each layer's share of the total."""
    context.layer_times_ms.clear()
    for _ in range(runs):
        context.run(feeds, profile=True)
    kernels = {k.node.name: k for k in context.engine.kernels}
    total = sum(statistics.mean(v) for v in context.layer_times_ms.values()) or 1.0
    rows = []
    for name, times in context.layer_times_ms.items():
        k = kernels[name]
        mean = statistics.mean(times)
        rows.append(
            {
                "name": name,
                "op_type": k.node.op_type,
                "tactic": k.tactic.name,
                "mean_ms": mean,
                "median_ms": statistics.median(times),
                "share": mean / total,
            }
        )
    return sorted(rows, key=lambda r: -r["mean_ms"])
