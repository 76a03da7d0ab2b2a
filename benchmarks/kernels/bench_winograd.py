"""Winograd conv tactics against our previous best conv tactic and ONNX Runtime, per layer.

The 3x3 stride-1 convs of ResNet-18 at 224x224 (64->64 @56, 128->128 @28, 256->256 @14,
512->512 @7, with fused ReLU, and the residual form of each), at batch 1 and 8:

* ONNX Runtime runs the layer as a small ONNX model (Conv -> [Add] -> Relu, which it fuses),
  ``intra_op_num_threads`` = the threads we use;
* "previous" is the fastest of our other conv tactics for the node (picked by a short timing
  first: im2col_gemm, its batched / wide / single-thread forms);
* ``cpu.conv.winograd`` (F(4x4, 3x3)) and ``cpu.conv.winograd_f2`` (F(2x2, 3x3)).

All four are timed **interleaved** in one process, in rotating order (each round runs every
runner once untimed, then once timed), and the script prints the medians and the ratios of
medians: best Winograd / ORT, best Winograd / previous, previous / ORT (< 1: the first is
faster), and each one's relative L2 error against ORT's output.

    .venv/bin/python benchmarks/kernels/bench_winograd.py [--batch 1 8] [--threads 2]
        [--min-time 1.0] [--cpu-time] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels_vs_ort import conv_layer  # noqa: E402

from farm.compiler.kernels import candidates  # noqa: E402
from farm.compiler.kernels.threads import configure_threads, threading_layer  # noqa: E402

LAYERS = [
    conv_layer(64, 64, 56, 3, 1),
    conv_layer(64, 64, 56, 3, 1, residual=True),
    conv_layer(128, 128, 28, 3, 1),
    conv_layer(128, 128, 28, 3, 1, residual=True),
    conv_layer(256, 256, 14, 3, 1),
    conv_layer(256, 256, 14, 3, 1, residual=True),
    conv_layer(512, 512, 7, 3, 1),
    conv_layer(512, 512, 7, 3, 1, residual=True),
]
WINOGRAD = ("cpu.conv.winograd", "cpu.conv.winograd_f2")
CLOCK = time.perf_counter


def _timed(fn: Callable[[], Any]) -> float:
    fn()
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def interleaved(
    runners: dict[str, Callable[[], Any]], min_time: float, min_rounds: int = 15
) -> dict[str, float]:
    """Median seconds of each runner, timed round by round in rotating order."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for name in order:
            times[name].append(_timed(runners[name]))
        rounds += 1
        if rounds >= 500:
            break
    return {n: float(np.median(t)) for n, t in times.items()}


def bench(layer: Any, batch: int, threads: int, min_time: float) -> dict[str, Any]:
    model, feeds, graph = layer.make(batch, np.random.default_rng(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    node = graph.nodes[0]
    ours: dict[str, Callable[[], Any]] = {}
    outs: dict[str, np.ndarray] = {}
    for tactic in candidates(node, graph):
        if tactic.name.startswith("cpu.numpy"):
            continue
        prepared = tactic.prepare(node, graph)
        arrays = [feeds.get(n) if n in feeds else graph.const(n) for n in node.inputs]
        inputs = [None if i in prepared.replaces else a for i, a in enumerate(arrays)]
        out = outs[tactic.name] = np.empty(expected.shape, np.float32)
        ours[tactic.name] = lambda t=tactic, p=prepared, i=inputs, o=out: t.run(node, i, [o], p)
    previous = {n: f for n, f in ours.items() if n not in WINOGRAD and not n.startswith("cpu.conv.winograd")}
    quick = interleaved(previous, 0.0, min_rounds=5)
    prev_name = min(quick, key=quick.__getitem__)
    runners = {"ort": lambda: session.run(None, feeds), "previous": previous[prev_name]}
    runners.update({n: ours[n] for n in WINOGRAD})
    med = interleaved(runners, min_time)
    errors = {}
    for n in (prev_name, *WINOGRAD):
        ours[n]()
        diff = outs[n].astype(np.float64) - expected
        errors[n] = float(np.linalg.norm(diff) / np.linalg.norm(expected.astype(np.float64)))
    best = min(WINOGRAD, key=med.__getitem__)
    return {
        "layer": layer.label,
        "batch": batch,
        "ms": {k: 1e3 * v for k, v in med.items()},
        "previous_tactic": prev_name,
        "best_winograd": best,
        "winograd_vs_ort": med[best] / med["ort"],
        "winograd_vs_previous": med[best] / med["previous"],
        "previous_vs_ort": med["previous"] / med["ort"],
        "rel_l2_vs_ort": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of interleaved timing per layer")
    parser.add_argument("--only", nargs="*", help="label substrings")
    parser.add_argument(
        "--cpu-time", action="store_true", help="one thread each, timed by the thread's CPU time"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        args.threads = 1
    threads = configure_threads(1, args.threads)
    print(
        f"threads={threads} numba layer={threading_layer()} clock={'cpu' if args.cpu_time else 'wall'} "
        f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"{'layer':34s} {'b':>2s} {'ORT ms':>8s} {'prev ms':>8s} {'F4 ms':>8s} {'F2 ms':>8s} "
        f"{'wino/ORT':>8s} {'wino/prev':>9s} {'prev/ORT':>8s}  previous tactic, rel L2 F4/F2"
    )
    results = []
    for layer in LAYERS:
        if args.only and not any(o in layer.label for o in args.only):
            continue
        for batch in args.batch:
            r = bench(layer, batch, threads, args.min_time)
            results.append(r)
            ms = r["ms"]
            err = r["rel_l2_vs_ort"]
            print(
                f"{r['layer']:34s} {batch:2d} {ms['ort']:8.3f} {ms['previous']:8.3f} "
                f"{ms['cpu.conv.winograd']:8.3f} {ms['cpu.conv.winograd_f2']:8.3f} "
                f"{r['winograd_vs_ort']:8.2f} {r['winograd_vs_previous']:9.2f} {r['previous_vs_ort']:8.2f}  "
                f"{r['previous_tactic'].split('.')[-1]}, {err['cpu.conv.winograd']:.1e}/{err['cpu.conv.winograd_f2']:.1e}",
                flush=True,
            )

    def gmean(key: str) -> float:
        return math.exp(sum(math.log(r[key]) for r in results) / len(results))

    if results:
        print(
            f"geometric means over {len(results)} layer/batch pairs: wino/ORT {gmean('winograd_vs_ort'):.3f}, "
            f"wino/prev {gmean('winograd_vs_previous'):.3f}, prev/ORT {gmean('previous_vs_ort'):.3f}; "
            f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
