"""Precision study: every zoo model in FP32, FP16, BF16 and INT8, the table the dashboard shows.

For each model: an FP32 engine, FP16 and BF16 engines (permission: the tuner picks per layer),
an INT8 engine (``--strict``: every layer with an INT8 tactic runs INT8; entropy calibration on
``--calib`` samples of the model's input distribution; uint8 activations with bias correction),
the same with TensorRT's scheme (``int8 strict trt``: symmetric int8 activations, no bias
correction; the calibrator option ``:symmetric,no-bias-correction``), the same with GPTQ weight
rounding (``int8 strict gptq``: the calibrator option ``:gptq``) and, with
``--int8-permission``, the plain ``--precision int8`` engine (the tuner keeps FP32 where it is
faster). ONNX Runtime running the FP32 model is timed in the same interleaved loop (row
``ORT fp32``). ``--ort`` adds ONNX Runtime's own static INT8 quantization of the model (QDQ,
per-channel int8 weights, uint8 activations, the same calibration samples) run and timed by
ONNX Runtime: the yardstick for the INT8 rows. ``--precisions`` picks rows (fp32 always runs: it is the
reference for size and latency). For classifiers, the FP32 top1-top2 margin (in units of the
logits' standard deviation) is printed with the margins of the samples each row flips. Accuracy is measured
against FP32 ONNX Runtime on ``--val`` *other* samples (different seed): relative L2 and cosine of
every output, top-1 agreement for classifiers. Latency: median of interleaved runs at ``--batch``.
Size: the whole engine file.

    .venv/bin/python -m benchmarks.precision                  # all models, the sizes in SIZES
    .venv/bin/python -m benchmarks.precision --models resnet --val 1000 --calib 256
    .venv/bin/python -m benchmarks.precision --models mobilenet --precisions int8,int8-trt --ort

Model sizes are reduced (SIZES) so the study runs in minutes on a 2-core machine; the INT8
kernels are the VNNI register tiles where the CPU has AVX-512 VNNI (``int8_vnni``,
``int8_conv_tiles``) and numba int32-lane GEMMs elsewhere; the calibration runs the numpy
reference.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from farm import zoo
from farm.compiler.accuracy import compare_outputs, onnxruntime_outputs, onnxruntime_session
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
ROWS = ("fp32", "fp16", "bf16", "int8", "int8-gptq", "int8-trt", "budget", "permission")


def _with_option(spec: str, option: str) -> str:
    """The calibrator spec ``spec`` with ``option`` added (``entropy`` -> ``entropy:gptq``)."""
    return spec + ("," if ":" in spec else ":") + option


def _run_chunked(engine: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = len(next(iter(feeds.values())))
    parts = [engine.run({k: v[i : i + CHUNK] for k, v in feeds.items()}) for i in range(0, total, CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _ort_qdq(model: bytes, calib: Mapping[str, np.ndarray], method: str, preprocess: bool = False) -> bytes:
    """ONNX Runtime's static INT8 quantization of ``model``: QDQ, per-channel int8 weights, uint8
    activations, ``method`` calibration (MinMax, Entropy, Percentile) on ``calib``. Without
    ``preprocess`` the model goes in as exported (BatchNormalization unfolded: ORT quantizes it
    too); with it, ``quant_pre_process`` (ORT's recommended step: shape inference and graph
    optimization, which folds BN into the convs as our compiler does) runs first."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    count = len(next(iter(calib.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(count)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        src.write_bytes(model)
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre))
            src = pre
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )  # fmt: skip
        return dst.read_bytes()


def _margins(want: np.ndarray) -> np.ndarray:
    """FP32 top1 - top2 logit margin per sample, in units of the sample's logit std."""
    top = np.sort(want, axis=1)
    return (top[:, -1] - top[:, -2]) / np.maximum(want.std(axis=1), 1e-12)


