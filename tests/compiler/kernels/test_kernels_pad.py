"""``cpu.pad.tables`` against the reference Pad on fresh random inputs: every mode, crops
(negative pads), ``axes`` (negative ones too), fills, ranks 1 to 4 and integer dtypes; the
result must be bit-exact. Also ONNX's own Pad node tests through an engine."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.ir import Graph
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.registry import Prepared

TACTIC = get_tactic("cpu.pad.tables")
# (shape, pads, axes)
GEOMETRIES = (
    ((1, 576), [0, 64, 0, 64], None),  # Silero's reflect pad of a chunk
    ((2, 3, 5, 7), [0, 0, 1, 2, 0, 0, 3, 1], None),
    ((2, 3, 5, 7), [0, 1, -1, 2, 1, 0, 0, -3], None),  # crops and a channel pad
    ((4, 6, 5), [2, 1, 1, 3], [-1, 1]),  # axes, negative
    ((9,), [3, 4], None),
    ((2, 3, 4, 4), [0, 0, 0, 0, 0, 0, 0, 0], None),
)


def pad_graph(
    shape: tuple[int, ...], pads: list[int], axes: list[int] | None, mode: str, fill, dtype: str
) -> Graph:  # type: ignore[no-untyped-def]
    g = Graph("pad")
    g.add_input("x", dtype, shape)
    inputs = ["x", g.add_const("pads", np.array(pads, np.int64)).name]
    if fill is not None or axes is not None:
        inputs.append(
            g.add_const("fill", np.array(fill if fill is not None else 0, dtype)).name
            if fill is not None
            else ""
        )
    if axes is not None:
        inputs.append(g.add_const("axes", np.array(axes, np.int64)).name)
    g.add_node("Pad", inputs, ["y"], {"mode": mode})
    g.add_value("y", dtype, None)
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize(
    ("mode", "geometry", "dtype"),
    list(itertools.product(("constant", "reflect", "edge", "wrap"), GEOMETRIES, ("float32", "int64"))),
)
def test_bit_exact_against_the_reference(mode: str, geometry: tuple, dtype: str) -> None:  # type: ignore[type-arg]
    shape, pads, axes = geometry
    fill = 2.5 if dtype == "float32" else 7
    g = pad_graph(shape, pads, axes, mode, fill if mode == "constant" else None, dtype)
    (node,) = g.nodes
    assert TACTIC.supports(node, g)
    rng = np.random.default_rng(zlib.crc32(f"{mode}{shape}{pads}".encode()))
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    want = reference.run(g, {"x": x})["y"]
    out = np.empty(want.shape, want.dtype)
    TACTIC.run(node, [x, *[g.const(i) if i else None for i in node.inputs[1:]]], [out], Prepared())
    np.testing.assert_array_equal(out, want)


def test_declines_pads_read_at_run_time_and_impossible_reflections() -> None:
    g = Graph("dynamic_pads")
    g.add_input("x", "float32", (2, 3))
    g.add_input("p", "int64", (4,))
    (node,) = [g.add_node("Pad", ["x", "p"], ["y"], {"mode": "constant"})]
    assert not TACTIC.supports(node, g)
    g = pad_graph((2, 0), [0, 1, 0, 1], None, "reflect", None, "float32")  # reflect an empty axis
    assert not TACTIC.supports(g.nodes[0], g)


def _backend_cases() -> list:  # type: ignore[type-arg]
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recurrent"))
    from recurrent_engine_cases import engine_cases

    # the Pad tests themselves, not the expanded functions (Attention, CenterCropPad) that use one
    return [c for c in engine_cases(frozenset({"Pad"})) if "crop" not in c.name and "attention" not in c.name]


BACKEND_CASES = _backend_cases()


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c.name for c in BACKEND_CASES])
def test_onnx_backend_pad_cases_through_an_engine(case) -> None:  # type: ignore[no-untyped-def]
    """ONNX's Pad node tests with their pads/value/axes inputs made constants, built at tuning
    level 0: the tables run them and match ONNX's expected outputs."""
    from recurrent_engine_cases import engine_with_constant_side_inputs

    engine, feeds, expected = engine_with_constant_side_inputs(case)
    (kernel,) = [k for k in engine.kernels if k.node.op_type == "Pad"]
    assert kernel.tactic.name == "cpu.pad.tables"
    got = engine.run(feeds)
    for name, want in zip(engine.output_names, expected, strict=True):
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_tables_are_made_once_per_shape() -> None:
    """The tuner times ``run``, which binds on every call: the tables are kept per shape in the
    step's scratch, so a timed run costs the copy, not numpy's table building."""
    g = pad_graph((1, 576), [0, 64, 0, 64], None, "reflect", None, "float32")
    (node,) = g.nodes
    prepared = Prepared()
    out = np.empty((1, 704), np.float32)
    for seed in (0, 1):
        x = np.random.default_rng(seed).standard_normal((1, 576)).astype(np.float32)
        TACTIC.run(node, [x, g.const("pads")], [out], prepared)
        np.testing.assert_array_equal(out, reference.run(g, {"x": x})["y"])
    (tables,) = _kept_tables(prepared)
    x = np.ones((1, 576), np.float32)
    TACTIC.run(node, [x, g.const("pads")], [out], prepared)
    assert next(iter(_kept_tables(prepared))) is tables


def _kept_tables(prepared: Prepared) -> list[object]:
    """The tables the tactic keeps in the step's scratch (``memo`` keys ``("pad_tables", ...)``)."""
    return [v for k, v in prepared.scratch.items() if isinstance(k, tuple) and k[0] == "pad_tables"]
