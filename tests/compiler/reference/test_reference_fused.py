"""The fused ops compute exactly what farm/compiler/ir/fused.py defines, checked against the
same computation written as plain ONNX ops and run by ONNX Runtime; infer_shapes handles them."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from farm.compiler import reference
from farm.compiler.frontend import infer_shapes
from farm.compiler.ir import ACTIVATIONS, Graph, Node, verify

RNG = np.random.default_rng(7)

# Each epilogue activation as ONNX nodes from "z" to "act" (alpha/beta as in fused.py's table).
ALPHA, BETA = 0.2, 0.6


def activation_nodes(name: str) -> list:
    if name == "":
        return [helper.make_node("Identity", ["z"], ["act"])]
    if name in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return [helper.make_node(name, ["z"], ["act"])]
    if name == "LeakyRelu":
        return [helper.make_node("LeakyRelu", ["z"], ["act"], alpha=ALPHA)]
    if name == "Clip":
        return [helper.make_node("Clip", ["z", "clip_lo", "clip_hi"], ["act"])]
    if name == "HardSigmoid":
        return [helper.make_node("HardSigmoid", ["z"], ["act"], alpha=ALPHA, beta=BETA)]
    if name == "Silu":
        return [helper.make_node("Sigmoid", ["z"], ["sg"]), helper.make_node("Mul", ["z", "sg"], ["act"])]
    if name == "Gelu":
        return [helper.make_node("Gelu", ["z"], ["act"])]
    if name == "GeluTanh":
        return [helper.make_node("Gelu", ["z"], ["act"], approximate="tanh")]
    raise AssertionError(name)


def run_ort(nodes: list, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray], output: str) -> np.ndarray:
    graph = helper.make_graph(
        nodes,
        "expected",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def epilogue_onnx(activation: str, residual: str | None) -> list:
    """Nodes from 'z0' (the conv/gemm result) and 'r' to 'y', per fused.py."""
    if residual == "pre":
        nodes = [helper.make_node("Add", ["z0", "r"], ["z"]), *activation_nodes(activation)]
        return [*nodes, helper.make_node("Identity", ["act"], ["y"])]
    nodes = [helper.make_node("Identity", ["z0"], ["z"]), *activation_nodes(activation)]
    if residual == "post":
        return [*nodes, helper.make_node("Add", ["act", "r"], ["y"])]
    return [*nodes, helper.make_node("Identity", ["act"], ["y"])]


CLIP = {"clip_lo": np.array(-0.5, np.float32), "clip_hi": np.array(0.7, np.float32)}


def fused_attrs(activation: str) -> dict:
    if activation == "Clip":
        return {"activation": "Clip", "alpha": -0.5, "beta": 0.7}
    return {"activation": activation, "alpha": ALPHA, "beta": BETA}


@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_conv_matches_onnx_decomposition(activation: str, residual: str | None) -> None:
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = RNG.standard_normal((6, 2, 3, 3)).astype(np.float32) * 0.3
    b = RNG.standard_normal(6).astype(np.float32)
    r = RNG.standard_normal((2, 6, 4, 3)).astype(np.float32)
    conv_attrs: dict[str, Any] = {"pads": [1, 1, 1, 0], "strides": [2, 2], "dilations": [1, 1], "group": 2, "kernel_shape": [3, 3]}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z0"], **conv_attrs), *epilogue_onnx(activation, residual)]
    inputs = {"x": x, "r": r} if residual else {"x": x}
    expected = run_ort(nodes, inputs, {"w": w, "b": b, **CLIP}, "y")
    attrs = {**conv_attrs, **fused_attrs(activation)}
    if residual:
        attrs["residual"] = residual
    node = Node("FusedConv", ["x", "w", "b", "r"] if residual else ["x", "w", "b"], ["y"], attrs, "fc")
    got = reference.run_node(node, [x, w, b, r] if residual else [x, w, b])[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("activation", ["", "Relu", "Gelu", "GeluTanh", "Clip"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_fused_gemm_matches_onnx_decomposition(activation: str, residual: str | None, trans_b: int) -> None:
    a = RNG.standard_normal((2, 5, 8)).astype(np.float32)
    b = RNG.standard_normal((6, 8) if trans_b else (8, 6)).astype(np.float32)
    bias = RNG.standard_normal(6).astype(np.float32)
    r = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    nodes = []
    weight = "b"
    if trans_b:
        nodes.append(helper.make_node("Transpose", ["b"], ["bt"], perm=[1, 0]))
        weight = "bt"
    nodes += [helper.make_node("MatMul", ["a", weight], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["z0"])]
    nodes += epilogue_onnx(activation, residual)
    inputs = {"a": a, "r": r} if residual else {"a": a}
    expected = run_ort(nodes, inputs, {"b": b, "bias": bias, **CLIP}, "y")
    attrs = {"transB": trans_b, **fused_attrs(activation)}
    if residual:
        attrs["residual"] = residual
    node = Node("FusedGemm", ["a", "b", "bias", "r"] if residual else ["a", "b", "bias"], ["y"], attrs, "fg")
    got = reference.run_node(node, [a, b, bias, r] if residual else [a, b, bias])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_layer_norm_matches_onnx_layer_normalization() -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32) * 3 + 1
    scale = RNG.standard_normal((4, 5)).astype(np.float32)
    bias = RNG.standard_normal((4, 5)).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-2, epsilon=1e-3)]
    expected = run_ort(nodes, {"x": x}, {"s": scale, "b": bias}, "y")
    node = Node("LayerNorm", ["x", "s", "b"], ["y"], {"axis": -2, "epsilon": 1e-3}, "ln")
    np.testing.assert_allclose(reference.run_node(node, [x, scale, bias])[0], expected, rtol=1e-5, atol=1e-5)
    without_bias = Node("LayerNorm", ["x", "s"], ["y"], {"axis": -1}, "ln2")
    nodes = [helper.make_node("LayerNormalization", ["x", "s1"], ["y"], axis=-1, epsilon=1e-5)]
    s1 = scale[0]
    expected = run_ort(nodes, {"x": x}, {"s1": s1}, "y")
    np.testing.assert_allclose(reference.run_node(without_bias, [x, s1])[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_matches_onnx_decomposition(with_mask: bool) -> None:
    batch, seq_q, seq_k, heads, depth = 2, 3, 5, 2, 4
    q = RNG.standard_normal((batch, seq_q, heads * depth)).astype(np.float32)
    k = RNG.standard_normal((batch, seq_k, heads * depth)).astype(np.float32)
    v = RNG.standard_normal((batch, seq_k, heads * depth)).astype(np.float32)
    mask = np.where(RNG.random((batch, 1, 1, seq_k)) > 0.3, 0.0, -10000.0).astype(np.float32)
    scale = 0.37
    split = np.array([batch, -1, heads, depth], np.int64)
    merge = np.array([batch, seq_q, heads * depth], np.int64)
    nodes = [
        helper.make_node("Reshape", ["q", "split"], ["q4"]),
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["k", "split"], ["k4"]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["v", "split"], ["v4"]),
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qh", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Add" if with_mask else "Identity", ["s1", "mask"] if with_mask else ["s1"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["o"]),
        helper.make_node("Transpose", ["o"], ["o2"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o2", "merge"], ["y"]),
    ]
    inputs = {"q": q, "k": k, "v": v, **({"mask": mask} if with_mask else {})}
    consts: dict[str, np.ndarray] = {"split": split, "merge": merge, "scale": np.array(scale, np.float32)}
    expected = run_ort(nodes, inputs, consts, "y")
    node = Node("Attention", ["q", "k", "v", "mask"] if with_mask else ["q", "k", "v"], ["y"],
                {"num_heads": heads, "scale": scale}, "att")
    got = reference.run_node(node, [q, k, v, mask] if with_mask else [q, k, v])[0]
    assert got.shape == q.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_infer_shapes_covers_fused_ops_with_symbolic_batch() -> None:
    g = Graph("fused", opset=17)
    g.add_input("x", "float32", ("batch", 3, 16, 16))
    g.add_const("w", RNG.standard_normal((8, 3, 3, 3)).astype(np.float32))
    g.add_const("b", np.zeros(8, np.float32) + 0.1)
    g.add_node("FusedConv", ["x", "w", "b"], ["c"], {"pads": [1, 1, 1, 1], "strides": [2, 2], "kernel_shape": [3, 3],
                                                     "activation": "Relu", "alpha": 0.0, "beta": 0.0})
    g.add_const("shape", np.array([0, 8, -1], np.int64))
    g.add_node("Reshape", ["c", "shape"], ["seq"])
    g.add_node("Transpose", ["seq"], ["tokens"], {"perm": [0, 2, 1]})
    g.add_const("ln_s", np.ones(8, np.float32))
    g.add_node("LayerNorm", ["tokens", "ln_s"], ["n"], {"axis": -1, "epsilon": 1e-5})
    g.add_const("wq", RNG.standard_normal((24, 8)).astype(np.float32))
    g.add_node("FusedGemm", ["n", "wq"], ["qkv"], {"transB": 1, "activation": "", "alpha": 0.0, "beta": 0.0})
    g.add_const("sizes", np.array([8, 8, 8], np.int64))
    g.add_node("Split", ["qkv", "sizes"], ["q", "k", "v"], {"axis": -1})
    g.add_node("Attention", ["q", "k", "v"], ["att"], {"num_heads": 2, "scale": 0.5})
    g.add_node("Gelu", ["att"], ["y"], {"approximate": "tanh"})
    g.outputs = ["y"]
    infer_shapes(g)
    verify(g)
    assert g.values["c"].shape == ("batch", 8, 8, 8)
    assert g.values["qkv"].shape == ("batch", 64, 24)
    assert g.values["y"].shape == ("batch", 64, 8)
    assert g.values["y"].dtype == "float32"
    infer_shapes(g, {"x": (3, 3, 16, 16)})
    assert g.values["y"].shape == (3, 64, 8)
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    values = reference.run(g, {"x": x}, outputs=["c", "qkv", "y"])
    for name, array in values.items():
        assert array.shape == g.values[name].shape
        assert str(array.dtype) == g.values[name].dtype
