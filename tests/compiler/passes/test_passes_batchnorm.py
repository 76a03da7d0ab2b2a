"""BatchNorm folding into Conv, ConvTranspose, Gemm and MatMul."""

from __future__ import annotations

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.batchnorm_folding import BatchNormFolding

RNG = np.random.default_rng(7)


def bn_params(c: int) -> list[np.ndarray]:
    gamma = RNG.uniform(0.5, 1.5, c)
    beta = RNG.standard_normal(c)
    mean = RNG.standard_normal(c)
    var = RNG.uniform(0.5, 2.0, c)
    return [p.astype(np.float32) for p in (gamma, beta, mean, var)]


def test_conv_batchnorm_folds_into_weights_and_bias() -> None:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(4).astype(np.float32)
    gamma, beta, mean, var = bn_params(4)
    conv_attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    b = Builder()
    x = b.input("x", ("n", 3, 6, 6))
    c = b.op("Conv", [x, b.const(w), b.const(bias)], conv_attrs, shape=("n", 4, 6, 6))
    y = b.op(
        "BatchNormalization",
        [c] + [b.const(p) for p in (gamma, beta, mean, var)],
        {"epsilon": 1e-3},
        shape=("n", 4, 6, 6),
    )
    before = b.output(y)

    s = gamma / np.sqrt(var + 1e-3)
    e = Builder()
    ex = e.input("x", ("n", 3, 6, 6))
    expected = e.output(
        e.op(
            "Conv",
            [ex, e.const(w * s[:, None, None, None]), e.const((bias - mean) * s + beta)],
            conv_attrs,
            shape=("n", 4, 6, 6),
        )
    )
    after, result = run_pass(BatchNormFolding(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"folded BatchNormalization into Conv": 1}
    assert_same_numbers(before, after, {"n": 2})


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_batchnorm(group: int) -> None:
    w = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)  # C_in=4, C_out/group=3
    channels = 3 * group
    b = Builder()
    x = b.input("x", (1, 4, 5, 5))
    c = b.op(
        "ConvTranspose",
        [x, b.const(w)],
        {"strides": [2, 2], "group": group, "kernel_shape": [2, 2]},
        shape=(1, channels, 10, 10),
    )
    before = b.output(
        b.op(
            "BatchNormalization", [c] + [b.const(p) for p in bn_params(channels)], shape=(1, channels, 10, 10)
        )
    )
    after, result = run_pass(BatchNormFolding(), before)
    assert after.op_histogram() == {"ConvTranspose": 1}
    assert_same_numbers(before, after)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_and_matmul_batchnorm(trans_b: int) -> None:
    w = RNG.standard_normal((5, 6) if trans_b else (6, 5)).astype(np.float32)
    b = Builder()
    x = b.input("x", (3, 6))
    g = b.op(
        "Gemm",
        [x, b.const(w), b.const(np.float32(0.5))],
        {"transB": trans_b, "alpha": 2.0, "beta": 3.0},
        shape=(3, 5),
    )
    before = b.output(b.op("BatchNormalization", [g] + [b.const(p) for p in bn_params(5)], shape=(3, 5)))
    after, result = run_pass(BatchNormFolding(), before)
    assert after.op_histogram() == {"Gemm": 1}
    assert after.nodes[0].attrs["alpha"] == 1.0 and after.nodes[0].attrs["beta"] == 1.0
    assert_same_numbers(before, after)

    b = Builder()
    x = b.input("x", (3, 6))
    m = b.op("MatMul", [x, b.const(RNG.standard_normal((6, 5)).astype(np.float32))], shape=(3, 5))
    before = b.output(b.op("BatchNormalization", [m] + [b.const(p) for p in bn_params(5)], shape=(3, 5)))
    after, _ = run_pass(BatchNormFolding(), before)
    assert [n.op_type for n in after.nodes] == ["MatMul", "Add"]
    assert_same_numbers(before, after)


def test_declines_shared_conv_output_non_constant_weights_and_3d_matmul() -> None:
    b = Builder()
    x = b.input("x", (1, 3, 4, 4))
    c = b.op("Conv", [x, b.const(RNG.standard_normal((2, 3, 1, 1)).astype(np.float32))], shape=(1, 2, 4, 4))
    y = b.op("BatchNormalization", [c] + [b.const(p) for p in bn_params(2)], shape=(1, 2, 4, 4))
    before = b.output(y, c)  # the conv's output is also a graph output
    assert run_pass(BatchNormFolding(), before)[1].changed == 0

    b = Builder()
    x = b.input("x", (1, 3, 4, 4))
    w = b.input("w", (2, 3, 1, 1))
    c = b.op("Conv", [x, w], shape=(1, 2, 4, 4))
    before = b.output(
        b.op("BatchNormalization", [c] + [b.const(p) for p in bn_params(2)], shape=(1, 2, 4, 4))
    )
    assert run_pass(BatchNormFolding(), before)[1].changed == 0

    b = Builder()
    x = b.input("x", (2, 3, 6))
    m = b.op("MatMul", [x, b.const(RNG.standard_normal((6, 3)).astype(np.float32))], shape=(2, 3, 3))
    before = b.output(b.op("BatchNormalization", [m] + [b.const(p) for p in bn_params(3)], shape=(2, 3, 3)))
    assert run_pass(BatchNormFolding(), before)[1].changed == 0


