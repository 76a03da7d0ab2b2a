"""How much of each layer's time in a model is the cache state the rest of the model leaves.

Builds a zoo model (or an ``.onnx`` file, as ``profile_vs_ort.py`` does), then times every step
of the engine three ways:

* **model**: inside whole runs (the engine's per-layer profile, median of ``--runs``);
* **hot**: the step alone, called again and again, so its weights, input and output stay in
  cache from one call to the next (what the tuner and ``bench_kernels_vs_ort.py`` measure);
* **flushed**: the step alone after 64 MiB of other memory was written, so that nothing of it
  is left in the core's L2.

A layer whose *model* time is far above its *hot* time waits on memory that the layers before
it pushed out of cache or left in the other core's; software prefetch (``_simd16.vprefetch``)
or a different task split is the remedy, not faster arithmetic. Rows are sorted by what the
model costs above hot.

    .venv/bin/python benchmarks/kernels/layer_cache_state.py resnet --batch 1 [--top 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# the repository root, for ``benchmarks.zoo_vs_ort`` (this file runs as a script)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FLUSH_BYTES = 64 << 20


def _step_call(step: Any) -> Callable[[], None] | None:
    """The step as a call on its bound arrays, or None for a step that reads a feed or makes a
    fresh output (those arrays exist only inside a run)."""
    if step.call is not None:
        return step.call  # type: ignore[no-any-return]
    if step.mode != "kernel" or step.in_patch or step.out_patch:
        return None
    kernel, ins, outs, prepared = step.kernel, step.ins, step.outs, step.prepared
    return lambda: kernel.tactic.run(kernel.node, ins, outs, prepared)


def _ms(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=20, help="calls per step for hot and flushed")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tuning-level", type=int, default=2)
    parser.add_argument(
        "--disable-tactic", action="append", default=[], help="a tactic the tuner may not pick (repeatable)"
    )
    parser.add_argument(
        "--input", action="append", default=[], help="NAME=DxDx.. (or NAME=VALUE for a scalar)"
    )
    args = parser.parse_args()

    from benchmarks.kernels.profile_vs_ort import build_engine, layer_medians

    engine, _, feeds = build_engine(
        args.model, args.batch, args.input, args.tuning_level, tuple(args.disable_tactic)
    )
    context = engine.create_context()
    in_model = layer_medians(context, feeds, args.runs, warmup=10)

    flush = np.ones(FLUSH_BYTES // 4, np.float32)
    rows = []
    for step in context.bound_steps(feeds):
        call = _step_call(step)
        name = step.kernel.node.name
        if call is None or name not in in_model:
            continue
        hot = [_ms(call) for _ in range(args.repeats + 3)][3:]
        flushed = []
        for _ in range(args.repeats):
            flush += 1.0
            flushed.append(_ms(call))
        rows.append(
            (
                name,
                step.kernel.tactic.name,
                in_model[name],
                statistics.median(hot),
                statistics.median(flushed),
            )
        )

    print(f"{args.model} batch {args.batch}: ms per layer (median); model - hot first")
    print(f"{'layer':48s} {'tactic':30s} {'model':>8s} {'hot':>8s} {'flushed':>8s} {'model/hot':>9s}")
    for name, tactic, model_ms, hot_ms, flushed_ms in sorted(rows, key=lambda r: r[3] - r[2])[: args.top]:
        print(
            f"{name[-48:]:48s} {tactic:30s} {model_ms:8.3f} {hot_ms:8.3f} {flushed_ms:8.3f} "
            f"{model_ms / max(hot_ms, 1e-9):9.2f}"
        )
    model_sum, hot_sum, flushed_sum = (sum(r[i] for r in rows) for i in (2, 3, 4))
    print(
        f"these {len(rows)} layers: model {model_sum:.3f} ms, hot {hot_sum:.3f} ms, "
        f"flushed {flushed_sum:.3f} ms"
    )


if __name__ == "__main__":
    main()
