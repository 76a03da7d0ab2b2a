"""Where a zoo model's time goes, ours against ONNX Runtime's, per op type and per layer.

Builds the zoo model for one batch (as ``make bench`` does), then runs our engine with per-layer
profiling and ONNX Runtime with its own profiler (``SessionOptions.enable_profiling``), each for
``--runs`` runs after a warm-up, and prints:

* per op type: our total median ms and ORT's (ORT's fused nodes are counted under their own op
  type, e.g. ``FusedConv``; a Conv it fused with its activation shows as ``FusedConv`` there too);
* our slowest layers, each with ORT's time for the node of the same name when ORT kept one (our
  fused nodes carry the source node's name with ``_<n>`` suffixes, which are ignored).

Both profilers add a little per layer; read the two columns against each other, not against
``make bench``.

A layer ORT rewrote into its NCHWc form is named by its output tensor (``.../block.0.2/Clip_output_0_nchwc``
for a Conv + BatchNormalization + Clip module); such a node is matched to ours by the module path
without its last index (``.../block.0``) when that path names one node on each side.

    .venv/bin/python benchmarks/kernels/profile_vs_ort.py mobilenet --batch 1 [--runs 200]

``MODEL`` may also be an ``.onnx`` file, with ``--input NAME=1x3x320x320`` for each input whose
shape is not fixed (random feeds: uniform in [0, 1) for floats, zeros for integers; ``--input
NAME=16000`` sets a scalar integer input's value):

    .venv/bin/python benchmarks/kernels/profile_vs_ort.py yolov8n.onnx --input images=1x3x320x320
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict

# the repository root, for ``benchmarks.zoo_vs_ort`` (this file runs as a script)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _ort_layer_times(onnx_bytes: bytes, feeds: dict, runs: int, threads: int) -> dict[str, tuple[str, float]]:
    """{node name: (op type, median ms)} from ORT's profiler over ``runs`` runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    warmup = 20
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for _ in range(warmup + runs):
            session.run(names, feeds)
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    samples: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        samples[name].append(event["dur"] / 1e3)
        ops[name] = event.get("args", {}).get("op_name", "?")
    # each node's first ``warmup`` events are the warm-up runs
    return {name: (ops[name], statistics.median(v[warmup:] or v)) for name, v in samples.items()}


def _module(name: str) -> str:
    """``/a/block.0/block.0.2/Clip_output_0_nchwc`` -> ``/a/block.0/block.0``: the module of a layer."""
    return re.sub(r"\.\d+/[^/]*$", "", name)


def _unique_by_module(layers: dict) -> dict:
    """{module: the value of its only layer} for the modules that hold exactly one layer."""
    groups: dict[str, list] = defaultdict(list)
    for name, value in layers.items():
        groups[_module(name)].append(value)
    return {module: values[0] for module, values in groups.items() if len(values) == 1}


def build_file_engine(  # type: ignore[no-untyped-def]
    path: str, specs: list[str], tuning_level: int, disabled_tactics: tuple[str, ...] = ()
):
    """An engine of the ONNX file at ``path`` for the shapes in ``specs`` (``NAME=DxD..``), its
    bytes and random feeds (floats uniform in [0, 1), integers zero or the given scalar)."""
    import numpy as np
    import onnx

    from farm.compiler.builder import BuilderConfig, build
    from farm.compiler.tuner import MemoryTimingCache

    with open(path, "rb") as handle:
        onnx_bytes = handle.read()
    model = onnx.load_from_string(onnx_bytes)
    given = dict(spec.split("=", 1) for spec in specs)
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        tensor = info.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        text = given.get(info.name)
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim
        ]
        if text is not None and "x" not in text and not dims:
            feeds[info.name] = np.asarray(int(text) if dtype.kind in "iu" else float(text), dtype)
            continue
        shape = [int(v) for v in text.split("x")] if text else dims
        if any(d is None for d in shape):
            raise SystemExit(f"input {info.name!r} has dynamic dims {dims}: give --input {info.name}=DxDx..")
        floats = dtype.kind == "f"
        feeds[info.name] = rng.random(shape).astype(dtype) if floats else np.zeros(shape, dtype)
    config = BuilderConfig(
        tuning_level=tuning_level,
        timing_cache=MemoryTimingCache(),
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        disabled_tactics=disabled_tactics,
    )
    return build(onnx_bytes, "cpu", config), onnx_bytes, feeds


