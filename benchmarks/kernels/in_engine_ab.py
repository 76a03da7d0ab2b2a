"""What in-engine tuning changes in a zoo model, and what it is worth as whole runs.

Builds the model twice with one timing cache, in-engine tuning off and then on, so the per-layer
tuning is the same and only the in-engine stage differs; prints the layers it changed with their
times in the engine, then times whole runs of both engines in alternating turns for
``--seconds`` in all and prints the medians and their ratio (on / off).

    .venv/bin/python benchmarks/kernels/in_engine_ab.py resnet --batch 1 [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

# the repository root (this file runs as a script)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tuning-level", type=int, default=2)
    args = parser.parse_args()

    from farm import zoo
    from farm.compiler.builder import BuilderConfig, build
    from farm.compiler.engine.benchmark import measure_interleaved
    from farm.compiler.tuner import MemoryTimingCache

    onnx_bytes = zoo.build_model(args.model).SerializeToString()
    feeds = zoo.sample_inputs(args.model, args.batch, seed=0)
    config = BuilderConfig(
        tuning_level=args.tuning_level,
        timing_cache=MemoryTimingCache(),
        batch_range=(args.batch, args.batch, args.batch),
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        in_engine_tuning=False,
    )
    off = build(onnx_bytes, "cpu", config)
    on = build(onnx_bytes, "cpu", replace(config, in_engine_tuning=True))
    report = on.report["in_engine"]
    whole = ", ".join(f"{k} {v:.3f} ms" for k, v in report["whole_ms"].items())
    print(
        f"{args.model} batch {args.batch}: in-engine tuning {report['source']}, {len(report['contests'])} "
        f"close calls, {len(report['changed'])} changed" + (f" (build-time check: {whole})" if whole else "")
    )
    for node, (old, new) in report["changed"].items():
        times = report["layer_ms"].get(node, {})
        shown = ", ".join(f"{name} {ms:.3f}" for name, ms in sorted(times.items(), key=lambda kv: kv[1]))
        print(f"  {node}: {old} -> {new}  [ms in the engine: {shown}]")

    off_context, on_context = off.create_context(), on.create_context()
    stats = measure_interleaved(
        {"off": lambda: off_context.run(feeds), "on": lambda: on_context.run(feeds)},
        batch=args.batch,
        duration_s=args.seconds / 2,
    )
    off_ms, on_ms = stats["off"].median_ms, stats["on"].median_ms
    print(
        f"whole runs, {len(stats['on'].samples_ms)} each: off {off_ms:.3f} ms, on {on_ms:.3f} ms, "
        f"ratio {on_ms / off_ms:.3f}"
    )


if __name__ == "__main__":
    main()
