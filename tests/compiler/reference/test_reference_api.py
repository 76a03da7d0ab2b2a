"""reference.run / run_node / lookup: the interpreter's contract."""

from __future__ import annotations

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.ir import Graph, Node
from farm.compiler.reference import OpNotImplementedError, ReferenceError

RNG = np.random.default_rng(3)


WEIGHT = RNG.standard_normal((4, 3)).astype(np.float32)


def small_graph() -> Graph:
    g = Graph("g", opset=17)
    g.add_input("x", "float32", ("n", 4))
    g.add_const("w", WEIGHT)
    g.add_node("MatMul", ["x", "w"], ["h"], name="mm")
    g.add_node("Relu", ["h"], ["y"], name="relu")
    g.add_node("Neg", ["x"], ["unused"], name="neg")
    g.outputs = ["y"]
    return g


def test_run_returns_graph_outputs_and_any_requested_value() -> None:
    g = small_graph()
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    out = reference.run(g, {"x": x})
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], np.maximum(x @ WEIGHT, 0), rtol=1e-6)
    both = reference.run(g, {"x": x}, outputs=["h", "unused"])
    np.testing.assert_allclose(both["h"], x @ WEIGHT, rtol=1e-6)
    np.testing.assert_array_equal(both["unused"], -x)


def test_run_rejects_unknown_and_missing_feeds() -> None:
    g = small_graph()
    with pytest.raises(ValueError, match="not graph inputs"):
        reference.run(g, {"x": np.ones((1, 4), np.float32), "z": np.ones(1)})
    with pytest.raises(ValueError, match="missing feed"):
        reference.run(g, {})
    with pytest.raises(ValueError, match="not values"):
        reference.run(g, {"x": np.ones((1, 4), np.float32)}, outputs=["nope"])


def test_node_failure_names_the_node() -> None:
    g = small_graph()
    with pytest.raises(ReferenceError, match="'mm' \\(MatMul\\)"):
        reference.run(g, {"x": np.ones((2, 5), np.float32)})


def test_run_node_handles_omitted_optional_inputs_and_multiple_outputs() -> None:
    x = np.array([-2.0, 0.5, 3.0], np.float32)
    clip = Node("Clip", ["x", "", "hi"], ["y"], {}, "clip")
    np.testing.assert_array_equal(reference.run_node(clip, [x, None, np.array(1.0, np.float32)])[0], [-2.0, 0.5, 1.0])
    topk = Node("TopK", ["x", "k"], ["v", "i"], {"axis": 0}, "topk")
    values, indices = reference.run_node(topk, [x, np.array([2], np.int64)])
    np.testing.assert_array_equal(values, [3.0, 0.5])
    np.testing.assert_array_equal(indices, [2, 1])


def test_run_node_accepts_the_attribute_form_of_axes_for_hand_built_nodes() -> None:
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    as_attr = Node("ReduceMean", ["x"], ["y"], {"axes": [1], "keepdims": 0}, "r1")
    as_input = Node("ReduceMean", ["x", "axes"], ["y"], {"keepdims": 0}, "r2")
    expected = x.mean(axis=1)
    np.testing.assert_allclose(reference.run_node(as_attr, [x])[0], expected, rtol=1e-6)
    np.testing.assert_allclose(reference.run_node(as_input, [x, np.array([1], np.int64)])[0], expected, rtol=1e-6)


def test_missing_op_lists_what_is_available() -> None:
    with pytest.raises(OpNotImplementedError) as info:
        reference.lookup("NoSuchOp")
    message = str(info.value)
    assert "NoSuchOp" in message and "Conv" in message and "FusedConv" in message
    node = Node("NoSuchOp", ["x"], ["y"], {}, "n")
    with pytest.raises(OpNotImplementedError):
        reference.run_node(node, [np.ones(1)])


def test_available_ops_include_every_fused_op() -> None:
    from farm.compiler.ir import FUSED_OPS

    available = set(reference.available_ops())
    assert set(FUSED_OPS) <= available
    assert {"Conv", "MatMul", "Softmax", "LayerNormalization", "Resize", "If", "Loop"} <= available


def test_conv_uses_im2col_and_matches_a_direct_loop() -> None:
    x = RNG.standard_normal((1, 3, 6, 5)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    node = Node("Conv", ["x", "w"], ["y"], {"pads": [1, 0, 0, 1], "strides": [1, 2], "dilations": [2, 1]}, "c")
    got = reference.run_node(node, [x, w])[0]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 0), (0, 1)))
    out_h = (padded.shape[2] - (3 - 1) * 2 - 1) // 1 + 1
    out_w = (padded.shape[3] - 2) // 2 + 1
    expected = np.zeros((1, 4, out_h, out_w), np.float64)
    for m in range(4):
        for i in range(out_h):
            for j in range(out_w):
                patch = padded[0, :, i : i + 5 : 2, j * 2 : j * 2 + 2]
                expected[0, m, i, j] = np.sum(patch * w[m])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
