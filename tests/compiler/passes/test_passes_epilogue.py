"""Gemm canonicalization and epilogue fusion (bias, activation, residual)."""

from __future__ import annotations

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.dead_code import DeadCodeElimination
from farm.compiler.passes.epilogue_fusion import EpilogueFusion
from farm.compiler.passes.gemm_canonicalization import GemmCanonicalization

RNG = np.random.default_rng(3)
CONV = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
NONE = {"activation": "", "alpha": 0.0, "beta": 0.0}


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_gemm_alpha_beta_fold_into_constants() -> None:
    b_w, c = w(5, 6), w(5)
    b = Builder()
    x = b.input("x", (3, 6))
    y = b.op(
        "Gemm",
        [x, b.const(b_w), b.const(c.reshape(1, 5))],
        {"transB": 1, "alpha": 0.5, "beta": 2.0},
        shape=(3, 5),
    )
    before = b.output(y)
    e = Builder()
    ex = e.input("x", (3, 6))
    expected = e.output(
        e.op("FusedGemm", [ex, e.const(b_w * 0.5), e.const(c * 2.0)], {"transB": 1, **NONE}, shape=(3, 5))
    )
    after, result = run_pass(GemmCanonicalization(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"converted Gemm to FusedGemm": 1}
    assert_same_numbers(before, after)


def test_gemm_constant_a_is_transposed_at_build_time() -> None:
    a_w = w(6, 3)
    b = Builder()
    x = b.input("x", (6, 4))
    before = b.output(b.op("Gemm", [b.const(a_w), x], {"transA": 1, "alpha": 2.0}, shape=(3, 4)))
    e = Builder()
    ex = e.input("x", (6, 4))
    expected = e.output(e.op("FusedGemm", [e.const(a_w.T * 2.0), ex], {"transB": 0, **NONE}, shape=(3, 4)))
    after, _ = run_pass(GemmCanonicalization(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_gemm_with_dynamic_operands_gets_explicit_ops() -> None:
    b = Builder()
    a = b.input("a", (6, 3))
    bb = b.input("b", (6, 4))
    c = b.input("c", (3, 4))
    y = b.op("Gemm", [a, bb, c], {"transA": 1, "alpha": 0.5, "beta": 2.0}, shape=(3, 4))
    before = b.output(y)
    e = Builder()
    ea, eb, ec = e.input("a", (6, 3)), e.input("b", (6, 4)), e.input("c", (3, 4))
    at = e.op("Transpose", [ea], {"perm": [1, 0]}, shape=(3, 6))
    scaled = e.op("Mul", [at, e.const(np.float32(0.5))], shape=(3, 6))
    cs = e.op("Mul", [ec, e.const(np.float32(2.0))], shape=(3, 4))
    expected = e.output(
        e.op("FusedGemm", [scaled, eb, "", cs], {"transB": 0, **NONE, "residual": "pre"}, shape=(3, 4))
    )
    after, _ = run_pass(GemmCanonicalization(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_conv_bias_relu_residual_pre() -> None:
    """ResNet: Conv -> Add(bias) -> Add(identity) -> Relu => FusedConv(residual="pre", Relu)."""
    wc, bias, extra = w(4, 4, 3, 3), w(4), w(1, 4, 1, 1)
    b = Builder()
    x = b.input("x", ("n", 4, 5, 5))
    c = b.op("Conv", [x, b.const(wc), b.const(bias)], CONV, shape=("n", 4, 5, 5))
    c2 = b.op("Add", [b.const(extra), c], shape=("n", 4, 5, 5))
    s = b.op("Add", [c2, x], shape=("n", 4, 5, 5))
    before = b.output(b.op("Relu", [s], shape=("n", 4, 5, 5)))
    e = Builder()
    ex = e.input("x", ("n", 4, 5, 5))
    attrs = {**CONV, **NONE, "activation": "Relu", "residual": "pre"}
    expected = e.output(
        e.op(
            "FusedConv", [ex, e.const(wc), e.const(bias + extra.reshape(4)), ex], attrs, shape=("n", 4, 5, 5)
        )
    )
    after, result = run_pass(EpilogueFusion(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"fused FusedConv epilogues (bias+residual+Relu)": 1}
    assert_same_numbers(before, after, {"n": 2})


@pytest.mark.parametrize(
    ("op", "attrs", "inputs", "activation", "alpha", "beta"),
    [
        ("Relu", {}, [], "Relu", 0.0, 0.0),
        ("LeakyRelu", {"alpha": 0.2}, [], "LeakyRelu", 0.2, 0.0),
        ("Clip", {}, [np.float32(0.0), np.float32(6.0)], "Clip", 0.0, 6.0),
        ("Sigmoid", {}, [], "Sigmoid", 0.0, 0.0),
        ("Tanh", {}, [], "Tanh", 0.0, 0.0),
        ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, [], "HardSigmoid", 1 / 6, 0.5),
        ("HardSwish", {}, [], "HardSwish", 0.0, 0.0),
        ("Gelu", {}, [], "Gelu", 0.0, 0.0),
        ("Gelu", {"approximate": "tanh"}, [], "GeluTanh", 0.0, 0.0),
    ],
)
def test_matmul_bias_activation_residual_post(
    op: str, attrs: dict, inputs: list, activation: str, alpha: float, beta: float
) -> None:
    wm, bias = w(8, 6), w(6)
    b = Builder()
    x = b.input("x", ("batch", 5, 8))
    r = b.input("r", ("batch", 5, 6))
    m = b.op("MatMul", [x, b.const(wm)], shape=("batch", 5, 6))
    biased = b.op("Add", [m, b.const(bias)], shape=("batch", 5, 6))
    act = b.op(op, [biased] + [b.const(v) for v in inputs], attrs, shape=("batch", 5, 6))
    before = b.output(b.op("Add", [r, act], shape=("batch", 5, 6)))
    e = Builder()
    ex, er = e.input("x", ("batch", 5, 8)), e.input("r", ("batch", 5, 6))
    fused = {"transB": 0, "activation": activation, "alpha": alpha, "beta": beta, "residual": "post"}
    expected = e.output(e.op("FusedGemm", [ex, e.const(wm), e.const(bias), er], fused, shape=("batch", 5, 6)))
    after, _ = run_pass(EpilogueFusion(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after, {"batch": 3})


CONVT = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}


def test_conv_transpose_bias_and_activation() -> None:
    """A decoder's ConvTranspose -> Add(per-channel bias) -> Relu => FusedConvTranspose(bias, Relu)."""
    wt, bias, extra = w(4, 3, 2, 2), w(3), w(1, 3, 1, 1)
    b = Builder()
    x = b.input("x", ("n", 4, 5, 5))
    c = b.op("ConvTranspose", [x, b.const(wt), b.const(bias)], CONVT, shape=("n", 3, 10, 10))
    c2 = b.op("Add", [c, b.const(extra)], shape=("n", 3, 10, 10))
    before = b.output(b.op("Relu", [c2], shape=("n", 3, 10, 10)))
    e = Builder()
    ex = e.input("x", ("n", 4, 5, 5))
    attrs = {**CONVT, **NONE, "activation": "Relu"}
    expected = e.output(
        e.op(
            "FusedConvTranspose",
            [ex, e.const(wt), e.const(bias + extra.reshape(3))],
            attrs,
            shape=("n", 3, 10, 10),
        )
    )
    after, result = run_pass(EpilogueFusion(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"fused FusedConvTranspose epilogues (bias+Relu)": 1}
    assert_same_numbers(before, after, {"n": 2})


def test_conv_transpose_takes_no_residual() -> None:
    """ConvTranspose -> Add(skip) -> Sigmoid: FusedConvTranspose has no residual input, so the Add
    stays and the Sigmoid after it is not the ConvTranspose's; a Silu gate right after it is."""
    wt = w(4, 4, 2, 2)
    b = Builder()
    x = b.input("x", (1, 4, 5, 5))
    skip = b.input("skip", (1, 4, 10, 10))
    c = b.op("ConvTranspose", [x, b.const(wt)], CONVT, shape=(1, 4, 10, 10))
    s = b.op("Add", [c, skip], shape=(1, 4, 10, 10))
    before = b.output(b.op("Sigmoid", [s], shape=(1, 4, 10, 10)))
    after, result = run_pass(EpilogueFusion(), before)
    assert not result.changes
    assert [n.op_type for n in after.nodes] == ["ConvTranspose", "Add", "Sigmoid"]
    b = Builder()
    x = b.input("x", (1, 4, 5, 5))
    c = b.op("ConvTranspose", [x, b.const(wt)], CONVT, shape=(1, 4, 10, 10))
    g = b.op("Sigmoid", [c], shape=(1, 4, 10, 10))
    before = b.output(b.op("Mul", [c, g], shape=(1, 4, 10, 10)))
    after, _ = run_pass(EpilogueFusion(), before)
    assert [(n.op_type, n.attr("activation")) for n in after.nodes] == [("FusedConvTranspose", "Silu")]
    assert_same_numbers(before, after)


def test_silu_written_as_x_times_sigmoid() -> None:
    wc = w(4, 3, 3, 3)
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    c = b.op("Conv", [x, b.const(wc)], CONV, shape=(1, 4, 5, 5))
    s = b.op("Sigmoid", [c], shape=(1, 4, 5, 5))
    before = b.output(b.op("Mul", [c, s], shape=(1, 4, 5, 5)))
    e = Builder()
    ex = e.input("x", (1, 3, 5, 5))
    expected = e.output(
        e.op("FusedConv", [ex, e.const(wc)], {**CONV, **NONE, "activation": "Silu"}, shape=(1, 4, 5, 5))
    )
    after, _ = run_pass(EpilogueFusion(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_fused_gemm_from_canonicalization_extends() -> None:
    b = Builder()
    x = b.input("x", (2, 8))
    g = b.op("Gemm", [x, b.const(w(4, 8)), b.const(w(4))], {"transB": 1}, shape=(2, 4))
    before = b.output(b.op("Relu", [g], shape=(2, 4)))
    after, _ = run_pass(GemmCanonicalization(), before)
    after, result = run_pass(EpilogueFusion(), after)
    assert after.op_histogram() == {"FusedGemm": 1}
    assert after.nodes[0].attrs["activation"] == "Relu"
    assert_same_numbers(before, after)


def test_guards_decline() -> None:
    # the conv output is read twice: nothing may be fused into it
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    c = b.op("Conv", [x, b.const(w(4, 3, 3, 3))], CONV, shape=(1, 4, 5, 5))
    r = b.op("Relu", [c], shape=(1, 4, 5, 5))
    before = b.output(b.op("Add", [r, c], shape=(1, 4, 5, 5)))
    assert run_pass(EpilogueFusion(), before)[1].changed == 0
    # the activation's input is a graph output
    b = Builder()
    x = b.input("x", (2, 8))
    m = b.op("MatMul", [x, b.const(w(8, 4))], shape=(2, 4))
    before = b.output(b.op("Relu", [m], shape=(2, 4)), m)
    assert run_pass(EpilogueFusion(), before)[1].changed == 0
    # a bias that varies along rows is not a per-column bias; a residual that would grow the output
    b = Builder()
    x = b.input("x", (2, 8))
    m = b.op("MatMul", [x, b.const(w(8, 4))], shape=(2, 4))
    before = b.output(b.op("Add", [m, b.input("big", (3, 2, 4))], shape=(3, 2, 4)))
    assert run_pass(EpilogueFusion(), before)[1].changed == 0
    # 1-D MatMul operands
    b = Builder()
    x = b.input("x", (8,))
    m = b.op("MatMul", [x, b.const(w(8, 4))], shape=(4,))
    before = b.output(b.op("Relu", [m], shape=(4,)))
    assert run_pass(EpilogueFusion(), before)[1].changed == 0


def test_hardswish_written_as_x_times_hardsigmoid() -> None:
    wc = w(4, 3, 3, 3)
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    c = b.op("Conv", [x, b.const(wc)], CONV, shape=(1, 4, 5, 5))
    gate = b.op("HardSigmoid", [c], {"alpha": 1 / 6, "beta": 0.5}, shape=(1, 4, 5, 5))
    before = b.output(b.op("Mul", [gate, c], shape=(1, 4, 5, 5)))
    after, _ = run_pass(EpilogueFusion(), before)
    assert after.op_histogram() == {"FusedConv": 1}
    assert after.nodes[0].attrs["activation"] == "HardSwish"
    assert_same_numbers(before, after)
    # the default HardSigmoid (alpha 0.2) is not a HardSwish gate
    before.find("HardSigmoid")[0].attrs["alpha"] = 0.2
    assert run_pass(EpilogueFusion(), before)[0].op_histogram() == {"Conv": 1, "HardSigmoid": 1, "Mul": 1}


def test_gemm_layout_drops_row_shuffles_around_a_row_wise_gemm() -> None:
    from farm.compiler.passes.gemm_layout import GemmLayout

    wt, bias = w(6, 8), w(6)
    attrs = {"transB": 1, **NONE}
    b = Builder()
    x = b.input("x", (2, 3, 8))
    t = b.op("Transpose", [x], {"perm": [1, 0, 2]}, shape=(3, 2, 8))
    flat = b.op("Reshape", [t, b.const(np.array([-1, 8]))], shape=(6, 8))
    g = b.op("FusedGemm", [flat, b.const(wt), b.const(bias)], attrs, shape=(6, 6))
    back = b.op("Reshape", [g, b.const(np.array([3, 2, 6]))], shape=(3, 2, 6))
    before = b.output(b.op("Transpose", [back], {"perm": [1, 0, 2]}, shape=(2, 3, 6)))
    e = Builder()
    ex = e.input("x", (2, 3, 8))
    expected = e.output(e.op("FusedGemm", [ex, e.const(wt), e.const(bias)], attrs, shape=(2, 3, 6)))
    after, result = run_pass(GemmLayout(), before)
    after, second = run_pass(GemmLayout(), after)
    after, _ = run_pass(DeadCodeElimination(), after)
    assert_same_graph(after, expected)
    assert result.changes == {"removed Reshape pairs around FusedGemm": 1}
    assert second.changes == {"removed Transpose pairs around FusedGemm": 1}
    assert_same_numbers(before, after)


def test_gemm_layout_guards() -> None:
    from farm.compiler.passes.gemm_layout import GemmLayout

    # the permutation moves the GEMM's reduction axis
    b = Builder()
    x = b.input("x", (4, 8))
    t = b.op("Transpose", [x], {"perm": [1, 0]}, shape=(8, 4))
    g = b.op("FusedGemm", [t, b.const(w(4, 5))], {"transB": 0, **NONE}, shape=(8, 5))
    before = b.output(b.op("Transpose", [g], {"perm": [1, 0]}, shape=(5, 8)))
    assert run_pass(GemmLayout(), before)[1].changed == 0
    # a residual is laid out like the output: not row-wise-safe to move
    b = Builder()
    x = b.input("x", (2, 3, 8))
    r = b.input("r", (3, 2, 5))
    t = b.op("Transpose", [x], {"perm": [1, 0, 2]}, shape=(3, 2, 8))
    g = b.op(
        "FusedGemm", [t, b.const(w(8, 5)), "", r], {"transB": 0, **NONE, "residual": "post"}, shape=(3, 2, 5)
    )
    before = b.output(b.op("Transpose", [g], {"perm": [1, 0, 2]}, shape=(2, 3, 5)))
    assert run_pass(GemmLayout(), before)[1].changed == 0
