"""LayerNorm, GELU and Softmax pattern fusion: the forms PyTorch's exporters write."""

from __future__ import annotations

import math

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.gelu_fusion import GeluFusion
from farm.compiler.passes.layernorm_fusion import LayerNormFusion
from farm.compiler.passes.softmax_fusion import SoftmaxFusion

RNG = np.random.default_rng(11)
SHAPE = ("batch", 5, 16)


def decomposed_layernorm(b: Builder, x: str, shape, axes, gamma, beta, *, square="Pow", divide="Div"):  # type: ignore[no-untyped-def]
    reduced = tuple(1 if i % len(shape) in [a % len(shape) for a in axes] else d for i, d in enumerate(shape))
    ax = b.const(np.array(axes, dtype=np.int64))
    mean = b.op("ReduceMean", [x, ax], {"keepdims": 1}, shape=reduced)
    d = b.op("Sub", [x, mean], shape=shape)
    sq = (
        b.op("Pow", [d, b.const(np.float32(2.0))], shape=shape)
        if square == "Pow"
        else b.op("Mul", [d, d], shape=shape)
    )
    var = b.op("ReduceMean", [sq, ax], {"keepdims": 1}, shape=reduced)
    ve = b.op("Add", [var, b.const(np.float32(1e-12))], shape=reduced)
    std = b.op("Sqrt", [ve], shape=reduced)
    if divide == "Div":
        n = b.op("Div", [d, std], shape=shape)
    else:
        n = b.op("Mul", [d, b.op("Reciprocal", [std], shape=reduced)], shape=shape)
    if gamma is not None:
        n = b.op("Mul", [b.const(gamma), n], shape=shape)
    if beta is not None:
        n = b.op("Add", [n, b.const(beta)], shape=shape)
    return n


@pytest.mark.parametrize(("square", "divide"), [("Pow", "Div"), ("Mul", "Reciprocal")])
def test_decomposed_layernorm(square: str, divide: str) -> None:
    gamma, beta = RNG.standard_normal(16).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
    b = Builder()
    x = b.input("x", SHAPE)
    before = b.output(decomposed_layernorm(b, x, SHAPE, [-1], gamma, beta, square=square, divide=divide))
    e = Builder()
    ex = e.input("x", SHAPE)
    expected = e.output(
        e.op("LayerNorm", [ex, e.const(gamma), e.const(beta)], {"axis": -1, "epsilon": 1e-12}, shape=SHAPE)
    )
    after, result = run_pass(LayerNormFusion(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"fused LayerNorm": 1}
    assert_same_numbers(before, after, {"batch": 3})


def test_layernorm_over_two_axes_without_affine_and_broadcast_gamma() -> None:
    shape = (2, 3, 4, 5)
    b = Builder()
    x = b.input("x", shape)
    before = b.output(decomposed_layernorm(b, x, shape, [2, 3], None, None))
    after, _ = run_pass(LayerNormFusion(), before)
    e = Builder()
    ex = e.input("x", shape)
    expected = e.output(
        e.op(
            "LayerNorm",
            [ex, e.const(np.ones((4, 5), np.float32))],
            {"axis": -2, "epsilon": 1e-12},
            shape=shape,
        )
    )
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)

    gamma = RNG.standard_normal((1, 1, 1, 5)).astype(np.float32)  # varies over the last axis only
    b = Builder()
    x = b.input("x", shape)
    before = b.output(decomposed_layernorm(b, x, shape, [2, 3], gamma, None))
    after, _ = run_pass(LayerNormFusion(), before)
    assert after.op_histogram() == {"LayerNorm": 1}
    assert after.values[after.nodes[0].inputs[1]].shape == (4, 5)
    assert_same_numbers(before, after)