def study_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build and measure ``name`` in every precision; one row per precision."""
    options = SIZES.get(name, {})
    dims = DIMS.get(name, {})
    model = zoo.build_model(name, **options).SerializeToString()
    calib = zoo.sample_inputs(name, args.calib, seed=101, options=options, **dims)
    val = zoo.sample_inputs(name, args.val, seed=202, options=options, **dims)
    want = onnxruntime_outputs(model, val, threads=args.threads)
    wanted = set(args.precisions.split(",")) | {"fp32"}
    if args.budget:
        wanted.add("budget")
    if args.int8_permission:
        wanted.add("permission")
    cache = MemoryTimingCache()
    configs: dict[str, BuilderConfig] = {}
    shapes = {k: [args.batch, *v.shape[1:]] for k, v in val.items()}  # fixes symbolic dims such as seq
    common = {"batch_range": (1, args.batch, CHUNK), "tuning_level": args.tuning_level, "timing_cache": cache,
              "input_shapes": shapes}  # fmt: skip
    configs["fp32"] = BuilderConfig(**common)  # type: ignore[arg-type]
    for precision in ("fp16", "bf16"):
        if precision in wanted:
            configs[precision] = BuilderConfig(precision=precision, **common)  # type: ignore[arg-type]
    if "int8" in wanted:
        configs["int8 strict"] = BuilderConfig(precision="int8", strict=True, calibration=calib,  # type: ignore[arg-type]
                                               calibrator=args.calibrator, **common)  # fmt: skip
    if "int8-gptq" in wanted:
        configs["int8 strict gptq"] = BuilderConfig(  # type: ignore[arg-type]
            precision="int8", strict=True, calibration=calib, calibrator=_with_option(args.calibrator, "gptq"),
            **common,
        )  # fmt: skip
    if "int8-trt" in wanted:
        configs["int8 strict trt"] = BuilderConfig(  # type: ignore[arg-type]
            precision="int8", strict=True, calibration=calib,
            calibrator=_with_option(args.calibrator, "symmetric,no-bias-correction"), **common,
        )  # fmt: skip
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
    rows: list[dict[str, Any]] = []
    engines = {}
    flipped: dict[str, np.ndarray] = {}
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
        if classifier:
            out = next(iter(want))
            flipped[label] = got[out].argmax(axis=1) != want[out].argmax(axis=1)
    batch_feeds = {k: v[: args.batch] for k, v in val.items()}
    runners: dict[str, Any] = {label: (lambda e=e: e.run(batch_feeds)) for label, e in engines.items()}
    ort_rows: list[dict[str, Any]] = []
    sessions = {"ORT fp32": onnxruntime_session(model, args.threads)}
    ort_rows.append({
        "model": name, "options": options, "precision": "ORT fp32", "build_s": None, "size_bytes": len(model),
        "size_vs_fp32": None, "layers": {},
        "outputs": {m.name: {"rel_l2": m.rel_l2, "cosine": m.cosine, "top1": m.top1} for m in compare_outputs(want, want)},
    })  # fmt: skip
    if args.ort:
        started = time.perf_counter()
        qdq = _ort_qdq(model, calib, args.ort, args.ort_preprocess)
        got = onnxruntime_outputs(qdq, val, threads=args.threads)
        metrics = compare_outputs(got, want)
        pre = ", pre-processed" if args.ort_preprocess else ""
        label = f"ORT quantize_static QDQ per-channel u8/s8 ({args.ort}{pre})"
        sessions[label] = onnxruntime_session(qdq, args.threads)
        ort_rows.append({
            "model": name, "options": options, "precision": label, "build_s": round(time.perf_counter() - started, 1),
            "size_bytes": len(qdq), "size_vs_fp32": None, "layers": {},
            "outputs": {m.name: {"rel_l2": m.rel_l2, "cosine": m.cosine, "top1": m.top1} for m in metrics},
        })  # fmt: skip
        if classifier:
            out = next(iter(want))
            flipped[label] = got[out].argmax(axis=1) != want[out].argmax(axis=1)
    for label, session in sessions.items():
        runners[label] = lambda s=session: s.run(None, batch_feeds)
    stats = measure_interleaved(runners, batch=args.batch, duration_s=args.duration, iterations=10)
    fp32_size = rows[0]["size_bytes"]
    for row in rows:
        row["median_ms"] = stats[row["precision"]].median_ms
        row["size_vs_fp32"] = row["size_bytes"] / fp32_size
    for row in ort_rows:
        row["median_ms"] = stats[row["precision"]].median_ms
    rows.extend(ort_rows)
    if classifier:
        margins = _margins(want[next(iter(want))])
        qs = (0.01, 0.05, 0.1, 0.5)
        line = ", ".join(f"q{int(q * 100)} {np.quantile(margins, q):.4f}" for q in qs)
        print(f"# {name}: FP32 top1-top2 margin / logit std over {len(margins)} samples: {line}")
        for label, mask in flipped.items():
            if mask.any():
                print(f"#   {label}: {int(mask.sum())} flips, their margins: median "
                      f"{np.median(margins[mask]):.4f}, max {margins[mask].max():.4f}")  # fmt: skip
        for row in rows:
            row["margin_quantiles"] = {str(q): float(np.quantile(margins, q)) for q in qs}
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
        ms = f"{r['median_ms']:.2f}" if r["median_ms"] is not None else "-"
        ratio = f"{r['size_vs_fp32']:.2f}" if r["size_vs_fp32"] is not None else "-"
        lines.append(
            f"| {r['model']} ({out_name}) | {r['precision']} | {layers or '-'} | {ms} | "
            f"{r['size_bytes'] / 1e6:.2f} MB | {ratio} | {m['rel_l2']:.2e} | {m['cosine']:.6f} | {top1} |"
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
        "--precisions", default="fp32,fp16,bf16,int8,int8-trt",
        help="rows to build: fp32, fp16, bf16, int8 (strict, default scheme), int8-gptq (strict, the default "
        "scheme with GPTQ weight rounding), int8-trt (strict, TensorRT's scheme)",
    )  # fmt: skip
    parser.add_argument(
        "--ort", nargs="?", const="MinMax", default=None,
        help="also ONNX Runtime's quantize_static (QDQ, per-channel) with this calibration method (MinMax)",
    )  # fmt: skip
    parser.add_argument(
        "--budget", help='also an INT8 engine built with this accuracy budget, e.g. "top1>=0.99"'
    )
    parser.add_argument(
        "--budget-val", type=int, default=200, help="validation samples for the budget search"
    )
    parser.add_argument(
        "--ort-preprocess", action="store_true", help="run ORT's quant_pre_process (folds BN) before --ort"
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