def build_engine(  # type: ignore[no-untyped-def]
    model: str, batch: int, specs: list[str], tuning_level: int, disabled_tactics: tuple[str, ...] = ()
):
    """(engine, ONNX bytes, feeds): a zoo model built for ``batch``, or an ``.onnx`` file with
    ``specs`` (``--input``) for its unfixed input shapes; ``disabled_tactics`` are not considered."""
    from benchmarks.zoo_vs_ort import build_zoo_engine
    from farm.compiler.tuner import MemoryTimingCache

    if model.endswith(".onnx"):
        return build_file_engine(model, specs, tuning_level, disabled_tactics)
    return build_zoo_engine(model, batch, MemoryTimingCache(), tuning_level, disabled_tactics)


def layer_medians(context, feeds: dict, runs: int, warmup: int = 20) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median ms per layer over ``runs`` profiled runs, after ``warmup`` plain ones."""
    for _ in range(warmup):
        context.run(feeds)
    context.layer_times_ms.clear()
    for _ in range(runs):
        context.run(feeds, profile=True)
    return {name: statistics.median(v) for name, v in context.layer_times_ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tuning-level", type=int, default=2)
    parser.add_argument(
        "--disable-tactic", action="append", default=[], help="a tactic the tuner may not pick (repeatable)"
    )
    parser.add_argument(
        "--input", action="append", default=[], help="NAME=DxDx.. (or NAME=VALUE for a scalar)"
    )
    args = parser.parse_args()

    from farm.compiler.kernels.threads import available_cores

    engine, onnx_bytes, feeds = build_engine(
        args.model, args.batch, args.input, args.tuning_level, tuple(args.disable_tactic)
    )
    context = engine.create_context()
    ours = layer_medians(context, feeds, args.runs)
    kernels = {k.node.name: k for k in engine.kernels}
    theirs = _ort_layer_times(onnx_bytes, feeds, args.runs, available_cores())

    by_module = _unique_by_module(theirs)
    ours_by_module = _unique_by_module(ours)

    def ort_ms(name: str) -> float:
        same = theirs.get(name) or theirs.get(re.sub(r"(_\d+)+$", "", name))
        if same is None and _module(name) in ours_by_module:
            same = by_module.get(_module(name))
        return same[1] if same else float("nan")

    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, ms in ours.items():
        by_op[kernels[name].node.op_type][0] += ms
    for op, ms in theirs.values():
        by_op[op][1] += ms
    print(f"{args.model} batch {args.batch}: threads blas={engine.threads}, numba={engine.numba_threads}")
    print(f"{'op type':24s} {'ours ms':>9s} {'ORT ms':>9s}")
    for op, (a, b) in sorted(by_op.items(), key=lambda item: -max(item[1])):
        print(f"{op:24s} {a:9.3f} {b:9.3f}")
    total_ours, total_ort = sum(ours.values()), sum(ms for _, ms in theirs.values())
    print(f"{'total (sum of medians)':24s} {total_ours:9.3f} {total_ort:9.3f}\n")
    print(f"{'our slowest layers':70s} {'tactic':30s} {'ours ms':>8s} {'ORT ms':>8s}")
    for name, ms in sorted(ours.items(), key=lambda item: -item[1])[: args.top]:
        shape = engine.graph.values[kernels[name].node.outputs[0]].shape
        label = f"{name[-45:]} {shape}"
        print(f"{label:70s} {kernels[name].tactic.name:30s} {ms:8.3f} {ort_ms(name):8.3f}")
    print(f"\n{'ORT slowest nodes (its own names)':70s} {'op type':30s} {'ORT ms':>8s}")
    for name, (op, ms) in sorted(theirs.items(), key=lambda item: -item[1][1])[: args.top]:
        print(f"{name[-70:]:70s} {op:30s} {ms:8.3f}")


if __name__ == "__main__":
    main()