def test_layernorm_guards() -> None:
    # normalizing over a non-trailing axis is not LayerNorm
    b = Builder()
    x = b.input("x", (2, 3, 4))
    before = b.output(decomposed_layernorm(b, x, (2, 3, 4), [1], None, None))
    assert run_pass(LayerNormFusion(), before)[1].changed == 0
    # a gamma that varies over a non-normalized axis stays outside (LayerNorm fused with scale 1)
    b = Builder()
    x = b.input("x", (2, 3, 4))
    before = b.output(
        decomposed_layernorm(b, x, (2, 3, 4), [-1], RNG.standard_normal((3, 1)).astype(np.float32), None)
    )
    after, _ = run_pass(LayerNormFusion(), before)
    assert after.op_histogram() == {"LayerNorm": 1, "Mul": 1}
    assert_same_numbers(before, after)
    # an intermediate that is a graph output
    b = Builder()
    x = b.input("x", (2, 4))
    ax = b.const(np.array([-1]))
    mean = b.op("ReduceMean", [x, ax], {"keepdims": 1}, shape=(2, 1))
    d = b.op("Sub", [x, mean], shape=(2, 4))
    var = b.op("ReduceMean", [b.op("Mul", [d, d], shape=(2, 4)), ax], {"keepdims": 1}, shape=(2, 1))
    std = b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-5))], shape=(2, 1))], shape=(2, 1))
    before = b.output(b.op("Div", [d, std], shape=(2, 4)), var)
    assert run_pass(LayerNormFusion(), before)[1].changed == 0


