"""Identity / cast / reshape cleanup: Before and Expected graphs."""

from __future__ import annotations

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.cleanup import Cleanup, cast_is_exact
from farm.compiler.passes.dead_code import DeadCodeElimination


def cleaned(before):  # type: ignore[no-untyped-def]
    after, result = run_pass(Cleanup(), before)
    after, _ = run_pass(DeadCodeElimination(), after)
    return after, result


def relu_of_input(shape=(2, 3, 4)):  # type: ignore[no-untyped-def]
    e = Builder()
    x = e.input("x", shape)
    return e.output(e.op("Relu", [x], shape=shape))


def test_identity_and_noop_cast_are_removed() -> None:
    b = Builder()
    x = b.input("x", (2, 3, 4))
    i = b.op("Identity", [x], shape=(2, 3, 4))
    c = b.op("Cast", [i], {"to": 1}, shape=(2, 3, 4))
    before = b.output(b.op("Relu", [c], shape=(2, 3, 4)))
    after, result = cleaned(before)
    assert_same_graph(after, relu_of_input())
    assert result.changes == {"removed Identity": 1, "removed Cast": 1}
    assert_same_numbers(before, after)


def test_exact_cast_chain_collapses_and_lossy_one_stays() -> None:
    b = Builder()
    x = b.input("x", (5,), "float16")
    wide = b.op("Cast", [x], {"to": 1}, shape=(5,), dtype="float32")
    back = b.op("Cast", [wide], {"to": 6}, shape=(5,), dtype="int32")
    before = b.output(back)
    e = Builder()
    ex = e.input("x", (5,), "float16")
    expected = e.output(e.op("Cast", [ex], {"to": 6}, shape=(5,), dtype="int32"))
    after, result = cleaned(before)
    assert_same_graph(after, expected)
    assert result.changes == {"merged Cast chains": 1}

    b = Builder()
    x = b.input("x", (5,))
    narrow = b.op("Cast", [x], {"to": 10}, shape=(5,), dtype="float16")
    before = b.output(b.op("Cast", [narrow], {"to": 1}, shape=(5,), dtype="float32"))
    after, result = cleaned(before)
    assert result.changed == 0 and after.op_histogram() == {"Cast": 2}


@pytest.mark.parametrize(
    ("src", "dst", "exact"),
    [
        ("float16", "float32", True),
        ("float32", "float16", False),
        ("int32", "int64", True),
        ("int32", "float32", False),
        ("int16", "float32", True),
        ("uint8", "int8", False),
        ("int8", "uint32", False),
        ("bool", "float16", True),
        ("float32", "int64", False),
        ("bfloat16", "float16", False),
    ],
)
def test_cast_exactness_table(src: str, dst: str, exact: bool) -> None:
    assert cast_is_exact(src, dst) is exact


def test_reshape_chain_and_same_shape_reshape() -> None:
    b = Builder()
    x = b.input("x", (2, 3, 4))
    r1 = b.op("Reshape", [x, b.const(np.array([6, 4]))], shape=(6, 4))
    r2 = b.op("Reshape", [r1, b.const(np.array([2, -1]))], shape=(2, 12))
    before = b.output(b.op("Relu", [r2], shape=(2, 12)))
    e = Builder()
    ex = e.input("x", (2, 3, 4))
    er = e.op("Reshape", [ex, e.const(np.array([2, -1]))], shape=(2, 12))
    expected = e.output(e.op("Relu", [er], shape=(2, 12)))
    after, result = cleaned(before)
    assert_same_graph(after, expected)
    assert result.changes == {"merged Reshape chains": 1}
    assert_same_numbers(before, after)

    b = Builder()
    x = b.input("x", ("batch", 3, 4))
    r = b.op("Reshape", [x, b.const(np.array([0, 3, 4]))], shape=("batch", 3, 4))
    before = b.output(b.op("Relu", [r], shape=("batch", 3, 4)))
    after, result = cleaned(before)
    assert_same_graph(after, relu_of_input(("batch", 3, 4)))
    assert result.changes == {"removed Reshape": 1}


