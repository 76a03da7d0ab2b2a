"""``cpu.resize.tables`` against the reference Resize on fresh random inputs: every coordinate
transformation mode and nearest rounding mode, scales and sizes, ``axes``, ranks 1 to 4, upsampling
and downsampling; nearest must be bit-exact, linear within float32 blending. Also what it
declines, and an engine that picks it."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from farm.compiler import BuilderConfig, build, reference
from farm.compiler.ir import Graph, Node
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.registry import Prepared

TACTIC = get_tactic("cpu.resize.tables")
TRANSFORMS = (
    "half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn", "half_pixel_symmetric",
)  # fmt: skip
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
# (input shape, scales, sizes, axes)
GEOMETRIES = (
    ((1, 3, 5, 7), [1, 1, 2, 2], None, None),  # YOLO / FPN 2x upsampling
    ((2, 4, 6, 9), [1, 1, 0.5, 0.75], None, None),  # downsampling
    ((1, 2, 5, 4), None, [1, 2, 11, 3], None),  # sizes, one axis up and one down
    ((2, 3, 8), [1, 1, 2.5], None, None),  # rank 3, the middle axis kept
    ((3, 7), None, [5, 13], None),  # rank 2, both axes resized
    ((1, 3, 6, 6), [3.0, 1.7], None, [2, 3]),  # axes
    ((9,), [2.0], None, None),  # rank 1
)


def resize_graph(
    shape: tuple[int, ...], scales: list[float] | None, sizes: list[int] | None, attrs: dict
) -> tuple[Graph, Node]:
    g = Graph("resize")
    g.add_input("x", "float32", shape)
    inputs = ["x", ""]
    inputs.append(g.add_const("scales", np.array(scales, np.float32)).name if scales is not None else "")
    if sizes is not None:
        inputs.append(g.add_const("sizes", np.array(sizes, np.int64)).name)
    node = g.add_node("Resize", inputs, ["y"], attrs)
    g.add_value("y", "float32", None)
    g.outputs = ["y"]
    return g, node


def run_both(g: Graph, node: Node, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    want = reference.run(g, {"x": x})["y"]
    out = np.full(want.shape, np.nan, np.float32)
    inputs = [x, None, *[g.const(name) if name else None for name in node.inputs[2:]]]
    TACTIC.run(node, inputs, [out], Prepared())
    return out, want


@pytest.mark.parametrize(
    ("transform", "nearest_mode", "geometry"),
    list(itertools.product(TRANSFORMS, NEAREST_MODES, GEOMETRIES)),
)
def test_nearest_is_bit_exact(transform: str, nearest_mode: str, geometry: tuple) -> None:  # type: ignore[type-arg]
    shape, scales, sizes, axes = geometry
    attrs = {"mode": "nearest", "coordinate_transformation_mode": transform, "nearest_mode": nearest_mode}
    if axes:
        attrs["axes"] = axes
    g, node = resize_graph(shape, scales, sizes, attrs)
    assert TACTIC.supports(node, g)
    x = np.random.default_rng(zlib.crc32(f"{transform}{nearest_mode}{shape}".encode())).standard_normal(shape)
    got, want = run_both(g, node, x.astype(np.float32))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("transform", "geometry"), list(itertools.product(TRANSFORMS, GEOMETRIES)))
def test_linear_matches_the_reference(transform: str, geometry: tuple) -> None:  # type: ignore[type-arg]
    shape, scales, sizes, axes = geometry
    attrs = {"mode": "linear", "coordinate_transformation_mode": transform}
    if axes:
        attrs["axes"] = axes
    g, node = resize_graph(shape, scales, sizes, attrs)
    assert TACTIC.supports(node, g)
    x = (
        np.random.default_rng(zlib.crc32(f"{transform}{shape}".encode()))
        .standard_normal(shape)
        .astype(np.float32)
    )
    got, want = run_both(g, node, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_declines_what_the_tables_cannot_express() -> None:
    cases = [
        ({"mode": "cubic"}, (1, 2, 4, 4), [1, 1, 2, 2]),
        (
            {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
            (1, 2, 4, 4),
            [1, 1, 2, 2],
        ),
        ({"mode": "linear", "antialias": 1}, (1, 2, 8, 8), [1, 1, 0.5, 0.5]),  # antialiased shrink
        ({"mode": "nearest"}, (1, 2, 4, 4), [1, 2, 2, 2]),  # the channel axis resized
    ]
    for attrs, shape, scales in cases:
        g, node = resize_graph(shape, scales, None, attrs)
        assert not TACTIC.supports(node, g), attrs
    # scales computed at run time: the tables could not be made once
    g = Graph("dynamic_scales")
    g.add_input("x", "float32", (1, 2, 4, 4))
    g.add_input("s", "float32", (4,))
    node = g.add_node("Resize", ["x", "", "s"], ["y"], {"mode": "nearest"})
    assert not TACTIC.supports(node, g)
    # an antialiased upsample is a plain one: accepted
    g, node = resize_graph((1, 2, 4, 4), [1, 1, 2, 2], None, {"mode": "linear", "antialias": 1})
    assert TACTIC.supports(node, g)
    got, want = run_both(g, node, np.random.default_rng(3).standard_normal((1, 2, 4, 4)).astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_an_engine_with_a_dynamic_batch_upsamples_with_the_tables() -> None:
    """Conv -> 2x nearest Resize (YOLO's neck) with a dynamic batch: the tactic is chosen at
    tuning level 0 and the engine agrees with the reference at two batch sizes."""
    rng = np.random.default_rng(7)
    g = Graph("upsample")
    g.add_input("x", "float32", ("batch", 4, 6, 5))
    g.add_const("w", rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
    g.add_node("Conv", ["x", "w"], ["c"], {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]})
    g.add_value("c", "float32", ("batch", 8, 6, 5))
    g.add_const("scales", np.array([1, 1, 2, 2], np.float32))
    g.add_node(
        "Resize",
        ["c", "", "scales"],
        ["y"],
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"},
    )
    g.add_value("y", "float32", ("batch", 8, 12, 10))
    g.outputs = ["y"]
    engine = build(g, config=BuilderConfig(tuning_level=0, batch_range=(1, 2, 3)))
    assert {k.node.op_type: k.tactic.name for k in engine.kernels}["Resize"] == "cpu.resize.tables"
    for batch in (1, 3):
        x = rng.standard_normal((batch, 4, 6, 5)).astype(np.float32)
        np.testing.assert_allclose(
            engine.run({"x": x})["y"], reference.run(g, {"x": x})["y"], rtol=1e-5, atol=1e-5
        )


def _backend_cases() -> list:  # type: ignore[type-arg]
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recurrent"))
    from recurrent_engine_cases import engine_cases

    return engine_cases(frozenset({"Resize", "Upsample"}))


BACKEND_CASES = _backend_cases()


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c.name for c in BACKEND_CASES])
def test_onnx_backend_resize_cases_through_an_engine(case) -> None:  # type: ignore[no-untyped-def]
    """ONNX's own Resize/Upsample node tests, their roi/scales/sizes inputs made constants (as
    exporters write them), built at tuning level 0 and compared with ONNX's expected outputs:
    the tables run every nearest and linear case, the reference the others."""
    import json

    from recurrent_engine_cases import engine_with_constant_side_inputs

    engine, feeds, expected = engine_with_constant_side_inputs(case)
    tolerance = json.loads((case.folder / "tolerance.json").read_text())
    got = engine.run(feeds)
    for name, want in zip(engine.output_names, expected, strict=True):
        np.testing.assert_allclose(
            got[name], want, rtol=tolerance["rtol"], atol=tolerance["atol"], err_msg=name
        )
    (kernel,) = [k for k in engine.kernels if k.node.op_type == "Resize"]
    attrs = kernel.node.attrs
    downsampling = "downsample" in case.name
    runs_tables = (
        attrs.get("mode", "nearest") in ("nearest", "linear")
        and attrs.get("coordinate_transformation_mode") != "tf_crop_and_resize"
        and not (attrs.get("antialias", 0) and attrs.get("mode") == "linear" and downsampling)
    )
    assert (kernel.tactic.name == "cpu.resize.tables") == runs_tables, kernel.tactic.name


def test_plans_are_made_once_per_shape() -> None:
    """The tuner times ``run``, which binds on every call: the plan (coordinate tables) is kept
    per input shape in the step's scratch."""
    g, node = resize_graph((1, 3, 5, 7), [1, 1, 2, 2], None, {"mode": "linear"})
    prepared = Prepared()
    for shape in ((1, 3, 5, 7), (1, 3, 5, 7), (2, 3, 5, 7)):
        x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
        out = np.empty((shape[0], 3, 10, 14), np.float32)
        TACTIC.run(node, [x, None, g.const("scales")], [out], prepared)
    plans = [k for k in prepared.scratch if isinstance(k, tuple) and k[0] == "resize_plan"]
    assert len(plans) == 2
