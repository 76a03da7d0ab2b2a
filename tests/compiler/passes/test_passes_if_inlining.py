"""If inlining: an If whose condition is a constant becomes the nodes of the branch it takes."""

from __future__ import annotations

import numpy as np
from passes_graphs import Builder, assert_same_numbers, run_pass

from farm.compiler import optimize
from farm.compiler.ir import Graph, verify
from farm.compiler.passes.if_inlining import IfInlining


def _branch(name: str, nodes: list[tuple[str, list[str], str]], outputs: list[str], shape=(2, 3)) -> Graph:  # type: ignore[no-untyped-def]
    g = Graph(name)
    for op, inputs, out in nodes:
        g.add_node(op, inputs, [out])
        g.add_value(out, "float32", shape)
    g.outputs = outputs
    return g


def _if_graph(condition: bool) -> tuple[Graph, str]:
    """y = If(cond) then Exp(Neg(x)) else Relu(x), with ``cond`` a constant."""
    b = Builder()
    x = b.input("x", (2, 3))
    cond = b.const(np.array(condition))
    then_branch = _branch("then", [("Neg", [x], "t1"), ("Exp", ["t1"], "t2")], ["t2"])
    else_branch = _branch("else", [("Relu", [x], "e1")], ["e1"])
    y = b.op("If", [cond], {"then_branch": then_branch, "else_branch": else_branch}, shape=(2, 3))
    return b.output(y), y


def test_a_constant_condition_inlines_the_branch_it_takes_under_the_if_output_names() -> None:
    for condition, ops in ((True, {"Neg": 1, "Exp": 1}), (False, {"Relu": 1})):
        before, y = _if_graph(condition)
        after, result = run_pass(IfInlining(), before)
        verify(after)
        assert result.changes == {"inlined If": 1}
        assert after.op_histogram() == ops
        assert after.outputs == [y] and after.producer(y) is not None
        assert_same_numbers(before, after)


def test_a_condition_read_at_run_time_is_left_alone() -> None:
    b = Builder()
    x = b.input("x", (2, 3))
    cond = b.input("cond", (), "bool")
    then_branch = _branch("then", [("Neg", [x], "t1")], ["t1"])
    else_branch = _branch("else", [("Relu", [x], "e1")], ["e1"])
    b.output(b.op("If", [cond], {"then_branch": then_branch, "else_branch": else_branch}, shape=(2, 3)))
    after, result = run_pass(IfInlining(), b.graph)
    assert not result.changes and after.op_histogram() == {"If": 1}


def test_outputs_the_branch_does_not_compute_come_through_identity() -> None:
    """A branch that returns an enclosing value, a constant of its own and one value twice."""
    b = Builder()
    x = b.input("x", (2, 3))
    cond = b.const(np.array(True))
    then_branch = _branch("then", [("Neg", [x], "t1")], [x, "k", "t1", "t1"])
    then_branch.add_const("k", np.arange(6, dtype=np.float32).reshape(2, 3))
    else_branch = _branch("else", [("Relu", [x], "e1")], ["e1", "e1", "e1", "e1"])
    outs = b.op(
        "If", [cond], {"then_branch": then_branch, "else_branch": else_branch}, outputs=4, shape=(2, 3)
    )
    before = b.output(*outs)
    after, _ = run_pass(IfInlining(), before)
    verify(after)
    assert after.op_histogram() == {"Neg": 1, "Identity": 3}
    assert_same_numbers(before, after)


def test_a_nested_body_reads_the_renamed_values_of_the_inlined_branch() -> None:
    """The taken branch holds an If of its own whose branches read a value the outer branch
    computes; after inlining (both, the inner one's condition being a constant too) the numbers
    are the same and no If is left."""
    b = Builder()
    x = b.input("x", (2, 3))
    outer_cond = b.const(np.array(True))
    inner_then = _branch("inner_then", [("Exp", ["t1"], "i1")], ["i1"])
    inner_else = _branch("inner_else", [("Sigmoid", ["t1"], "i2")], ["i2"])
    then_branch = Graph("then")
    then_branch.add_node("Neg", [x], ["t1"])
    then_branch.add_value("t1", "float32", (2, 3))
    then_branch.add_const("c", np.array(False))
    then_branch.add_node("If", ["c"], ["t2"], {"then_branch": inner_then, "else_branch": inner_else})
    then_branch.add_value("t2", "float32", (2, 3))
    then_branch.outputs = ["t2"]
    else_branch = _branch("else", [("Relu", [x], "e1")], ["e1"])
    y = b.op("If", [outer_cond], {"then_branch": then_branch, "else_branch": else_branch}, shape=(2, 3))
    before = b.output(y)
    once, _ = run_pass(IfInlining(), before)
    (inner,) = once.find("If")
    (neg,) = once.find("Neg")
    assert inner.attrs["else_branch"].nodes[0].inputs == neg.outputs  # the renamed t1
    assert_same_numbers(before, once)
    after, report = optimize(before, verify_each=True)
    assert report["if_inlining"].changes == {"inlined If": 2}
    assert after.op_histogram() == {"Neg": 1, "Sigmoid": 1}
    assert_same_numbers(before, after)
