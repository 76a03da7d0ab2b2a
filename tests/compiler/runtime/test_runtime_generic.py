"""The generic numpy tactics against the reference, op by op, on fresh random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from farm.compiler.ir import Graph, dtype_name
from farm.compiler.kernels import candidates, get_tactic
from farm.compiler.kernels.cpu.generic import apply_activation, erf_float32, run_reference_node
from farm.compiler.reference import available_ops
from farm.compiler.tuner import compare_outputs

rng = np.random.default_rng(7)
F = np.float32


def _f(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(F)


CASES = [
    ("cpu.numpy.unary", "Relu", {}, [_f(3, 5)]),
    ("cpu.numpy.unary", "Sigmoid", {}, [_f(3, 5)]),
    ("cpu.numpy.unary", "Erf", {}, [_f(4, 7)]),
    ("cpu.numpy.unary", "Sqrt", {}, [np.abs(_f(4)) + 0.1]),
    ("cpu.numpy.unary", "Not", {}, [rng.random((3, 3)) < 0.5]),
    ("cpu.numpy.binary", "Add", {}, [_f(2, 3, 4), _f(4)]),
    ("cpu.numpy.binary", "Div", {}, [_f(2, 3), np.abs(_f(2, 1)) + 0.5]),
    ("cpu.numpy.binary", "Sub", {}, [np.arange(6, dtype=np.int64).reshape(2, 3), np.int64(2) * np.ones(3, np.int64)]),
    ("cpu.numpy.binary", "Equal", {}, [np.arange(4, dtype=np.int64), np.array([0, 2, 2, 3], np.int64)]),
    ("cpu.numpy.where", "Where", {}, [rng.random((2, 1, 4)) < 0.5, _f(3, 4), _f(2, 3, 1)]),
    ("cpu.numpy.copy", "Transpose", {"perm": [0, 2, 1, 3]}, [_f(2, 3, 4, 5)]),
    ("cpu.numpy.copy", "Transpose", {}, [_f(2, 3, 4)]),
    ("cpu.numpy.copy", "Expand", {}, [_f(1, 3, 1), np.array([2, 3, 4], np.int64)]),
    ("cpu.numpy.copy", "Cast", {"to": 7}, [_f(5) * 10]),
    ("cpu.numpy.copy", "Concat", {"axis": 1}, [_f(2, 3, 2), _f(2, 1, 2), _f(2, 4, 2)]),
    ("cpu.numpy.copy", "Split", {"axis": -1}, [_f(2, 3, 12), np.array([4, 6, 2], np.int64)]),
    ("cpu.numpy.copy", "Gather", {"axis": 1}, [_f(2, 5, 3), np.array([[0, -1], [4, 2]], np.int64)]),
    ("cpu.numpy.copy", "Gather", {"axis": 1}, [_f(2, 5, 3), np.array(0, np.int64)]),
    ("cpu.numpy.copy", "Reshape", {}, [_f(2, 6), np.array([3, 4], np.int64)]),
    ("cpu.numpy.gemm_blas", "FusedGemm", {"transB": 1, "activation": "Gelu", "residual": "post"},
     [_f(2, 5, 8), _f(6, 8), _f(6), _f(2, 5, 6)]),
    ("cpu.numpy.gemm_blas", "Gemm", {"transA": 1, "alpha": 0.5, "beta": 2.0}, [_f(4, 3), _f(4, 5), _f(1, 5)]),
    ("cpu.numpy.conv_im2col", "FusedConv",
     {"pads": [1, 0, 1, 0], "strides": [2, 1], "dilations": [1, 2], "group": 2, "kernel_shape": [3, 2],
      "activation": "Clip", "alpha": -0.5, "beta": 0.5, "residual": "pre"},
     [_f(2, 4, 7, 6), _f(6, 2, 3, 2), _f(6), None]),
    ("cpu.numpy.attention", "Attention", {"num_heads": 2, "scale": 0.3}, [_f(2, 3, 8), _f(2, 5, 8), _f(2, 5, 8), _f(2, 1, 1, 5)]),
    ("cpu.numpy.Softmax", "Softmax", {"axis": 1}, [_f(2, 3, 4)]),
]  # fmt: skip


def _graph_for(op: str, attrs: dict, inputs: list[np.ndarray | None]) -> tuple[Graph, list[np.ndarray]]:
    g = Graph("one", opset=17)
    names = []
    for i, x in enumerate(inputs):
        if x is None:
            names.append("")
            continue
        x = np.asarray(x)
        g.add_input(f"in{i}", dtype_name(x.dtype), x.shape)
        names.append(f"in{i}")
    node = g.add_node(op, names, 1 if op != "Split" else 3, attrs)
    want = run_reference_node(node, [None if x is None else np.asarray(x) for x in inputs], g)
    for name, w in zip(node.outputs, want, strict=True):
        g.values[name].dtype = dtype_name(w.dtype)
        g.values[name].shape = w.shape
    g.outputs = list(node.outputs)
    return g, want


@pytest.mark.parametrize(
    ("tactic_name", "op", "attrs", "inputs"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_generic_tactic_matches_reference(tactic_name: str, op: str, attrs: dict, inputs: list) -> None:
    graph, want = _graph_for(op, attrs, inputs)
    node = graph.nodes[0]
    tactic = get_tactic(tactic_name)
    assert tactic in candidates(node, graph)
    prepared = tactic.prepare(node, graph)
    outs = [np.full(w.shape, np.nan if w.dtype.kind == "f" else 0, dtype=w.dtype) for w in want]
    tactic.run(node, [None if x is None else np.asarray(x) for x in inputs], outs, prepared)
    for got, ref in zip(outs, want, strict=True):
        assert compare_outputs(got, ref) is None, (op, got, ref)


def test_every_reference_op_has_a_generic_tactic() -> None:
    from farm.compiler.kernels.registry import _BY_OP

    missing = [
        op for op in available_ops() if not any(t.name.startswith("cpu.numpy.") for t in _BY_OP.get(op, []))
    ]
    assert missing == []


def test_erf_and_gelu_epilogue_precision() -> None:
    x = np.linspace(-5, 5, 20001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.max(np.abs(erf_float32(x) - exact)) < 1e-6
    gelu = apply_activation(x.copy(), "Gelu", 0.0, 0.0)
    exact_gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.max(np.abs(gelu - exact_gelu)) < 5e-6


@pytest.mark.parametrize("strides", [[1, 1], [2, 2]])
def test_generic_depthwise_conv_matches_reference(strides: list[int]) -> None:
    x, w, b = _f(2, 6, 9, 8), _f(6, 1, 3, 3), _f(6)
    attrs = {
        "pads": [1, 1, 1, 1],
        "strides": strides,
        "group": 6,
        "kernel_shape": [3, 3],
        "activation": "Relu",
    }
    graph, want = _graph_for("FusedConv", attrs, [x, w, b])
    node = graph.nodes[0]
    tactic = get_tactic("cpu.numpy.conv_im2col")
    out = np.full(want[0].shape, np.nan, dtype=np.float32)
    tactic.run(node, [x, w, b], [out], tactic.prepare(node, graph))
    assert compare_outputs(out, want[0]) is None


@pytest.mark.parametrize("activation", ["Sigmoid", "Silu"])
def test_sigmoid_and_silu_saturate_without_overflow_warnings(activation: str) -> None:
    """Large negative inputs (a detector's logits) overflow exp(-z) to inf; the result is the
    limit (0 or -0) and the build prints no RuntimeWarning for it."""
    z = np.concatenate([np.array([-1000.0, -100.0, -89.0, 0.0, 100.0], F), rng.standard_normal(11).astype(F)])
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    if activation == "Silu":
        want = z * want
    with np.errstate(over="raise"):
        got = apply_activation(z.copy(), activation, 0.0, 0.0)
    np.testing.assert_allclose(got, want.astype(F), rtol=1e-6, atol=1e-30)
