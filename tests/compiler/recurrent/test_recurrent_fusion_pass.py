"""recurrent_fusion: an LSTM cell written out as Gemm + Split + Sigmoid/Tanh + Mul/Add (the
torch.nn.LSTMCell export form), unrolled over three steps, becomes three one-step LSTM nodes;
the optimized graph computes what ONNX Runtime computes on the original model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from farm.compiler import BuilderConfig, build, load_onnx, optimize, reference
from farm.compiler.accuracy import onnxruntime_session
from farm.compiler.passes import PASS_NAMES

F = TensorProto.FLOAT
BATCH, FEATURES, HIDDEN, STEPS = 3, 5, 4, 3


def unrolled_lstm_cells() -> onnx.ModelProto:
    """x [STEPS, B, I] sliced per step; per step torch's LSTMCell decomposition; outputs h, c."""
    rng = np.random.default_rng(7)
    inits = [
        helper.make_tensor("W_ih", F, [4 * HIDDEN, FEATURES], rng.standard_normal(4 * HIDDEN * FEATURES) * 0.5),
        helper.make_tensor("W_hh", F, [4 * HIDDEN, HIDDEN], rng.standard_normal(4 * HIDDEN * HIDDEN) * 0.5),
        helper.make_tensor("b_ih", F, [4 * HIDDEN], rng.standard_normal(4 * HIDDEN) * 0.1),
        helper.make_tensor("b_hh", F, [4 * HIDDEN], rng.standard_normal(4 * HIDDEN) * 0.1),
        helper.make_tensor("split", TensorProto.INT64, [4], [HIDDEN] * 4),
    ]
    nodes, h, c = [], "h0", "c0"
    for t in range(STEPS):
        p = f"s{t}_"
        inits += [helper.make_tensor(p + "start", TensorProto.INT64, [1], [t]),
                  helper.make_tensor(p + "end", TensorProto.INT64, [1], [t + 1])]  # fmt: skip
        nodes += [
            helper.make_node("Slice", ["x", p + "start", p + "end"], [p + "x3"]),
            helper.make_node("Squeeze", [p + "x3", "zero_axis"], [p + "x"]),
            helper.make_node("Gemm", [p + "x", "W_ih", "b_ih"], [p + "gi"], transB=1),
            helper.make_node("Gemm", [h, "W_hh", "b_hh"], [p + "gh"], transB=1),
            helper.make_node("Add", [p + "gi", p + "gh"], [p + "gates"]),
            helper.make_node("Split", [p + "gates", "split"], [p + "i", p + "f", p + "g", p + "o"], axis=1),
            helper.make_node("Sigmoid", [p + "i"], [p + "is"]),
            helper.make_node("Sigmoid", [p + "f"], [p + "fs"]),
            helper.make_node("Tanh", [p + "g"], [p + "gt"]),
            helper.make_node("Sigmoid", [p + "o"], [p + "os"]),
            helper.make_node("Mul", [p + "fs", c], [p + "fc"]),
            helper.make_node("Mul", [p + "is", p + "gt"], [p + "ig"]),
            helper.make_node("Add", [p + "fc", p + "ig"], [p + "c"]),
            helper.make_node("Tanh", [p + "c"], [p + "tc"]),
            helper.make_node("Mul", [p + "os", p + "tc"], [p + "h"]),
        ]
        h, c = p + "h", p + "c"
    inits.append(helper.make_tensor("zero_axis", TensorProto.INT64, [1], [0]))
    nodes += [helper.make_node("Identity", [h], ["h"]), helper.make_node("Identity", [c], ["c"])]
    graph = helper.make_graph(
        nodes, "lstm_cells",
        [helper.make_tensor_value_info("x", F, [STEPS, BATCH, FEATURES]),
         helper.make_tensor_value_info("h0", F, [BATCH, HIDDEN]), helper.make_tensor_value_info("c0", F, [BATCH, HIDDEN])],
        [helper.make_tensor_value_info("h", F, [BATCH, HIDDEN]), helper.make_tensor_value_info("c", F, [BATCH, HIDDEN])],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((STEPS, BATCH, FEATURES)).astype(np.float32),
        "h0": rng.standard_normal((BATCH, HIDDEN)).astype(np.float32),
        "c0": rng.standard_normal((BATCH, HIDDEN)).astype(np.float32),
    }


def test_unrolled_lstm_cells_become_lstm_nodes() -> None:
    model = unrolled_lstm_cells()
    assert "recurrent_fusion" in PASS_NAMES
    optimized, report = optimize(load_onnx(model), verify_each=True)
    histogram = optimized.op_histogram()
    assert histogram.get("LSTM") == STEPS and "Sigmoid" not in histogram and "Tanh" not in histogram, histogram
    assert f"recurrent_fusion: fused {STEPS} LSTM cell" in str(report)
    session = onnxruntime_session(model.SerializeToString(), threads=1)
    for seed in (1, 2):
        feeds = _feeds(seed)
        got = reference.run(optimized, feeds)
        for name, want in zip(["h", "c"], session.run(["h", "c"], feeds), strict=True):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_fused_cells_run_on_the_recurrent_tactic() -> None:
    model = unrolled_lstm_cells()
    engine = build(model, "cpu", BuilderConfig(tuning_level=0))
    assert {k.tactic.name for k in engine.kernels if k.node.op_type == "LSTM"} == {"cpu.recurrent.fused"}
    feeds = _feeds(3)
    got = engine.run(feeds)
    want = onnxruntime_session(model.SerializeToString(), threads=1).run(["h", "c"], feeds)
    np.testing.assert_allclose(got["h"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["c"], want[1], rtol=1e-5, atol=1e-5)


def test_cell_with_an_intermediate_read_elsewhere_is_left_alone() -> None:
    model = unrolled_lstm_cells()
    model.graph.output.append(helper.make_tensor_value_info("s0_is", F, [BATCH, HIDDEN]))
    optimized, _ = optimize(load_onnx(model))
    assert optimized.op_histogram().get("LSTM") == STEPS - 1
