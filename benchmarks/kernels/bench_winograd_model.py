"""A whole zoo model (default: ResNet-18 at 224x224) with and without the Winograd conv tactics,
against ONNX Runtime, interleaved in one process.

Two engines are built for the batch (tuning level 2, fresh timing caches): one with every
registered tactic, one with the ``cpu.conv.winograd*`` tactics hidden from the tuner (what the
engine was before they existed). Both and ORT (``intra_op_num_threads`` = the engine's threads)
then run the same feeds, alternating run by run; the script prints the medians, the ratios of
medians, how many convs the tuner gave to each Winograd tactic, and the relative L2 error of
each engine's output against ORT's.

    .venv/bin/python benchmarks/kernels/bench_winograd_model.py [--model resnet] [--batch 1 8]
        [--threads 2] [--duration-s 2]
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from farm import zoo
from farm.compiler.accuracy import onnxruntime_session
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.kernels import registry
from farm.compiler.kernels.threads import available_cores
from farm.compiler.tuner.cache import MemoryTimingCache

WINOGRAD_PREFIX = "cpu.conv.winograd"


@contextmanager
def without_winograd() -> Iterator[None]:
    """Hide the Winograd tactics from the tuner (``registry.candidates``) inside."""
    registry.load_backend("cpu")
    saved = {op: list(tactics) for op, tactics in registry._BY_OP.items()}
    for tactics in registry._BY_OP.values():
        tactics[:] = [t for t in tactics if not t.name.startswith(WINOGRAD_PREFIX)]
    try:
        yield
    finally:
        for op, tactics in saved.items():
            registry._BY_OP[op][:] = tactics


def compare(args: argparse.Namespace, onnx_bytes: bytes, batch: int, threads: int) -> None:
    """Build both engines for ``batch`` and time them against ORT."""
    feeds = zoo.sample_inputs(args.model, batch, seed=0)

    def config() -> BuilderConfig:
        return BuilderConfig(
            tuning_level=args.tuning_level,
            timing_cache=MemoryTimingCache(),
            batch_range=(batch, batch, batch),
            input_shapes={k: list(v.shape) for k, v in feeds.items()},
            threads=threads,
        )

    with_wino = build(onnx_bytes, "cpu", config())
    with without_winograd():
        previous = build(onnx_bytes, "cpu", config())
    chosen = Counter(
        row["tactic"] for row in with_wino.describe_layers() if row["tactic"].startswith("cpu.conv")
    )
    session = onnxruntime_session(onnx_bytes, threads=threads)
    names = [o.name for o in session.get_outputs()]
    want = session.run(names, feeds)[0].astype(np.float64)
    contexts = {"winograd": with_wino.create_context(), "previous": previous.create_context()}
    errors = {}
    for key, ctx in contexts.items():
        got = ctx.run(feeds)[names[0]].astype(np.float64)
        errors[key] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    load_start = os.getloadavg()
    stats = measure_interleaved(
        {
            "winograd": lambda: contexts["winograd"].run(feeds),
            "previous": lambda: contexts["previous"].run(feeds),
            "ort": lambda: session.run(names, feeds),
        },
        batch=batch,
        warmup_ms=300,
        duration_s=args.duration_s,
        iterations=args.iterations,
    )
    med = {k: v.median_ms for k, v in stats.items()}
    print(
        f"{args.model} batch {batch}, {threads} threads: ORT {med['ort']:.2f} ms, previous {med['previous']:.2f} ms, "
        f"with Winograd {med['winograd']:.2f} ms; winograd/ORT {med['winograd'] / med['ort']:.3f}, "
        f"winograd/previous {med['winograd'] / med['previous']:.3f}, previous/ORT {med['previous'] / med['ort']:.3f}; "
        f"runs {len(stats['ort'].samples_ms)}; rel L2 vs ORT {errors['winograd']:.1e} / {errors['previous']:.1e}; "
        f"load average {' '.join(f'{x:.1f}' for x in load_start)} -> {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    print(f"  conv tactics chosen: {dict(chosen)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tuning-level", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    threads = args.threads or available_cores()
    onnx_bytes = zoo.build_model(args.model).SerializeToString()
    for batch in args.batch:
        compare(args, onnx_bytes, batch, threads)


if __name__ == "__main__":
    main()