def test_reshape_chain_with_copied_dim_is_kept() -> None:
    b = Builder()
    x = b.input("x", (2, 3, 4))
    r1 = b.op("Reshape", [x, b.const(np.array([6, 4]))], shape=(6, 4))
    r2 = b.op("Reshape", [r1, b.const(np.array([0, 2, 2]))], shape=(6, 2, 2))
    before = b.output(r2)
    after, result = cleaned(before)
    assert result.changed == 0 and after.op_histogram() == {"Reshape": 2}


def test_transpose_pairs_cancel_or_compose() -> None:
    b = Builder()
    x = b.input("x", (2, 3, 4, 5))
    t1 = b.op("Transpose", [x], {"perm": [0, 2, 1, 3]}, shape=(2, 4, 3, 5))
    t2 = b.op("Transpose", [t1], {"perm": [0, 2, 1, 3]}, shape=(2, 3, 4, 5))
    before = b.output(b.op("Relu", [t2], shape=(2, 3, 4, 5)))
    after, result = cleaned(before)
    assert_same_graph(after, relu_of_input((2, 3, 4, 5)))
    assert result.changes == {"removed Transpose pairs": 1}

    b = Builder()
    x = b.input("x", (2, 3, 4, 5))
    t1 = b.op("Transpose", [x], {"perm": [0, 2, 1, 3]}, shape=(2, 4, 3, 5))
    t2 = b.op("Transpose", [t1], {"perm": [0, 1, 3, 2]}, shape=(2, 4, 5, 3))
    before = b.output(t2)
    e = Builder()
    ex = e.input("x", (2, 3, 4, 5))
    expected = e.output(e.op("Transpose", [ex], {"perm": [0, 2, 3, 1]}, shape=(2, 4, 5, 3)))
    after, result = cleaned(before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_unsqueeze_squeeze_pair_and_flatten() -> None:
    b = Builder()
    x = b.input("x", (2, 3))
    u = b.op("Unsqueeze", [x, b.const(np.array([-1]))], shape=(2, 3, 1))
    s = b.op("Squeeze", [u, b.const(np.array([2]))], shape=(2, 3))
    before = b.output(b.op("Relu", [s], shape=(2, 3)))
    after, result = cleaned(before)
    assert_same_graph(after, relu_of_input((2, 3)))
    assert result.changes == {"removed Unsqueeze/Squeeze pairs": 1}

    b = Builder()
    x = b.input("x", ("batch", 8, 1, 1))
    f = b.op("Flatten", [x], {"axis": 1}, shape=("batch", 8))
    before = b.output(b.op("Relu", [f], shape=("batch", 8)))
    e = Builder()
    ex = e.input("x", ("batch", 8, 1, 1))
    er = e.op("Reshape", [ex, e.const(np.array([0, -1]))], shape=("batch", 8))
    expected = e.output(e.op("Relu", [er], shape=("batch", 8)))
    after, result = cleaned(before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after, {"batch": 3})


def test_guards_graph_output_and_mismatched_axes() -> None:
    b = Builder()
    x = b.input("x", (2, 3))
    before = b.output(b.op("Identity", [x], shape=(2, 3)))
    after, result = cleaned(before)
    assert result.changed == 0 and after.op_histogram() == {"Identity": 1}

    b = Builder()
    x = b.input("x", (2, 1, 3))
    u = b.op("Unsqueeze", [x, b.const(np.array([0]))], shape=(1, 2, 1, 3))
    before = b.output(b.op("Squeeze", [u, b.const(np.array([2]))], shape=(1, 2, 3)))
    after, result = cleaned(before)
    assert result.changed == 0


def test_dropout_with_read_mask_stays() -> None:
    b = Builder()
    x = b.input("x", (2, 3))
    y, mask = b.op("Dropout", [x], outputs=2, shapes=[(2, 3), (2, 3)])
    before = b.output(y, mask)
    after, result = cleaned(before)
    assert result.changed == 0
