"""Experiment: every zoo engine tuned *and* run with one thread pool, against ONNX Runtime.

BLAS is pinned to one thread and numba to every core for the whole build (tactic timing and the
whole-schedule thread choice, whose candidates all become this one setting) and for the runs, so
GEMMs run either single-threaded or inside numba's pool through ``_blas`` (the ``tiled`` tactics).
The process's ``GOMP_SPINCOUNT`` decides how long numba's workers stay awake between kernels; it is
read when libgomp loads, so set it in the environment. Timing as ``make bench``: ours and ORT in
turns of 250 ms, medians, ratio ours / ORT.

    for s in 1000 300000; do
        GOMP_SPINCOUNT=$s .venv/bin/python benchmarks/kernels/bench_one_pool.py mobilenet:1 bert:1 resnet:1 vit:1
    done
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from farm.compiler.engine import runtime
from farm.compiler.kernels import threads

# the repository root, for ``benchmarks.zoo_vs_ort`` (this file runs as a script)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _pin_one_pool() -> None:
    """Replace every thread setting the builder and the runtime apply by (BLAS 1, numba all)."""
    real = threads.configure_threads
    cores = threads.available_cores()

    def one_pool(blas: int | None = None, numba: int | None = None) -> int:
        return real(1, cores)

    threads.configure_threads = one_pool  # type: ignore[assignment]
    runtime.configure_threads = one_pool  # type: ignore[assignment]


def compare(spec: str, duration_s: float) -> str:
    """Build ``MODEL:BATCH`` under the pinned setting and time it against ORT; one result line."""
    from benchmarks.zoo_vs_ort import CROSS_RUNTIME_BLOCK_MS, build_zoo_engine
    from farm.compiler.accuracy import onnxruntime_session
    from farm.compiler.engine.benchmark import measure_interleaved
    from farm.compiler.tuner import MemoryTimingCache

    name, batch_text = spec.split(":")
    batch = int(batch_text)
    engine, onnx_bytes, feeds = build_zoo_engine(name, batch, MemoryTimingCache(), 2)
    session = onnxruntime_session(onnx_bytes, threads=threads.available_cores())
    names = [o.name for o in session.get_outputs()]
    context = engine.create_context()
    runners: dict[str, Any] = {"ours": lambda: context.run(feeds), "ort": lambda: session.run(names, feeds)}
    stats = measure_interleaved(
        runners, batch=batch, warmup_ms=300, duration_s=duration_s, iterations=20,
        block_ms=CROSS_RUNTIME_BLOCK_MS,
    )  # fmt: skip
    ours, ort = stats["ours"].median_ms, stats["ort"].median_ms
    spin = os.environ.get("GOMP_SPINCOUNT", "1000 (ours)")
    return (
        f"{spec} GOMP_SPINCOUNT={spin} one pool: ours {ours:.3f} ms, ORT {ort:.3f} ms, ratio {ours / ort:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="MODEL:BATCH, e.g. mobilenet:1")
    parser.add_argument("--duration-s", type=float, default=2.0)
    args = parser.parse_args()
    _pin_one_pool()
    for spec in args.specs:
        print(compare(spec, args.duration_s), flush=True)


if __name__ == "__main__":
    main()
