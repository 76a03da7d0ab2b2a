"""Constant folding: Before and Expected graphs."""

from __future__ import annotations

import numpy as np
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.constant_folding import ConstantFolding
from farm.compiler.passes.dead_code import DeadCodeElimination


def folded(before, **kwargs):  # type: ignore[no-untyped-def]
    after, result = run_pass(ConstantFolding(**kwargs), before)
    after, _ = run_pass(DeadCodeElimination(), after)
    return after, result


def test_folds_constant_subgraphs_in_one_run() -> None:
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    b = Builder()
    x = b.input("x", (2, 3))
    wt = b.op("Transpose", [b.const(w)], {"perm": [1, 0]}, shape=(3, 4))
    ws = b.op("Mul", [wt, b.const(np.float32(2.0))], shape=(3, 4))
    before = b.output(b.op("MatMul", [x, ws], shape=(2, 4)))
    e = Builder()
    ex = e.input("x", (2, 3))
    expected = e.output(e.op("MatMul", [ex, e.const(w.T * 2.0)], shape=(2, 4)))
    after, result = folded(before)
    assert_same_graph(after, expected)
    assert result.changes == {"folded Transpose": 1, "folded Mul": 1}
    assert_same_numbers(before, after)


def test_shape_of_static_value_and_gather_of_static_dims() -> None:
    b = Builder()
    x = b.input("x", ("batch", 6, 4))
    shape = b.op("Shape", [x], shape=(3,), dtype="int64")
    last = b.op("Gather", [shape, b.const(np.array(2, dtype=np.int64))], {"axis": 0}, shape=(), dtype="int64")
    mid = b.op("Gather", [shape, b.const(np.array(1, dtype=np.int64))], {"axis": 0}, shape=(), dtype="int64")
    prod = b.op("Mul", [mid, last], shape=(), dtype="int64")
    u = b.op("Unsqueeze", [prod, b.const(np.array([0]))], shape=(1,), dtype="int64")
    target = b.op("Concat", [b.const(np.array([-1])), u], {"axis": 0}, shape=(2,), dtype="int64")
    before = b.output(b.op("Reshape", [x, target], shape=("batch", 24)))
    e = Builder()
    ex = e.input("x", ("batch", 6, 4))
    expected = e.output(e.op("Reshape", [ex, e.const(np.array([-1, 24]))], shape=("batch", 24)))
    after, result = folded(before)
    assert_same_graph(after, expected)
    assert result.changes["folded Gather of Shape"] == 2
    assert_same_numbers(before, after, {"batch": 3})


def test_computed_reshape_shape_becomes_constant_with_copied_dims() -> None:
    b = Builder()
    x = b.input("x", ("batch", 8, 16))
    shape = b.op("Shape", [x], shape=(3,), dtype="int64")
    batch = b.op("Gather", [shape, b.const(np.array([0]))], {"axis": 0}, shape=(1,), dtype="int64")
    target = b.op("Concat", [batch, b.const(np.array([8, 4, 4]))], {"axis": 0}, shape=(4,), dtype="int64")
    before = b.output(b.op("Reshape", [x, target], shape=("batch", 8, 4, 4)))
    e = Builder()
    ex = e.input("x", ("batch", 8, 16))
    expected = e.output(e.op("Reshape", [ex, e.const(np.array([0, 8, 4, 4]))], shape=("batch", 8, 4, 4)))
    after, result = folded(before)
    assert_same_graph(after, expected)
    assert result.changes == {"made Reshape shapes constant": 1}
    assert_same_numbers(before, after, {"batch": 5})


def test_size_cap_keeps_big_expansions_and_random_ops() -> None:
    b = Builder()
    x = b.input("x", (256, 1024))
    big = b.op("Expand", [b.const(np.float32(1.5)), b.const(np.array([256, 1024]))], shape=(256, 1024))
    before = b.output(b.op("Add", [x, big], shape=(256, 1024)))
    after, result = folded(before, max_bytes=1 << 16)
    assert result.changed == 0 and after.op_histogram() == {"Add": 1, "Expand": 1}

    b = Builder()
    x = b.input("x", (2, 2))
    r = b.op("RandomNormalLike", [b.const(np.ones((2, 2), np.float32))], shape=(2, 2))
    before = b.output(b.op("Add", [x, r], shape=(2, 2)))
    after, result = folded(before)
    assert result.changed == 0


def test_folded_graph_output_stays_an_output() -> None:
    b = Builder()
    b.input("x", (2,))
    y = b.op("Add", [b.const(np.ones(2, np.float32)), b.const(np.ones(2, np.float32))], shape=(2,))
    before = b.output(y)
    after, result = folded(before)
    assert after.nodes == [] and after.outputs == [y]
    np.testing.assert_array_equal(after.const(y), [2.0, 2.0])


def test_computed_reshape_shape_with_allowzero_uses_minus_one() -> None:
    b = Builder()
    x = b.input("x", ("batch", 8, 16))
    shape = b.op("Shape", [x], {"start": 0, "end": 1}, shape=(1,), dtype="int64")
    target = b.op("Concat", [shape, b.const(np.array([8, 4, 4]))], {"axis": 0}, shape=(4,), dtype="int64")
    before = b.output(b.op("Reshape", [x, target], {"allowzero": 1}, shape=("batch", 8, 4, 4)))
    e = Builder()
    ex = e.input("x", ("batch", 8, 16))
    target = e.const(np.array([-1, 8, 4, 4]))
    expected = e.output(e.op("Reshape", [ex, target], {"allowzero": 1}, shape=("batch", 8, 4, 4)))
    after, _ = folded(before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after, {"batch": 3})
