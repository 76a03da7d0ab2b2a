"""``cpu.numpy.slice`` and ``cpu.numpy.reduce`` against the reference on fresh random inputs:
Slice with negative and clamped bounds, negative axes and steps, run-time bounds and integer
data; every reduction kind with axes (negative, none, empty with and without
``noop_with_empty_axes``), keepdims, float32 and float64, empty inputs; ONNX's own Slice and
Reduce node tests through an engine."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.ir import Graph
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu.slicing import REDUCTIONS
from farm.compiler.kernels.registry import Prepared

SLICE = get_tactic("cpu.numpy.slice")
REDUCE = get_tactic("cpu.numpy.reduce")

# (shape, starts, ends, axes, steps)
SLICES: tuple[tuple[tuple[int, ...], list[int], list[int], list[int] | None, list[int] | None], ...] = (
    ((1, 258, 3), [0], [129], [1], None),  # Silero's STFT halves
    ((1, 258, 3), [129], [2**63 - 1], [-2], None),
    ((2, 5, 7), [1, -3], [-1, 100], [0, 2], None),
    ((4, 6, 8), [-1, 5, 0], [-100, 0, 8], [0, 1, 2], [-1, -2, 3]),  # negative steps, clamping
    ((6, 6), [0], [6], None, [2]),  # axes omitted
    ((3, 4), [5], [9], [1], None),  # empty result
)


def slice_graph(shape: tuple[int, ...], bounds: list[list[int] | None], dtype: str, constant: bool) -> Graph:
    g = Graph("slice")
    g.add_input("x", dtype, shape)
    names = []
    for key, values in zip(("starts", "ends", "axes", "steps"), bounds, strict=True):
        if values is None:
            names.append("")
        elif constant:
            names.append(g.add_const(key, np.array(values, np.int64)).name)
        else:
            g.add_input(key, "int64", (len(values),))
            names.append(key)
    while not names[-1]:
        names.pop()
    g.add_node("Slice", ["x", *names], ["y"])
    g.add_value("y", dtype, None)
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize("constant", [True, False], ids=["constant_bounds", "run_time_bounds"])
@pytest.mark.parametrize("case", SLICES, ids=[str(c[:2]) for c in SLICES])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_slice_matches_the_reference(case: tuple, dtype: str, constant: bool) -> None:  # type: ignore[type-arg]
    shape, *bounds = case
    g = slice_graph(shape, bounds, dtype, constant)
    (node,) = g.nodes
    assert SLICE.supports(node, g)
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    feeds: dict[str, Any] = {"x": x}
    if not constant:
        feeds.update(
            {
                k: np.array(v, np.int64)
                for k, v in zip(("starts", "ends", "axes", "steps"), bounds, strict=True)
                if v
            }
        )
    want = reference.run(g, feeds)["y"]
    out = np.empty(want.shape, want.dtype)
    side = [g.const(i) if g.const(i) is not None else feeds.get(i) for i in node.inputs[1:]]
    prepared = SLICE.prepare(node, g)
    SLICE.run(node, [x, *side], [out], prepared)
    np.testing.assert_array_equal(out, want)
    bound = SLICE.bind(node, [x, *side], [out], prepared)
    assert (bound is not None) == constant  # run-time bounds are read on every call
    if bound is not None:
        x[...] = (rng.standard_normal(shape) * 100).astype(dtype)  # the bound view follows the array
        bound()
        np.testing.assert_array_equal(out, reference.run(g, feeds)["y"])


def reduce_graph(
    kind: str, shape: tuple[int, ...], axes: list[int] | None, attrs: dict[str, int], dtype: str
) -> Graph:
    g = Graph("reduce")
    g.add_input("x", dtype, shape)
    inputs = ["x"] if axes is None else ["x", g.add_const("axes", np.array(axes, np.int64)).name]
    g.add_node(f"Reduce{kind}", inputs, ["y"], attrs)
    g.add_value("y", dtype, None)
    g.outputs = ["y"]
    return g


REDUCE_AXES: tuple[tuple[tuple[int, ...], list[int] | None, dict[str, int]], ...] = (
    ((2, 3, 5), [1], {}),
    ((2, 3, 5), [-1, 0], {"keepdims": 0}),
    ((4, 6), None, {}),  # all axes
    ((4, 6), None, {"keepdims": 0}),
    ((4, 6), [], {"noop_with_empty_axes": 1}),
    ((3, 0, 2), [1], {"keepdims": 0}),  # empty reduction: the identity (NaN for a mean)
    ((1,), [0], {}),
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("geometry", REDUCE_AXES, ids=[f"{g[0]}-{g[1]}-{g[2]}" for g in REDUCE_AXES])
@pytest.mark.parametrize("kind", REDUCTIONS)
def test_reductions_match_the_reference(kind: str, geometry: tuple, dtype: str) -> None:  # type: ignore[type-arg]
    shape, axes, attrs = geometry
    g = reduce_graph(kind, shape, axes, attrs, dtype)
    (node,) = g.nodes
    assert REDUCE.supports(node, g)
    rng = np.random.default_rng(zlib.crc32(f"{kind}{geometry}{dtype}".encode()))
    x = rng.uniform(0.5, 1.5, shape).astype(dtype) * rng.choice([-1, 1], shape)
    want = reference.run(g, {"x": x})["y"]
    out = np.empty(want.shape, want.dtype)
    REDUCE.run(node, [x, *[g.const(i) for i in node.inputs[1:]]], [out], Prepared())
    np.testing.assert_allclose(out, want, rtol=1e-6 if dtype == "float32" else 1e-12)


def test_reduce_declines_integers_and_run_time_axes() -> None:
    assert not REDUCE.supports((g := reduce_graph("Sum", (2, 3), [1], {}, "int64")).nodes[0], g)
    g = Graph("axes_input")
    g.add_input("x", "float32", (2, 3))
    g.add_input("axes", "int64", (1,))
    g.add_node("ReduceMean", ["x", "axes"], ["y"])
    g.add_value("y", "float32", None)
    assert not REDUCE.supports(g.nodes[0], g)


def _backend_cases() -> list:  # type: ignore[type-arg]
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recurrent"))
    from recurrent_engine_cases import engine_cases

    ops = frozenset({"Slice", *(f"Reduce{k}" for k in REDUCTIONS)})
    return [c for c in engine_cases(ops) if "expanded" not in c.name]


BACKEND_CASES = _backend_cases()


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c.name for c in BACKEND_CASES])
def test_onnx_backend_cases_through_an_engine(case) -> None:  # type: ignore[no-untyped-def]
    """ONNX's Slice and Reduce node tests with their side inputs made constants, built at tuning
    level 0: the numpy tactics run the float ones and match ONNX's expected outputs."""
    from recurrent_engine_cases import engine_with_constant_side_inputs

    engine, feeds, expected = engine_with_constant_side_inputs(case)
    got = engine.run(feeds)
    for name, want in zip(engine.output_names, expected, strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    fast = {"Slice": SLICE.name, **{f"Reduce{k}": REDUCE.name for k in REDUCTIONS}}
    for kernel in engine.kernels:
        if kernel.node.op_type in fast and next(iter(feeds.values())).dtype.kind == "f":
            assert kernel.tactic.name == fast[kernel.node.op_type]
