"""Precision study: every zoo model in FP32, FP16, BF16 and INT8, the table the dashboard shows.

For each model: an FP32 engine, FP16 and BF16 engines (permission: the tuner picks per layer),
an INT8 engine (``--strict``: every layer with an INT8 tactic runs INT8; entropy calibration on
``--calib`` samples of the model's input distribution) and, with ``--int8-permission``, the plain
``--precision int8`` engine (the tuner keeps FP32 where it is faster). Accuracy is measured
against FP32 ONNX Runtime on ``--val`` *other* samples (different seed): relative L2 and cosine of
every output, top-1 agreement for classifiers. Latency: median of interleaved runs at ``--batch``.
Size: the whole engine file.

    .venv/bin/python -m benchmarks.precision                  # all models, the sizes in SIZES
    .venv/bin/python -m benchmarks.precision --models resnet --val 1000 --calib 256

Model sizes are reduced (SIZES) so the study runs in minutes on a 2-core machine; the INT8
kernels are numba int8 GEMMs without VNNI and the calibration runs the numpy reference.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from farm import zoo
from farm.compiler.accuracy import compare_outputs, onnxruntime_outputs
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.engine.format import engine_to_bytes
from farm.compiler.tuner import MemoryTimingCache

SIZES: dict[str, dict[str, Any]] = {
    "mlp": {},
    "resnet": {"image_size": 64},
    "mobilenet": {"image_size": 64},
    "bert": {},
    "vit": {"image_size": 96},
}
DIMS: dict[str, dict[str, int]] = {"bert": {"seq": 64}}
CHUNK = 50


def _run_chunked(engine: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = len(next(iter(feeds.values())))
    parts = [engine.run({k: v[i : i + CHUNK] for k, v in feeds.items()}) for i in range(0, total, CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def study_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build and measure ``name`` in every precision; one row per precision."""
    options = SIZES.get(name, {})
    dims = DIMS.get(name, {})
    model = zoo.build_model(name, **options).SerializeToString()
    calib = zoo.sample_inputs(name, args.calib, seed=101, options=options, **dims)
    val = zoo.sample_inputs(name, args.val, seed=202, options=options, **dims)
    want = onnxruntime_outputs(model, val, threads=args.threads)
    cache = MemoryTimingCache()
    configs: dict[str, BuilderConfig] = {}
    shapes = {k: [args.batch, *v.shape[1:]] for k, v in val.items()}  # fixes symbolic dims such as seq
    common = {"batch_range": (1, args.batch, CHUNK), "tuning_level": args.tuning_level, "timing_cache": cache,
              "input_shapes": shapes}  # fmt: skip
    configs["fp32"] = BuilderConfig(**common)  # type: ignore[arg-type]
    configs["fp16"] = BuilderConfig(precision="fp16", **common)  # type: ignore[arg-type]
    configs["bf16"] = BuilderConfig(precision="bf16", **common)  # type: ignore[arg-type]
    configs["int8 strict"] = BuilderConfig(precision="int8", strict=True, calibration=calib,  # type: ignore[arg-type]
                                           calibrator=args.calibrator, **common)  # fmt: skip
    classifier = all(v.ndim == 2 and v.shape[1] > 2 for v in want.values())
    if args.budget and (classifier or not args.budget.startswith("top")):
        budget_val = {k: v[: args.budget_val] for k, v in zoo.sample_inputs(name, args.budget_val, seed=303,
                                                                          options=options, **dims).items()}  # fmt: skip
        configs[f"int8 + budget {args.budget}"] = BuilderConfig(  # type: ignore[arg-type]
            precision="int8", strict=True, calibration=calib, calibrator=args.calibrator,
            accuracy_budget=args.budget, validation=budget_val, **common,
        )  # fmt: skip
    if args.int8_permission:
        configs["int8"] = BuilderConfig(
            precision="int8", calibration=calib, calibrator=args.calibrator, **common
        )  # type: ignore[arg-type]
    rows = []
    engines = {}
    for label, config in configs.items():
        started = time.perf_counter()
        engine = build(model, "cpu", config)
        build_s = time.perf_counter() - started
        engines[label] = engine
        got = _run_chunked(engine, val)
        metrics = compare_outputs(got, want)
        counts = dict(engine.report["precision_layers"]["counts"])
        if "accuracy_budget" in engine.report:
            counts["kept fp32 by budget"] = len(engine.report["accuracy_budget"]["kept_fp32"])
        rows.append({
            "model": name, "options": options, "precision": label, "build_s": round(build_s, 1),
            "size_bytes": len(engine_to_bytes(engine)), "layers": counts,
            "outputs": {m.name: {"rel_l2": m.rel_l2, "cosine": m.cosine, "top1": m.top1} for m in metrics},
        })  # fmt: skip
    batch_feeds = {k: v[: args.batch] for k, v in val.items()}
    runners = {label: (lambda e=e: e.run(batch_feeds)) for label, e in engines.items()}
    stats = measure_interleaved(runners, batch=args.batch, duration_s=args.duration, iterations=10)
    fp32_size = rows[0]["size_bytes"]
    for row in rows:
        row["median_ms"] = stats[row["precision"]].median_ms
        row["size_vs_fp32"] = row["size_bytes"] / fp32_size
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table for docs/BENCHMARKS.md."""
    lines = [
        "| model | precision | layers | latency ms (median) | size | size / FP32 | rel L2 vs ORT FP32 | cosine | top-1 agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out_name, m = next(iter(r["outputs"].items()))
        if r["model"] == "bert":
            out_name, m = "pooler_output", r["outputs"]["pooler_output"]
        layers = ", ".join(f"{n} {p}" for p, n in r["layers"].items() if not p.startswith("kept"))
        if "kept fp32 by budget" in r["layers"]:
            layers += f" ({r['layers']['kept fp32 by budget']} kept FP32 by the budget)"
        top1 = f"{m['top1'] * 100:.1f} %" if m["top1"] is not None else "-"
        lines.append(
            f"| {r['model']} ({out_name}) | {r['precision']} | {layers} | {r['median_ms']:.2f} | "
            f"{r['size_bytes'] / 1e6:.2f} MB | {r['size_vs_fp32']:.2f} | {m['rel_l2']:.2e} | {m['cosine']:.6f} | {top1} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(SIZES), help="comma-separated zoo models")
    parser.add_argument("--calib", type=int, default=256, help="calibration samples")
    parser.add_argument("--val", type=int, default=1000, help="validation samples (other seed)")
    parser.add_argument("--calibrator", default="entropy")
    parser.add_argument("--batch", type=int, default=8, help="batch for the latency measurement")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds of timed runs per engine")
    parser.add_argument("--tuning-level", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--int8-permission", action="store_true", help="also build plain --precision int8")
    parser.add_argument(
        "--budget", help='also an INT8 engine built with this accuracy budget, e.g. "top1>=0.99"'
    )
    parser.add_argument(
        "--budget-val", type=int, default=200, help="validation samples for the budget search"
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        started = time.perf_counter()
        model_rows = study_model(name, args)
        rows.extend(model_rows)
        print(f"# {name}: {time.perf_counter() - started:.0f} s", flush=True)
        print(markdown(model_rows), flush=True)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    main()