def test_per_channel_mul_folds_into_conv_and_matmul_weights() -> None:
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    s = RNG.uniform(0.5, 2.0, (4, 1, 1)).astype(np.float32)
    b = Builder()
    x = b.input("x", ("n", 3, 5, 5))
    c = b.op("Conv", [x, b.const(w)], {"kernel_shape": [1, 1]}, shape=("n", 4, 5, 5))
    before = b.output(b.op("Mul", [b.const(s), c], shape=("n", 4, 5, 5)))
    e = Builder()
    ex = e.input("x", ("n", 3, 5, 5))
    expected = e.output(
        e.op("Conv", [ex, e.const(w * s.reshape(4, 1, 1, 1))], {"kernel_shape": [1, 1]}, shape=("n", 4, 5, 5))
    )
    after, result = run_pass(BatchNormFolding(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"folded channel scale Mul into Conv": 1}
    assert_same_numbers(before, after, {"n": 2})

    wm = RNG.standard_normal((6, 5)).astype(np.float32)
    b = Builder()
    x = b.input("x", (2, 3, 6))
    m = b.op("MatMul", [x, b.const(wm)], shape=(2, 3, 5))
    before = b.output(b.op("Mul", [m, b.const(np.float32(0.125))], shape=(2, 3, 5)))
    e = Builder()
    ex = e.input("x", (2, 3, 6))
    expected = e.output(e.op("MatMul", [ex, e.const(wm * 0.125)], shape=(2, 3, 5)))
    after, _ = run_pass(BatchNormFolding(), before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_mul_that_varies_over_other_axes_is_not_folded() -> None:
    b = Builder()
    x = b.input("x", (1, 3, 4, 4))
    c = b.op("Conv", [x, b.const(RNG.standard_normal((2, 3, 1, 1)).astype(np.float32))], shape=(1, 2, 4, 4))
    spatial = RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)
    before = b.output(b.op("Mul", [c, b.const(spatial)], shape=(1, 2, 4, 4)))
    assert run_pass(BatchNormFolding(), before)[1].changed == 0
    b = Builder()
    x = b.input("x", (2, 6))
    m = b.op("MatMul", [x, b.input("w", (6, 5))], shape=(2, 5))  # weights not constant
    before = b.output(b.op("Mul", [m, b.const(np.float32(2.0))], shape=(2, 5)))
    assert run_pass(BatchNormFolding(), before)[1].changed == 0


@pytest.mark.parametrize(("op", "group"), [("ConvTranspose", 1), ("ConvTranspose", 2), ("Conv", 1)])
def test_bias_add_then_batchnorm_fold_into_the_conv(op: str, group: int) -> None:
    """PaddlePaddle's ConvTranspose -> Add([1, C, 1, 1]) -> BatchNorm (the DB text detector's
    head): the Add becomes the conv's bias, then the BatchNorm folds into weight and bias."""
    if op == "ConvTranspose":
        w = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)
        channels, attrs, out_shape = 3 * group, {"strides": [2, 2], "group": group}, (2, 3 * group, 10, 10)
    else:
        w = RNG.standard_normal((5, 4, 3, 3)).astype(np.float32)
        channels, attrs, out_shape = 5, {"pads": [1, 1, 1, 1]}, (2, 5, 5, 5)
    shift = RNG.standard_normal((1, channels, 1, 1)).astype(np.float32)
    b = Builder()
    x = b.input("x", (2, 4, 5, 5))
    c = b.op(op, [x, b.const(w)], attrs, shape=out_shape)
    added = b.op("Add", [b.const(shift), c], shape=out_shape)
    before = b.output(b.op("BatchNormalization", [added] + [b.const(p) for p in bn_params(channels)], shape=out_shape))
    middle, first = run_pass(BatchNormFolding(), before)  # one sweep; the pipeline repeats it
    after, second = run_pass(BatchNormFolding(), middle)
    assert after.op_histogram() == {op: 1}
    assert first.changes == {f"folded a channel bias Add into {op}": 1}
    assert second.changes == {f"folded BatchNormalization into {op}": 1}
    assert_same_numbers(before, after)


def test_bias_add_with_an_existing_bias_and_a_scalar_add() -> None:
    w = RNG.standard_normal((4, 3, 3)).astype(np.float32)  # 1-D ConvTranspose, C_out 3
    bias = RNG.standard_normal(3).astype(np.float32)
    b = Builder()
    x = b.input("x", (1, 4, 7))
    c = b.op("ConvTranspose", [x, b.const(w), b.const(bias)], {"strides": [2]}, shape=(1, 3, 15))
    before = b.output(b.op("Add", [c, b.const(np.float32(0.75))], shape=(1, 3, 15)))
    after, _ = run_pass(BatchNormFolding(), before)
    assert after.op_histogram() == {"ConvTranspose": 1}
    np.testing.assert_allclose(after.const(after.nodes[0].inputs[2]), bias + 0.75, rtol=1e-6)
    assert_same_numbers(before, after)


def test_adds_that_are_not_a_channel_bias_stay() -> None:
    w = RNG.standard_normal((2, 3, 1, 1)).astype(np.float32)
    for other, shape in (
        (RNG.standard_normal((1, 1, 4, 4)).astype(np.float32), (1, 2, 4, 4)),  # varies over pixels
        (np.ones((1, 2, 1, 1), np.float64), (1, 2, 4, 4)),  # another dtype
    ):
        b = Builder()
        x = b.input("x", (1, 3, 4, 4))
        c = b.op("Conv", [x, b.const(w)], shape=(1, 2, 4, 4))
        before = b.output(b.op("Add", [c, b.const(other, dtype=other.dtype.name)], shape=shape))
        assert run_pass(BatchNormFolding(), before)[1].changed == 0
    b = Builder()  # the conv's output is read twice
    x = b.input("x", (1, 3, 4, 4))
    c = b.op("Conv", [x, b.const(w)], shape=(1, 2, 4, 4))
    y = b.op("Add", [c, b.const(np.ones((1, 2, 1, 1), np.float32))], shape=(1, 2, 4, 4))
    assert run_pass(BatchNormFolding(), b.output(y, c))[1].changed == 0
