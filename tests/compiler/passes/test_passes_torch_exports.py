"""The pass pipeline on real PyTorch exports (tests/fixtures/torch): torch's own outputs as the oracle,
and the fusions each export should get."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from passes_graphs import rel_l2

from farm.compiler import load_onnx, optimize, reference
from farm.compiler.frontend import UnsupportedModelError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "torch"


def softmaxes(ops: dict[str, int]) -> int:
    """One attention per Softmax of the export (one per layer)."""
    return ops["Softmax"]


def layernorms(ops: dict[str, int]) -> int:
    """LayerNormalization nodes, or the decomposed form's ReduceMean pairs."""
    return ops.get("LayerNormalization", 0) + ops.get("ReduceMean", 0) // 2


def no_op(ops: dict[str, int]) -> None:
    return None


Expectation = Callable[[dict[str, int]], int | None]
# op type -> the count the optimized graph must have, computed from the export's op histogram
# (None: no such op may be left). Fixtures not listed (new ones, recurrent nets) are still checked
# numerically.
# (the Q/K/V projections are fused into one GEMM whose output every Attention reads packed: no Split)
TRANSFORMER: dict[str, Expectation] = {"Attention": softmaxes, "Split": no_op, "LayerNorm": layernorms}
EXPECTED: dict[str, dict[str, Expectation]] = {
    "bert_ts17": {**TRANSFORMER, "Softmax": no_op, "MatMul": no_op},
    "bert_ts14": {**TRANSFORMER, "ReduceMean": no_op, "Erf": no_op},
    "bert_dynamo18": {**TRANSFORMER, "Erf": no_op},
    "vit_ts17": {**TRANSFORMER, "Squeeze": no_op},
    "vit_dynamo18": {**TRANSFORMER, "Slice": no_op},
    "resnet_ts17": {"Relu": no_op, "Add": no_op},
    "resnet_bn_ts17": {"BatchNormalization": no_op, "Relu": no_op, "Add": no_op},
    "resnet_dynamo18": {"Relu": no_op, "Add": no_op},
    "mobilenet_ts17": {"Clip": no_op, "HardSwish": no_op, "HardSigmoid": no_op, "Gemm": no_op},
    "mobilenet_dynamo18": {"Clip": no_op, "HardSwish": no_op, "HardSigmoid": no_op, "Gemm": no_op},
    "gelu_ts17": {"Gelu": lambda ops: ops["Erf"] + ops["Tanh"], "Erf": no_op, "Tanh": no_op},
    "gelu_ts20": {"Gelu": lambda ops: ops["Gelu"]},
    "mlp_ts17": {"FusedGemm": lambda ops: ops["Gemm"], "Relu": no_op},
    # nn.MultiheadAttention: sequence-first layout, packed in-projection picked by Gather
    # and its layout shuffles around the projections removed (gemm_layout)
    "transformer_encoder_layer_ts17": {
        **TRANSFORMER,
        "Relu": no_op,
        "Softmax": no_op,
        "Transpose": no_op,
        "Reshape": no_op,
    },
}


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.onnx")))
def test_optimized_torch_export_matches_torch(name: str) -> None:
    try:
        graph = load_onnx(FIXTURES / f"{name}.onnx")
    except UnsupportedModelError as exc:
        pytest.skip(f"the frontend does not load it: {exc}")
    optimized, report = optimize(graph, verify_each=True)
    assert report.converged
    data = np.load(FIXTURES / f"{name}.npz")
    feeds = {k.removeprefix("input:"): v for k, v in data.items() if k.startswith("input:")}
    got = reference.run(optimized, feeds)
    for key, want in data.items():
        if key.startswith("output:"):
            out = key.removeprefix("output:")
            assert rel_l2(got[out], want) <= 1e-5, f"{name} {out}: {rel_l2(got[out], want):.3g}"
    ops, original = optimized.op_histogram(), graph.op_histogram()
    for op, expectation in EXPECTED.get(name, {}).items():
        count = expectation(original)
        if count is None:
            assert op not in ops, f"{name}: {op} left after optimization ({ops})"
        else:
            assert count > 0 and ops.get(op, 0) == count, (
                f"{name}: {ops.get(op, 0)} {op}, expected {count} ({ops})"
            )
