"""Test helpers for the pass tests: a terse graph builder, a structural graph comparison, and a
numeric check of an optimized graph against the original through the reference interpreter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node, numpy_dtype, verify
from farm.compiler.passes import Pass, PassResult


class Builder:
    """Builds IR graphs with explicit shapes: ``b.op("Relu", [x], shape=(2, 3))`` returns the output."""

    def __init__(self, name: str = "g", opset: int = 17) -> None:
        self.graph = Graph(name, opset=opset)

    def input(self, name: str, shape: tuple[Any, ...], dtype: str = "float32") -> str:
        self.graph.add_input(name, dtype, shape)
        return name

    def const(self, data: Any, name: str | None = None, dtype: str | None = None) -> str:
        arr = np.asarray(data, dtype=dtype) if dtype else np.asarray(data)
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
        return self.graph.add_const(name or self.graph.fresh_name("c"), arr).name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        *,
        shape: tuple[Any, ...] | None = None,
        dtype: str = "float32",
        outputs: int | list[str] = 1,
        shapes: list[tuple[Any, ...]] | None = None,
    ) -> Any:
        node = self.graph.add_node(op_type, inputs, outputs, attrs)
        out_shapes = shapes or [shape] * len(node.outputs)
        for name, s in zip(node.outputs, out_shapes, strict=True):
            self.graph.add_value(name, dtype, s)
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def output(self, *names: str) -> Graph:
        self.graph.outputs.extend(names)
        verify(self.graph)
        return self.graph


def run_pass(p: Pass, graph: Graph) -> tuple[Graph, PassResult]:
    """Run one pass on a copy of ``graph`` and verify the result."""
    out = graph.copy()
    result = p.run(out)
    verify(out)
    return out, result


def _same_attr(a: Any, e: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(e, np.ndarray):
        return np.shape(a) == np.shape(e) and np.allclose(a, e)
    if isinstance(a, float) or isinstance(e, float):
        return isinstance(a, int | float) and isinstance(e, int | float) and math.isclose(a, e, rel_tol=1e-6)
    if isinstance(a, list | tuple) and isinstance(e, list | tuple):
        return len(a) == len(e) and all(_same_attr(x, y) for x, y in zip(a, e, strict=True))
    return bool(a == e)


def assert_same_graph(actual: Graph, expected: Graph) -> None:
    """Assert two graphs are the same up to renaming of values and nodes: the same ops wired the same
    way from the outputs back (order-independent), the same attributes, constants allclose, and no
    extra nodes."""
    verify(actual)
    assert len(actual.inputs) == len(expected.inputs), (actual.inputs, expected.inputs)
    assert len(actual.outputs) == len(expected.outputs), (actual.outputs, expected.outputs)
    pairs: dict[str, str] = dict(zip(actual.inputs, expected.inputs, strict=True))
    prod_a, prod_e = actual.producers(), expected.producers()
    node_pairs: dict[int, Node] = {}

    def match(a: str, e: str, where: str) -> None:
        if a in pairs:
            assert pairs[a] == e, f"{where}: {a!r} is paired with {pairs[a]!r}, expected {e!r}"
            return
        if not a or not e:
            assert a == e == "", f"{where}: omitted input mismatch ({a!r} vs {e!r})"
            return
        ca, ce = actual.const(a), expected.const(e)
        if ca is not None or ce is not None:
            assert ca is not None and ce is not None, f"{where}: {a!r} vs {e!r}: only one is a constant"
            assert ca.shape == ce.shape, f"{where}: constant shapes {ca.shape} vs {ce.shape}"
            assert ca.dtype == ce.dtype, f"{where}: constant dtypes {ca.dtype} vs {ce.dtype}"
            assert np.allclose(ca, ce, rtol=1e-5, atol=1e-6), f"{where}: constants differ\n{ca}\n{ce}"
            pairs[a] = e
            return
        na, ne = prod_a.get(a), prod_e.get(e)
        assert na is not None and ne is not None, f"{where}: {a!r} vs {e!r}: producer missing (graph input?)"
        assert na.op_type == ne.op_type, (
            f"{where}: op {na.op_type} (node {na.name}) where {ne.op_type} expected"
        )
        assert na.outputs.index(a) == ne.outputs.index(e), f"{where}: output index differs at {na.op_type}"
        pairs[a] = e
        if id(na) in node_pairs:
            assert node_pairs[id(na)] is ne, f"{where}: node {na.name} paired twice"
            return
        node_pairs[id(na)] = ne
        assert set(na.attrs) == set(ne.attrs), f"{na.op_type} attrs {sorted(na.attrs)} vs {sorted(ne.attrs)}"
        for key in na.attrs:
            assert _same_attr(na.attrs[key], ne.attrs[key]), (
                f"{na.op_type}.{key}: {na.attrs[key]!r} vs {ne.attrs[key]!r}"
            )
        assert len(na.inputs) == len(ne.inputs), f"{na.op_type} inputs {na.inputs} vs {ne.inputs}"
        for i, (ia, ie) in enumerate(zip(na.inputs, ne.inputs, strict=True)):
            match(ia, ie, f"{na.op_type}({na.name}).input[{i}]")

    for a, e in zip(actual.outputs, expected.outputs, strict=True):
        match(a, e, f"output {a!r}")
    assert len(actual.nodes) == len(expected.nodes), (
        f"node count {len(actual.nodes)} vs {len(expected.nodes)}: "
        f"{actual.op_histogram()} vs {expected.op_histogram()}"
    )


def random_feeds(graph: Graph, dims: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh random (never zero) inputs for every graph input; symbolic dims take ``dims`` (default 2)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        v = graph.values[name]
        assert v.shape is not None and v.dtype is not None
        shape = tuple(d if isinstance(d, int) else (dims or {}).get(d, 2) for d in v.shape)
        dtype = numpy_dtype(v.dtype)
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.random(shape) > 0.5
        else:
            feeds[name] = rng.integers(1, 5, shape).astype(dtype)
    return feeds


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def assert_same_numbers(
    before: Graph,
    after: Graph,
    dims: Mapping[str, int] | None = None,
    tol: float = 1e-5,
    seeds: tuple[int, ...] = (0, 1),
) -> None:
    """The optimized graph computes what the original does (reference interpreter, rel L2 <= tol)."""
    from farm.compiler import reference

    assert before.outputs == after.outputs
    for seed in seeds:
        feeds = random_feeds(before, dims, seed)
        want = reference.run(before, feeds)
        got = reference.run(after, feeds)
        for name in before.outputs:
            assert got[name].shape == want[name].shape, (name, got[name].shape, want[name].shape)
            assert got[name].dtype == want[name].dtype, (name, got[name].dtype, want[name].dtype)
            err = rel_l2(got[name], want[name])
            assert err <= tol, f"output {name!r}: relative L2 error {err:.3g} > {tol:g}"
