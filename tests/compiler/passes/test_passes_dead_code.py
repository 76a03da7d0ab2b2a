"""Dead-code elimination."""

from __future__ import annotations

import numpy as np
from passes_graphs import Builder, assert_same_graph, run_pass

from farm.compiler.passes.dead_code import DeadCodeElimination


def test_removes_unread_chains_and_constants_but_keeps_outputs() -> None:
    b = Builder()
    x = b.input("x", (2, 3))
    c = b.const(np.ones((2, 3)))
    dead1 = b.op("Mul", [x, c], shape=(2, 3))
    b.op("Exp", [dead1], shape=(2, 3))
    y = b.op("Relu", [x], shape=(2, 3))
    before = b.output(y)

    e = Builder()
    ex = e.input("x", (2, 3))
    expected = e.output(e.op("Relu", [ex], shape=(2, 3)))

    after, result = run_pass(DeadCodeElimination(), before)
    assert_same_graph(after, expected)
    assert result.changes["removed nodes"] == 2
    assert c not in after.values


def test_keeps_a_node_when_one_of_its_outputs_is_read() -> None:
    b = Builder()
    x = b.input("x", (4, 6))
    s = b.const(np.array([3, 3], dtype=np.int64))
    first, _ = b.op("Split", [x, s], {"axis": 1}, outputs=2, shape=(4, 3))
    before = b.output(first)
    after, result = run_pass(DeadCodeElimination(), before)
    assert after.op_histogram() == {"Split": 1}
    assert "removed nodes" not in result.changes


def test_values_read_inside_subgraphs_stay_alive_and_are_renamed() -> None:
    from passes_graphs import assert_same_numbers

    from farm.compiler import optimize
    from farm.compiler.ir import Graph

    b = Builder()
    x = b.input("x", (2, 3))
    cond = b.input("cond", (), "bool")
    outer = b.op("Identity", [b.op("Relu", [x], shape=(2, 3))], shape=(2, 3))
    then_branch = Graph("then")
    then_branch.add_node("Neg", [outer], ["then_out"])
    then_branch.add_value("then_out", "float32", (2, 3))
    then_branch.outputs = ["then_out"]
    else_branch = Graph("else")
    else_branch.add_node("Exp", [x], ["else_out"])
    else_branch.add_value("else_out", "float32", (2, 3))
    else_branch.outputs = ["else_out"]
    y = b.op("If", [cond], {"then_branch": then_branch, "else_branch": else_branch}, shape=(2, 3))
    before = b.output(y)
    after, report = optimize(before, verify_each=True)
    assert report["cleanup"].changes == {"removed Identity": 1}
    assert after.op_histogram() == {"If": 1, "Relu": 1}
    assert after.find("If")[0].attrs["then_branch"].nodes[0].inputs == [after.find("Relu")[0].outputs[0]]
    assert_same_numbers(before, after)
