"""Horizontal fusion of sibling GEMMs and convolutions, and concat elision."""

from __future__ import annotations

import numpy as np
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.concat_elision import ConcatElision
from farm.compiler.passes.horizontal_fusion import HorizontalFusion

RNG = np.random.default_rng(2)
GEMM = {"activation": "", "alpha": 0.0, "beta": 0.0}


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_qkv_fused_gemms_become_one_gemm_and_a_split() -> None:
    ws, bs = [w(16, 8), w(16, 8), w(16, 4)], [w(8), w(8), w(4)]
    b = Builder()
    x = b.input("x", ("batch", 5, 16))
    outs = [
        b.op(
            "FusedGemm", [x, b.const(wi), b.const(bi)], {"transB": 0, **GEMM}, shape=("batch", 5, wi.shape[1])
        )
        for wi, bi in zip(ws, bs, strict=True)
    ]
    before = b.output(*[b.op("Relu", [o], shape=("batch", 5, 8 if i < 2 else 4)) for i, o in enumerate(outs)])
    e = Builder()
    ex = e.input("x", ("batch", 5, 16))
    fused = e.op(
        "FusedGemm",
        [ex, e.const(np.concatenate(ws, axis=1)), e.const(np.concatenate(bs))],
        {"transB": 0, **GEMM},
        shape=("batch", 5, 20),
    )
    parts = e.op(
        "Split", [fused, e.const(np.array([8, 8, 4]))], {"axis": -1}, outputs=3, shape=("batch", 5, 8)
    )
    expected = e.output(*[e.op("Relu", [p], shape=("batch", 5, 8)) for p in parts])
    after, result = run_pass(HorizontalFusion(), before)
    assert_same_graph(after, expected)
    assert result.changes == {"fused GEMM sibling groups": 1, "merged GEMM siblings": 3}
    assert after.values[after.find("Split")[0].outputs[2]].shape == ("batch", 5, 4)
    assert_same_numbers(before, after, {"batch": 2})


def test_matmul_and_trans_b_gemm_siblings() -> None:
    b = Builder()
    x = b.input("x", (3, 16))
    m1 = b.op("MatMul", [x, b.const(w(16, 8))], shape=(3, 8))
    m2 = b.op("MatMul", [x, b.const(w(16, 6))], shape=(3, 6))
    g1 = b.op("FusedGemm", [x, b.const(w(5, 16)), b.const(w(5))], {"transB": 1, **GEMM}, shape=(3, 5))
    g2 = b.op("FusedGemm", [x, b.const(w(7, 16))], {"transB": 1, **GEMM}, shape=(3, 7))
    before = b.output(m1, m2, g1, g2)
    after, result = run_pass(HorizontalFusion(), before)
    assert result.changes == {"fused GEMM sibling groups": 2, "merged GEMM siblings": 4}
    assert after.op_histogram() == {"FusedGemm": 1, "MatMul": 1, "Split": 2}
    assert after.outputs == before.outputs
    assert_same_numbers(before, after)


def test_inception_style_conv_branches() -> None:
    conv = {"kernel_shape": [1, 1], "pads": [0, 0, 0, 0], "strides": [1, 1]}
    b = Builder()
    x = b.input("x", (1, 8, 6, 6))
    c1 = b.op("Conv", [x, b.const(w(4, 8, 1, 1)), b.const(w(4))], conv, shape=(1, 4, 6, 6))
    c2 = b.op("Conv", [x, b.const(w(6, 8, 1, 1))], conv, shape=(1, 6, 6, 6))
    c3 = b.op(
        "Conv",
        [x, b.const(w(2, 8, 3, 3))],
        {**conv, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        shape=(1, 2, 6, 6),
    )
    before = b.output(b.op("Concat", [c1, c2, c3], {"axis": 1}, shape=(1, 12, 6, 6)))
    after, result = run_pass(HorizontalFusion(), before)
    assert result.changes == {"fused CONV sibling groups": 1, "merged CONV siblings": 2}
    split = after.find("Split")[0]
    assert split.attrs == {"axis": 1} and list(after.const(split.inputs[1])) == [4, 6]  # type: ignore[arg-type]
    assert_same_numbers(before, after)


def test_horizontal_guards() -> None:
    b = Builder()
    x = b.input("x", (3, 16))
    w_dyn = b.input("w", (16, 8))
    m1 = b.op("MatMul", [x, w_dyn], shape=(3, 8))  # non-constant weights
    m2 = b.op("MatMul", [x, b.const(w(16, 8))], shape=(3, 8))
    g1 = b.op("FusedGemm", [x, b.const(w(16, 8))], {"transB": 0, **GEMM, "activation": "Relu"}, shape=(3, 8))
    r = b.input("r", (3, 8))
    g2 = b.op(
        "FusedGemm", [x, b.const(w(16, 8)), "", r], {"transB": 0, **GEMM, "residual": "post"}, shape=(3, 8)
    )
    before = b.output(m1, m2, g1, g2)
    after, result = run_pass(HorizontalFusion(), before)
    assert result.changed == 0  # different activations, a residual, dynamic weights: nothing compatible


def concat_graph(shared: bool = False, view_input: bool = False):  # type: ignore[no-untyped-def]
    b = Builder()
    x = b.input("x", (2, 4))
    r1 = b.op("Relu", [x], shape=(2, 4))
    r2 = (
        b.op("Reshape", [x, b.const(np.array([2, 4]))], shape=(2, 4))
        if view_input
        else b.op("Sigmoid", [x], shape=(2, 4))
    )
    y = b.op("Concat", [r1, r2], {"axis": 1}, shape=(2, 8))
    return b.output(y, r1) if shared else b.output(y)


def test_concat_elision_marks_and_clears() -> None:
    before = concat_graph()
    e = concat_graph()
    e.find("Concat")[0].attrs["elide"] = 1
    after, result = run_pass(ConcatElision(), before)
    assert_same_graph(after, e)
    assert result.changes == {"marked Concat for elision": 1}
    assert run_pass(ConcatElision(), after)[1].changed == 0  # idempotent
    after.outputs.append(after.find("Relu")[0].outputs[0])  # an input becomes a graph output
    again, result = run_pass(ConcatElision(), after)
    assert result.changes == {"unmarked Concat": 1} and "elide" not in again.find("Concat")[0].attrs


def test_concat_elision_guards() -> None:
    assert run_pass(ConcatElision(), concat_graph(shared=True))[1].changed == 0
    assert run_pass(ConcatElision(), concat_graph(view_input=True))[1].changed == 0
    b = Builder()
    x = b.input("x", (2, 4))
    before = b.output(b.op("Concat", [x, b.op("Relu", [x], shape=(2, 4))], {"axis": 0}, shape=(4, 4)))
    assert run_pass(ConcatElision(), before)[1].changed == 0  # a graph input cannot be written into place
