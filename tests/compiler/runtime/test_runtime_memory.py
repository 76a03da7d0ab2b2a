"""Memory planner invariants on random graphs (property test) plus end-to-end numerics."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.compiler import reference
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.ir import Graph
from farm.compiler.memory import check_no_overlap

UNARY = ("Relu", "Tanh", "Sigmoid", "Neg", "Abs")
BINARY = ("Add", "Mul", "Sub")


@st.composite
def random_graphs(draw: st.DrawFn) -> Graph:
    """A random DAG of elementwise ops, reshapes (views) and elidable concats."""
    g = Graph("random")
    g.add_input("x", "float32", (2, 8))
    shapes: dict[str, tuple[int, ...]] = {"x": (2, 8)}
    names = ["x"]
    for i in range(draw(st.integers(2, 14))):
        kind = draw(st.sampled_from(["unary", "unary", "binary", "reshape", "concat"]))
        src = draw(st.sampled_from(names))
        out = f"v{i}"
        if kind == "unary":
            g.add_node(draw(st.sampled_from(UNARY)), [src], [out])
            shape = shapes[src]
        elif kind == "binary":
            other = draw(st.sampled_from([n for n in names if shapes[n] == shapes[src]]))
            g.add_node(draw(st.sampled_from(BINARY)), [src, other], [out])
            shape = shapes[src]
        elif kind == "reshape":
            rows, cols = shapes[src][0], int(np.prod(shapes[src][1:]))
            shape = (rows, cols // 2, 2) if len(shapes[src]) == 2 and cols % 2 == 0 else (rows, cols)
            g.add_const(f"s{i}", np.array(shape, dtype=np.int64))
            g.add_node("Reshape", [src, f"s{i}"], [out])
        else:
            same_rank = [
                n
                for n in names
                if len(shapes[n]) == len(shapes[src])
                and shapes[n][0] == shapes[src][0]
                and shapes[n][2:] == shapes[src][2:]
            ]
            parts = draw(st.lists(st.sampled_from(same_rank), min_size=2, max_size=3))
            g.add_node("Concat", parts, [out], {"axis": 1, "elide": 1})
            shape = (shapes[src][0], sum(shapes[p][1] for p in parts), *shapes[src][2:])
        g.values[out].dtype = "float32"
        g.values[out].shape = shape
        shapes[out] = shape
        names.append(out)
    extra = draw(st.lists(st.sampled_from(names[1:]), max_size=2, unique=True))
    g.outputs = list(dict.fromkeys([names[-1], *extra]))
    if g.outputs == ["x"]:
        g.outputs = [names[-1]]
    return g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.integers(0, 1))
def test_no_two_live_tensors_overlap_and_results_match(graph: Graph, level: int) -> None:
    engine = build(graph, config=BuilderConfig(tuning_level=level, optimize=False))
    plan = engine.plan
    check_no_overlap(plan)
    assert plan.lower_bound_bytes <= plan.arena_size <= max(plan.naive_bytes, 0) or plan.arena_size == 0

    # Every value that lives in a buffer is live only inside that buffer's interval.
    step = {k.node.name: i for i, k in enumerate(engine.kernels)}
    for k in engine.kernels:
        for out in k.node.outputs:
            place = plan.values[out]
            if place.kind != "arena":
                continue
            buf = plan.buffers[place.buffer]
            readers = [step[r.node.name] for r in engine.kernels if out in r.node.inputs]
            assert buf.first <= step[k.node.name] and max(readers, default=0) <= buf.last

    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    want = reference.run(graph, {"x": x})
    for _ in range(2):
        got = engine.run({"x": x})
        for name in graph.outputs:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_chain_reuses_memory_down_to_the_lower_bound() -> None:
    g = Graph("chain")
    g.add_input("x", "float32", (4, 256))
    prev = "x"
    for i in range(8):
        g.add_node("Tanh" if i % 2 else "Sigmoid", [prev], [f"t{i}"])
        g.values[f"t{i}"].dtype, g.values[f"t{i}"].shape = "float32", (4, 256)
        prev = f"t{i}"
    g.outputs = [prev]
    plan = build(g, config=BuilderConfig(tuning_level=0, optimize=False)).plan
    assert plan.naive_bytes == 7 * 4 * 256 * 4  # the output is not in the arena
    assert plan.arena_size == plan.lower_bound_bytes == 4 * 256 * 4  # in-place: one buffer for the chain