def test_onnx_layernormalization_becomes_layernorm() -> None:
    gamma = RNG.standard_normal(16).astype(np.float32)
    b = Builder()
    x = b.input("x", SHAPE)
    before = b.output(
        b.op("LayerNormalization", [x, b.const(gamma)], {"axis": 2, "epsilon": 1e-6}, shape=SHAPE)
    )
    e = Builder()
    ex = e.input("x", SHAPE)
    expected = e.output(e.op("LayerNorm", [ex, e.const(gamma)], {"axis": -1, "epsilon": 1e-6}, shape=SHAPE))
    after, _ = run_pass(LayerNormFusion(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def gelu_erf(b: Builder, x: str, order: str) -> str:
    s = SHAPE
    if order == "div":
        u = b.op("Div", [x, b.const(np.float32(math.sqrt(2)))], shape=s)
    else:
        u = b.op("Mul", [b.const(np.float32(1 / math.sqrt(2))), x], shape=s)
    a = b.op("Add", [b.op("Erf", [u], shape=s), b.const(np.float32(1.0))], shape=s)
    if order == "div":  # torch: (x * (1 + erf)) * 0.5
        return b.op("Mul", [b.op("Mul", [x, a], shape=s), b.const(np.float32(0.5))], shape=s)
    if order == "half_first":  # (x * 0.5) * (1 + erf)
        return b.op("Mul", [b.op("Mul", [x, b.const(np.float32(0.5))], shape=s), a], shape=s)
    return b.op("Mul", [x, b.op("Mul", [a, b.const(np.float32(0.5))], shape=s)], shape=s)


@pytest.mark.parametrize("order", ["div", "half_first", "half_inner"])
def test_gelu_erf_forms(order: str) -> None:
    b = Builder()
    x = b.input("x", SHAPE)
    before = b.output(gelu_erf(b, x, order))
    e = Builder()
    ex = e.input("x", SHAPE)
    expected = e.output(e.op("Gelu", [ex], {"approximate": "none"}, shape=SHAPE))
    after, result = run_pass(GeluFusion(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"fused Gelu (erf form)": 1}
    assert_same_numbers(before, after, {"batch": 2})


@pytest.mark.parametrize("cube", ["Pow", "MulMul"])
def test_gelu_tanh_form(cube: str) -> None:
    s = SHAPE
    b = Builder()
    x = b.input("x", s)
    if cube == "Pow":
        x3 = b.op("Pow", [x, b.const(np.float32(3.0))], shape=s)
    else:
        x3 = b.op("Mul", [x, b.op("Mul", [x, x], shape=s)], shape=s)
    inner = b.op("Add", [x, b.op("Mul", [x3, b.const(np.float32(0.044715))], shape=s)], shape=s)
    t = b.op("Tanh", [b.op("Mul", [b.const(np.float32(math.sqrt(2 / math.pi))), inner], shape=s)], shape=s)
    a = b.op("Add", [b.const(np.float32(1.0)), t], shape=s)
    before = b.output(b.op("Mul", [b.op("Mul", [b.const(np.float32(0.5)), x], shape=s), a], shape=s))
    e = Builder()
    ex = e.input("x", s)
    expected = e.output(e.op("Gelu", [ex], {"approximate": "tanh"}, shape=s))
    after, _ = run_pass(GeluFusion(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_gelu_guards() -> None:
    # wrong constant: not GELU
    b = Builder()
    x = b.input("x", SHAPE)
    u = b.op("Div", [x, b.const(np.float32(2.0))], shape=SHAPE)
    a = b.op("Add", [b.op("Erf", [u], shape=SHAPE), b.const(np.float32(1.0))], shape=SHAPE)
    before = b.output(b.op("Mul", [b.op("Mul", [x, a], shape=SHAPE), b.const(np.float32(0.5))], shape=SHAPE))
    assert run_pass(GeluFusion(), before)[1].changed == 0
    # the erf output is also read elsewhere
    b = Builder()
    x = b.input("x", SHAPE)
    u = b.op("Div", [x, b.const(np.float32(math.sqrt(2)))], shape=SHAPE)
    erf = b.op("Erf", [u], shape=SHAPE)
    a = b.op("Add", [erf, b.const(np.float32(1.0))], shape=SHAPE)
    before = b.output(
        b.op("Mul", [b.op("Mul", [x, a], shape=SHAPE), b.const(np.float32(0.5))], shape=SHAPE), erf
    )
    assert run_pass(GeluFusion(), before)[1].changed == 0


@pytest.mark.parametrize("with_max", [True, False])
def test_softmax_decomposition(with_max: bool) -> None:
    s = (2, 3, 7)
    b = Builder()
    x = b.input("x", s)
    ax = b.const(np.array([1]))
    u = x
    if with_max:
        m = b.op("ReduceMax", [x, ax], {"keepdims": 1}, shape=(2, 1, 7))
        u = b.op("Sub", [x, m], shape=s)
    ex_ = b.op("Exp", [u], shape=s)
    total = b.op("ReduceSum", [ex_, ax], {"keepdims": 1}, shape=(2, 1, 7))
    before = b.output(b.op("Div", [ex_, total], shape=s))
    e = Builder()
    ex = e.input("x", s)
    expected = e.output(e.op("Softmax", [ex], {"axis": -2}, shape=s))
    after, result = run_pass(SoftmaxFusion(), before)
    assert_same_graph(after, expected)
    assert result.changed == 1
    assert_same_numbers(before, after)


def test_softmax_guards() -> None:
    s = (2, 3, 7)
    b = Builder()
    x = b.input("x", s)
    e_ = b.op("Exp", [x], shape=s)
    total = b.op("ReduceSum", [e_, b.const(np.array([1, 2]))], {"keepdims": 1}, shape=(2, 1, 1))
    before = b.output(b.op("Div", [e_, total], shape=s))
    assert run_pass(SoftmaxFusion(), before)[1].changed == 0  # two axes
    b = Builder()
    x = b.input("x", s)
    e_ = b.op("Exp", [x], shape=s)
    total = b.op("ReduceSum", [e_, b.const(np.array([2]))], {"keepdims": 1}, shape=(2, 3, 1))
    before = b.output(b.op("Div", [e_, total], shape=s), total)
    assert run_pass(SoftmaxFusion(), before)[1].changed == 0  # the sum is a graph output
