"""Each heavy CPU tactic against ONNX Runtime running the same layer as a one-op model.

For every layer (zoo-model shapes: ResNet-18 and MobileNetV2 at 224x224, the BERT encoder at
hidden 256 / seq 128, the ViT at dim 192 / 197 tokens), at batch 1 and 8:

* ONNX Runtime runs the layer as a small ONNX model (e.g. Conv -> Add -> Relu, which its graph
  optimizer fuses as it likes), default session options, intra-op threads = usable cores;
* each of our tactics that supports the fused node runs it with its prepared weights;
* the two are timed **interleaved** in one process, in turns of 100 ms (ORT, ours, ORT, ours ...,
  each turn's first run dropped; run by run with ``--cpu-time``), and the ratio of
  the medians (ours / ORT) is printed: < 1 means we are faster.

    .venv/bin/python benchmarks/kernels/bench_kernels_vs_ort.py [--batch 1 8] [--only conv]
        [--min-time 0.3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.ir import Graph
from farm.compiler.kernels import candidates
from farm.compiler.kernels.threads import configure_threads, threading_layer


@dataclass
class Layer:
    """One benchmark layer: its ONNX form for ORT and its fused IR node for us."""

    family: str
    label: str
    # builds (onnx model, feeds, IR graph with one fused node) for a batch size
    make: Callable[[int, np.random.Generator], tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]]
    tags: set[str] = field(default_factory=set)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    consts: dict[str, np.ndarray],
    out_shape: tuple[int, ...],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ir(
    op_type: str,
    attrs: dict[str, Any],
    inputs: dict[str, np.ndarray],
    consts: dict[str, np.ndarray],
    order: list[str],
    out_shape: tuple[int, ...],
) -> Graph:
    g = Graph("layer")
    for k, v in inputs.items():
        g.add_input(k, "float32", v.shape)
    for k, v in consts.items():
        g.add_const(k, v)
    g.add_node(op_type, order, ["y"], attrs, name="layer")
    g.add_value("y", "float32", out_shape)
    g.outputs = ["y"]
    return g


def conv_layer(
    c: int,
    m: int,
    hw: int,
    k: int,
    stride: int,
    *,
    group: int = 1,
    residual: bool = False,
    act: str = "Relu",
    pad: int | None = None,
) -> Layer:
    pad = k // 2 if pad is None else pad

    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        ho = (hw + 2 * pad - k) // stride + 1
        out_shape = (batch, m, ho, ho)
        x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((m, c // group, k, k)) / math.sqrt(c // group * k * k)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        inputs = {"x": x}
        if residual:
            inputs["r"] = rng.standard_normal(out_shape).astype(np.float32)
        attrs: dict[str, Any] = {
            "kernel_shape": [k, k],
            "strides": [stride] * 2,
            "pads": [pad] * 4,
            "dilations": [1, 1],
            "group": group,
        }
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], **attrs)]
        last = "z"
        if residual:
            nodes.append(helper.make_node("Add", ["z", "r"], ["s"]))
            last = "s"
        if act == "Relu":
            nodes.append(helper.make_node("Relu", [last], ["y"]))
        elif act == "Clip":
            nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
        elif act == "HardSwish":
            nodes.append(helper.make_node("HardSwish", [last], ["y"]))
        else:
            nodes.append(helper.make_node("Identity", [last], ["y"]))
        consts = {"w": w, "b": b}
        onnx_consts = dict(consts)
        if act == "Clip":
            onnx_consts.update(lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))
        model = _model(nodes, inputs, onnx_consts, out_shape)
        fused_attrs = dict(
            attrs, activation=act if act != "none" else "", alpha=0.0, beta=6.0 if act == "Clip" else 0.0
        )
        order = ["x", "w", "b"]
        if residual:
            fused_attrs["residual"] = "pre"
            order.append("r")
        return model, inputs, _ir("FusedConv", fused_attrs, inputs, consts, order, out_shape)

    kind = "depthwise" if group == c and group > 1 else ("1x1" if k == 1 else f"{k}x{k}")
    label = f"conv {kind} {c}->{m} @{hw} s{stride}" + (" +res" if residual else "")
    return Layer("conv", label, make)


def conv_transpose_layer(c: int, m: int, size: tuple[int, ...], k: int, stride: int, pad: int = 0) -> Layer:
    """ConvTranspose with a bias (a decoder's upsampling), 2-D or (one ``size``) 1-D."""

    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        dims = len(size)
        out_shape = (batch, m, *((s - 1) * stride - 2 * pad + k for s in size))
        x = rng.standard_normal((batch, c, *size)).astype(np.float32)
        w = (rng.standard_normal((c, m, *([k] * dims))) / math.sqrt(c)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        attrs: dict[str, Any] = {
            "kernel_shape": [k] * dims,
            "strides": [stride] * dims,
            "pads": [pad] * (2 * dims),
        }
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
        model = _model([node], {"x": x}, {"w": w, "b": b}, out_shape)
        return (
            model,
            {"x": x},
            _ir("ConvTranspose", attrs, {"x": x}, {"w": w, "b": b}, ["x", "w", "b"], out_shape),
        )

    where = "x".join(map(str, size))
    return Layer("conv_transpose", f"convT {k}/{stride} {c}->{m} @{where}", make)


def gemm_layer(rows: int, k: int, n: int, *, act: str = "", residual: bool = False) -> Layer:
    """[batch, rows, k] x [k, n] + bias (+ GELU / + residual): a transformer projection."""

    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        out_shape = (batch, rows, n)
        a = rng.standard_normal((batch, rows, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        inputs = {"a": a}
        if residual:
            inputs["r"] = rng.standard_normal(out_shape).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["a", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["z"])]
        last = "z"
        if act == "Gelu":
            nodes.append(helper.make_node("Gelu", [last], ["g"], domain="com.microsoft"))
            last = "g"
        if residual:
            nodes.append(helper.make_node("Add", [last, "r"], ["s"]))
            last = "s"
        nodes.append(helper.make_node("Identity", [last], ["y"]))
        model = _model(nodes, inputs, {"w": w, "b": b}, out_shape)
        if act == "Gelu":
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        attrs = {"transB": 0, "activation": act, "alpha": 0.0, "beta": 0.0}
        order = ["a", "w", "b"]
        if residual:
            attrs["residual"] = "post"
            order.append("r")
        return model, inputs, _ir("FusedGemm", attrs, inputs, {"w": w, "b": b}, order, out_shape)

    return Layer(
        "gemm", f"gemm {rows}x{k}x{n}" + (f" {act}" if act else "") + (" +res" if residual else ""), make
    )


def attention_layer(seq: int, heads: int, head_dim: int) -> Layer:
    """ORT's com.microsoft MultiHeadAttention on separate Q, K, V with a key-padding mask."""

    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        hidden = heads * head_dim
        q, k, v = (rng.standard_normal((batch, seq, hidden)).astype(np.float32) for _ in range(3))
        keep = np.ones((batch, seq), np.int32)
        keep[:, seq - seq // 8 :] = 0
        inputs = {"q": q, "k": k, "v": v}
        node = helper.make_node(
            "MultiHeadAttention", ["q", "k", "v", "", "kpm"], ["y"], domain="com.microsoft", num_heads=heads
        )
        graph = helper.make_graph(
            [node],
            "attn",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs.items()]
            + [helper.make_tensor_value_info("kpm", TensorProto.INT32, keep.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, q.shape)],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
            ir_version=8,
        )
        feeds = dict(inputs, kpm=keep)
        mask = np.where(keep[:, None, None, :] == 1, 0.0, -10000.0).astype(np.float32)
        ir_inputs = dict(inputs, mask=mask)
        g = _ir(
            "Attention",
            {"num_heads": heads, "scale": 1.0 / math.sqrt(head_dim)},
            ir_inputs,
            {},
            ["q", "k", "v", "mask"],
            q.shape,
        )
        return model, feeds, g

    return Layer("attention", f"attention seq{seq} {heads}x{head_dim}", make)


def layernorm_layer(rows: int, hidden: int) -> Layer:
    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        x = rng.standard_normal((batch, rows, hidden)).astype(np.float32)
        s, b = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)
        model = _model([node], {"x": x}, {"s": s, "b": b}, x.shape)
        return (
            model,
            {"x": x},
            _ir(
                "LayerNorm",
                {"axis": -1, "epsilon": 1e-5},
                {"x": x},
                {"s": s, "b": b},
                ["x", "s", "b"],
                x.shape,
            ),
        )

    return Layer("layernorm", f"layernorm {rows}x{hidden}", make)


def unary_layer(op_type: str, shape: tuple[int, ...], attrs: dict[str, Any] | None = None) -> Layer:
    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        node = helper.make_node(op_type, ["x"], ["y"], **(attrs or {}))
        out_shape = x.shape
        if op_type == "GlobalAveragePool":
            out_shape = (*x.shape[:2], 1, 1)
        elif op_type == "MaxPool":
            out_shape = (*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2)
        model = _model([node], {"x": x}, {}, out_shape)
        model.opset_import[0].version = 20 if op_type == "Gelu" else 17
        return model, {"x": x}, _ir(op_type, dict(attrs or {}), {"x": x}, {}, ["x"], out_shape)

    return Layer(op_type.lower(), f"{op_type} {'x'.join(map(str, shape))}", make)


def mul_layer(shape: tuple[int, ...], gate: tuple[int, ...]) -> Layer:
    def make(batch: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray], Graph]:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        s = rng.standard_normal((batch, *gate)).astype(np.float32)
        node = helper.make_node("Mul", ["x", "s"], ["y"])
        model = _model([node], {"x": x, "s": s}, {}, x.shape)
        return model, {"x": x, "s": s}, _ir("Mul", {}, {"x": x, "s": s}, {}, ["x", "s"], x.shape)

    return Layer("binary", f"Mul {'x'.join(map(str, shape))} by {'x'.join(map(str, gate))}", make)


LAYERS: list[Layer] = [
    conv_layer(3, 64, 224, 7, 2),  # ResNet stem
    conv_layer(3, 16, 224, 3, 2),  # MobileNet stem
    conv_layer(3, 16, 224, 3, 2, act="HardSwish"),  # MobileNetV3 stem (the zoo MobileNet's)
    conv_layer(3, 192, 224, 16, 16, act="none", pad=0),  # ViT patch embedding (kernel = stride)
    conv_layer(64, 64, 56, 3, 1),
    conv_layer(64, 128, 56, 3, 2),  # ResNet layer2.0 conv1 (stride 2)
    conv_layer(64, 64, 56, 3, 1, residual=True),
    conv_layer(128, 128, 28, 3, 1, residual=True),
    conv_layer(256, 256, 14, 3, 1),
    conv_layer(512, 512, 7, 3, 1, residual=True),
    conv_layer(128, 256, 28, 3, 2),
    conv_layer(128, 256, 28, 1, 2, act="none"),  # downsample
    conv_layer(32, 32, 112, 3, 1, group=32, act="Clip"),  # MobileNetV2 depthwise
    conv_layer(144, 144, 56, 3, 2, group=144, act="Clip"),
    conv_layer(64, 64, 112, 3, 2, group=64, act="Clip"),  # zoo mobilenet block 1 depthwise
    conv_layer(96, 96, 56, 5, 2, group=96, act="Clip"),  # MobileNetV3 5x5 depthwise (zoo mobilenet)
    conv_layer(240, 240, 28, 5, 1, group=240, act="Clip"),
    conv_layer(576, 576, 14, 5, 1, group=576, act="Clip"),
    conv_layer(288, 288, 28, 5, 2, group=288, act="Clip"),
    conv_layer(96, 96, 56, 7, 1, group=96, act="none"),  # ConvNeXt-T stage 1 depthwise 7x7
    conv_layer(384, 384, 14, 7, 1, group=384, act="none"),  # ConvNeXt-T stage 3
    conv_layer(16, 96, 112, 1, 1, act="Clip"),  # expansion 1x1
    conv_layer(16, 64, 112, 1, 1, act="Clip"),  # zoo mobilenet block 1 expansion
    conv_layer(96, 24, 56, 1, 1, act="none"),  # projection 1x1
    conv_layer(24, 144, 56, 1, 1, act="Clip"),  # MobileNetV2 1x1 shapes
    conv_layer(144, 24, 56, 1, 1, act="none", residual=True),
    conv_layer(240, 40, 28, 1, 1, act="none"),
    conv_layer(576, 96, 14, 1, 1, act="none"),
    conv_layer(96, 576, 14, 1, 1, act="Clip"),
    conv_layer(960, 160, 7, 1, 1, act="none"),
    conv_layer(576, 144, 1, 1, 1, act="Relu"),  # squeeze-excite FCs (1x1 convs on 1x1 maps)
    conv_layer(144, 576, 1, 1, 1, act="Clip"),
    conv_transpose_layer(256, 128, (32, 32), 2, 2),  # U-Net decoder upsampling
    conv_transpose_layer(64, 32, (64, 64), 4, 2, pad=1),  # DCGAN / FCN-style 4x4 stride 2
    conv_transpose_layer(24, 24, (160, 160), 2, 2),  # PP-OCR DB head
    conv_transpose_layer(128, 64, (256,), 16, 8, pad=4),  # 1-D vocoder upsampler
    gemm_layer(128, 256, 768),  # BERT fused QKV
    gemm_layer(128, 256, 1024, act="Gelu"),  # BERT FFN up
    gemm_layer(128, 1024, 256, residual=True),  # BERT FFN down
    gemm_layer(197, 192, 576),  # ViT QKV
    gemm_layer(197, 192, 192, residual=True),  # ViT attention output projection
    gemm_layer(197, 192, 768, act="Gelu"),  # ViT MLP up
    gemm_layer(197, 768, 192, residual=True),  # ViT MLP down
    gemm_layer(1, 512, 1000),  # classifier head
    gemm_layer(1, 512, 512),  # zoo MLP hidden layer (batch rows)
    attention_layer(128, 4, 64),  # BERT
    attention_layer(197, 3, 64),  # ViT
    layernorm_layer(128, 256),
    unary_layer("Softmax", (4, 128, 128), {"axis": -1}),
    unary_layer("Gelu", (128, 1024)),
    unary_layer("MaxPool", (64, 112, 112), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    unary_layer("GlobalAveragePool", (512, 7, 7)),
    mul_layer((96, 56, 56), (96, 1, 1)),
]


CLOCK = time.perf_counter


def _time_once(fn: Callable[[], Any]) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


# Each side runs back to back for this long per turn (the turn's first run dropped), as in
# ``make bench``: ORT's workers and (since compiler 0.2) numba's keep spinning after a call, and
# alternating run by run timed each side while the other's threads still held the cores (MaxPool
# 64x112x112 at batch 8: 7.96 ms for ours run by run, 1.4 ms in blocks).
TURN_MS = 100.0


def compare(ort_fn: Callable[[], Any], our_fn: Callable[[], Any], min_time: float) -> tuple[float, float]:
    """Interleaved timing in turns (see :data:`TURN_MS`): (median ORT seconds, median ours seconds)."""
    if CLOCK is time.thread_time:  # CPU time of single-threaded runs: no pools to keep apart
        ort_s: list[float] = []
        our_s: list[float] = []
        start = time.perf_counter()
        while len(ort_s) < 15 or time.perf_counter() - start < 4 * min_time:
            ort_fn()
            ort_s.append(_time_once(ort_fn))
            our_fn()
            our_s.append(_time_once(our_fn))
            if len(ort_s) >= 2000:
                break
        return float(np.median(ort_s)), float(np.median(our_s))
    stats = measure_interleaved(
        {"ort": ort_fn, "ours": our_fn}, warmup_ms=50, duration_s=min_time, iterations=15, block_ms=TURN_MS
    )
    return stats["ort"].median_ms / 1e3, stats["ours"].median_ms / 1e3


def bench_layer(layer: Layer, batch: int, threads: int, min_time: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    model, feeds, graph = layer.make(batch, rng)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    node = graph.nodes[0]
    out = np.empty(expected.shape, np.float32)
    results: dict[str, Any] = {"layer": layer.label, "batch": batch, "tactics": {}}
    for tactic in candidates(node, graph):
        if tactic.name.startswith("cpu.numpy"):
            continue  # the generic baselines
        prepared = tactic.prepare(node, graph)
        arrays = [
            None
            if not n
            else (graph.const(n) if graph.const(n) is not None else (feeds.get(n) if n in feeds else None))
            for n in node.inputs
        ]
        if node.op_type == "Attention":
            arrays[3] = np.where(feeds["kpm"][:, None, None, :] == 1, 0.0, -10000.0).astype(np.float32)
        inputs = [None if i in prepared.replaces else a for i, a in enumerate(arrays)]

        def ours(t=tactic, p=prepared, ins=inputs) -> None:
            t.run(node, ins, [out], p)

        def theirs() -> None:
            session.run(None, feeds)

        ours()
        err = float(np.linalg.norm(out - expected)) / max(float(np.linalg.norm(expected)), 1e-30)
        ort_med, our_med = compare(theirs, ours, min_time)
        results["tactics"][tactic.name] = {
            "ort_ms": 1e3 * ort_med,
            "ours_ms": 1e3 * our_med,
            "ratio": our_med / ort_med,
            "rel_l2": err,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--only", nargs="*", help="layer families or label substrings")
    parser.add_argument(
        "--min-time", type=float, default=0.3, help="seconds of interleaved timing per tactic"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread each, timed by the thread's CPU time: the kernels' own efficiency, "
        "insensitive to other processes taking the cores (a shared machine's load)",
    )
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        args.threads = 1
    threads = configure_threads(1, args.threads)
    print(
        f"threads={threads} numba layer={threading_layer()} GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}"
    )
    print(f"{'layer':40s} {'batch':>5s} {'ORT ms':>8s} {'ours ms':>8s} {'ratio':>6s}  best tactic (others)")
    all_results = []
    for layer in LAYERS:
        if args.only and not any(o == layer.family or o in layer.label for o in args.only):
            continue
        for batch in args.batch:
            r = bench_layer(layer, batch, threads, args.min_time)
            all_results.append(r)
            if not r["tactics"]:
                print(f"{layer.label:40s} {batch:5d}  no tactic")
                continue
            best_name, best = min(r["tactics"].items(), key=lambda kv: kv[1]["ratio"])
            others = ", ".join(
                f"{n.split('.')[-1]}={v['ratio']:.2f}" for n, v in r["tactics"].items() if n != best_name
            )
            flag = "" if best["rel_l2"] < 1e-4 else f"  REL_L2={best['rel_l2']:.1e}"
            print(
                f"{layer.label:40s} {batch:5d} {best['ort_ms']:8.3f} {best['ours_ms']:8.3f} {best['ratio']:6.2f}  {best_name}{(' (' + others + ')') if others else ''}{flag}",
                flush=True,
            )
    ratios = [min(v["ratio"] for v in r["tactics"].values()) for r in all_results if r["tactics"]]
    if ratios:
        print(
            f"geometric mean of best ratios: {math.exp(sum(math.log(x) for x in ratios) / len(ratios)):.3f} over {len(ratios)} layer/batch pairs"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=1)


if __name__ == "__main__":
    main()
