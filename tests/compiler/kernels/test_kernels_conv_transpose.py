"""``cpu.conv_transpose.bands`` against the reference ConvTranspose on fresh random inputs: 1-D
and 2-D, strides, dilations, groups, asymmetric pads, ``output_padding``, ``output_shape`` (also
larger than the full output), SAME auto_pad, with and without a bias, batch 1-3 and bands split
across threads; and ONNX's own ConvTranspose node tests through an engine."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.ir import Graph
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu.conv_transpose import band_plan

TACTICS = [get_tactic("cpu.conv_transpose.bands"), get_tactic("cpu.conv_transpose.tiles")]
TACTIC = TACTICS[1]  # the one a level-0 build picks

# (input shape, weight shape [C, M/group, k..], attributes, bias)
CASES: tuple[tuple[tuple[int, ...], tuple[int, ...], dict[str, Any], bool], ...] = (
    ((1, 24, 20, 20), (24, 24, 2, 2), {"strides": [2, 2]}, True),  # the DB head's upsampling
    ((1, 24, 16, 16), (24, 1, 2, 2), {"strides": [2, 2]}, False),  # one output channel
    ((2, 8, 9, 7), (8, 5, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, True),
    ((1, 6, 5, 6), (6, 4, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),  # GAN / U-Net k4 s2 p1
    ((3, 4, 6, 5), (4, 3, 3, 2), {"strides": [3, 1], "pads": [0, 2, 1, 0], "dilations": [1, 2]}, True),
    ((1, 8, 7, 7), (8, 3, 3, 3), {"group": 2, "strides": [2, 2]}, True),
    ((2, 6, 8, 8), (6, 1, 4, 4), {"group": 6, "strides": [2, 2], "pads": [1, 1, 1, 1]}, False),  # depthwise
    ((1, 5, 6, 7), (5, 4, 3, 3), {"strides": [2, 2], "output_shape": [14, 15]}, True),
    ((1, 5, 6, 7), (5, 4, 3, 3), {"strides": [2, 2], "output_shape": [16, 18]}, True),  # negative pads
    ((1, 5, 6, 7), (5, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, True),
    ((1, 5, 6, 7), (5, 2, 4, 3), {"strides": [3, 2], "auto_pad": "SAME_LOWER"}, False),
    ((1, 4, 5, 5), (4, 3, 3, 3), {}, True),  # stride 1: every output row reads three input rows
    ((2, 16, 40), (16, 8, 4), {"strides": [2], "pads": [1, 1]}, True),  # 1-D (vocoders)
    ((1, 3, 11), (3, 2, 5), {"strides": [3], "dilations": [2], "output_padding": [2]}, False),
    ((1, 64, 3, 3), (64, 32, 3, 3), {"strides": [2, 2], "pads": [0, 1, 1, 0]}, True),
    ((1, 8, 3, 3), (8, 10, 3, 3), {"strides": [2, 2]}, True),  # channel blocks of 4: 36 rows, 3 panels
    # rows wide enough for the sixteen-column steps of stride 1 and 2 and their ragged ends
    ((1, 6, 5, 37), (6, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, True),
    ((1, 4, 3, 50), (4, 3, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ((1, 3, 4, 40), (3, 2, 5, 5), {"strides": [2, 2], "pads": [0, 3, 1, 0]}, True),
    ((1, 3, 2, 41), (3, 2, 3, 3), {"strides": [2, 2]}, False),  # a lone even tap reaching the last column
    ((1, 3, 2, 41), (3, 2, 3, 3), {"strides": [2, 2], "output_shape": [4, 78]}, True),  # cropped right
    ((1, 4, 3, 45), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, True),  # stride 1
    ((1, 4, 3, 45), (4, 3, 3, 3), {"strides": [2, 2], "dilations": [1, 2]}, True),  # dilated: one by one
    ((2, 20, 70), (20, 6, 16), {"strides": [8], "pads": [4, 4]}, True),  # a vocoder's k16 s8
)


def convt_graph(
    shape: tuple[int, ...],
    w: np.ndarray,
    attrs: dict[str, Any],
    bias: np.ndarray | None,
    op_type: str = "ConvTranspose",
) -> Graph:
    g = Graph("convt")
    g.add_input("x", "float32", shape)
    inputs = ["x", g.add_const("w", w).name]
    if bias is not None:
        inputs.append(g.add_const("b", bias).name)
    g.add_node(op_type, inputs, ["y"], attrs)
    g.add_value("y", "float32", None)
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize("tactic", TACTICS, ids=[t.name.split(".")[-1] for t in TACTICS])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_matches_the_reference(case: tuple, tactic: Any) -> None:  # type: ignore[type-arg]
    shape, wshape, attrs, with_bias = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    w = rng.standard_normal(wshape).astype(np.float32)
    channels = wshape[1] * int(attrs.get("group", 1))
    bias = rng.standard_normal(channels).astype(np.float32) if with_bias else None
    g = convt_graph(shape, w, attrs, bias)
    (node,) = g.nodes
    assert tactic.supports(node, g)
    prepared = tactic.prepare(node, g)
    for _ in range(2):  # fresh inputs, the same prepared step (its plan is kept)
        x = rng.standard_normal(shape).astype(np.float32)
        want = reference.run(g, {"x": x})["y"]
        out = np.full(want.shape, np.nan, np.float32)  # every element must be written
        tactic.run(node, [x, None, None], [out], prepared)
        np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))


EPILOGUES = (
    ("Relu", 0.0, 0.0),
    ("LeakyRelu", 0.1, 0.0),
    ("Clip", -0.5, 0.75),
    ("Sigmoid", 0.0, 0.0),
    ("HardSwish", 0.0, 0.0),
    ("Silu", 0.0, 0.0),
)
EPILOGUE_CASES = (
    ((1, 6, 9, 37), (6, 5, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),  # rows overlap
    ((2, 4, 7, 20), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, False),  # stride 1: three input rows a row
    ((1, 5, 3, 3), (5, 4, 3, 3), {"strides": [2, 2], "output_shape": [11, 11]}, True),  # unreached rows
    ((1, 8, 40), (8, 3, 16), {"strides": [8], "pads": [4, 4]}, True),  # 1-D
)


@pytest.mark.parametrize("column_bytes", [1, None], ids=["one-input-row-chunks", "planned-chunks"])
@pytest.mark.parametrize("epilogue", EPILOGUES, ids=[e[0] for e in EPILOGUES])
@pytest.mark.parametrize("tactic", TACTICS, ids=[t.name.split(".")[-1] for t in TACTICS])
def test_fused_activation_matches_the_reference(
    tactic: Any, epilogue: tuple[str, float, float], column_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FusedConvTranspose: the activation is applied to each output row once the last input row
    that reaches it has been added, chunk by chunk (one input row a chunk makes every overlap a
    chunk boundary), and to rows no input row reaches (they hold act(bias))."""
    from farm.compiler.kernels.cpu import conv_transpose

    if column_bytes is not None:
        monkeypatch.setattr(conv_transpose, "COLUMN_BYTES", column_bytes)
    name, alpha, beta = epilogue
    for case in EPILOGUE_CASES:
        shape, wshape, attrs, with_bias = case
        rng = np.random.default_rng(zlib.crc32(repr((case, name)).encode()))
        w = rng.standard_normal(wshape).astype(np.float32)
        bias = rng.standard_normal(wshape[1]).astype(np.float32) if with_bias else None
        fused = dict(attrs, activation=name, alpha=alpha, beta=beta)
        g = convt_graph(shape, w, fused, bias, op_type="FusedConvTranspose")
        (node,) = g.nodes
        assert tactic.supports(node, g)
        prepared = tactic.prepare(node, g)
        x = rng.standard_normal(shape).astype(np.float32)
        want = reference.run(g, {"x": x})["y"]
        plain = reference.run(convt_graph(shape, w, attrs, bias), {"x": x})["y"]
        assert not np.allclose(want, plain)  # the activation changed something
        out = np.full(want.shape, np.nan, np.float32)
        tactic.run(node, [x, None, None], [out], prepared)
        np.testing.assert_allclose(
            out, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()), err_msg=str(case)
        )


def test_bands_and_channel_blocks_split_small_batches() -> None:
    """One image, one group: output rows split into bands (at least 8 rows), then channels."""
    assert band_plan(1, 1, 24, 320, 4, 160, 2) == (80, 24, 4)  # 4 rows: 24*4 x 640 floats, 240 KiB
    band, block, _ = band_plan(1, 1, 4, 8, 9, 8, 2)  # 8 rows: one band, so channel blocks
    assert (band, block) == (8, 1)
    assert band_plan(8, 1, 16, 64, 4, 32, 2)[:2] == (64, 16)  # a batch gives the tasks alone


def test_channel_blocks_come_to_whole_tile_panels() -> None:
    """The tile tactic's blocks hold a multiple of 12 GEMM rows (its A panels), unless one block
    is the whole group: 3 x 3 taps need blocks of 4 channels (36 rows), 2 x 2 taps of 3."""
    for mg, taps in ((32, 9), (10, 4), (7, 16), (5, 2), (64, 1)):
        _, block, _ = band_plan(1, 1, mg, 6, taps, 3, 2, align=12)
        assert block == mg or (block * taps) % 12 == 0, (mg, taps, block)
    assert band_plan(1, 1, 32, 6, 9, 3, 2, align=12)[1] == 8  # 32 channels in 4 blocks: 8 = 2 x 4
    assert band_plan(1, 1, 32, 6, 9, 3, 2)[1] == 8
    assert band_plan(1, 1, 10, 6, 4, 3, 2, align=12)[1] == 3  # ceil(10 / 4) = 3 channels, 12 rows
    assert band_plan(1, 1, 10, 6, 9, 3, 2)[1] == 3  # 27 rows: not whole panels ...
    assert band_plan(1, 1, 10, 6, 9, 3, 2, align=12)[1] == 4  # ... so 4 channels, 36 rows


def test_declines_run_time_weights_and_3d() -> None:
    g = Graph("dynamic_w")
    g.add_input("x", "float32", (1, 2, 4, 4))
    g.add_input("w", "float32", (2, 3, 2, 2))
    g.add_node("ConvTranspose", ["x", "w"], ["y"], {})
    assert not TACTIC.supports(g.nodes[0], g)
    g = convt_graph((1, 2, 3, 3, 3), np.ones((2, 2, 2, 2, 2), np.float32), {}, None)
    assert not TACTIC.supports(g.nodes[0], g)


def _backend_cases() -> list:  # type: ignore[type-arg]
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recurrent"))
    from recurrent_engine_cases import engine_cases

    return engine_cases(frozenset({"ConvTranspose"}))


BACKEND_CASES = _backend_cases()


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c.name for c in BACKEND_CASES])
def test_onnx_backend_cases_through_an_engine(case) -> None:  # type: ignore[no-untyped-def]
    """ONNX's ConvTranspose node tests with the weight (and bias) made constants, built at tuning
    level 0: the band tactic runs the 1-D and 2-D ones and matches ONNX's expected outputs."""
    from recurrent_engine_cases import engine_with_constant_side_inputs

    engine, feeds, expected = engine_with_constant_side_inputs(case)
    (kernel,) = [k for k in engine.kernels if k.node.op_type == "ConvTranspose"]
    if next(iter(feeds.values())).ndim == 5:  # 3-D: the reference
        assert kernel.tactic.name != TACTIC.name
    else:
        assert kernel.tactic.name == TACTIC.name, kernel.tactic.name
    got = engine.run(feeds)
    for name, want in zip(engine.output_names, expected, strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_decoder_block_builds_one_fused_step_and_matches_onnxruntime() -> None:
    """ConvTranspose -> BatchNormalization -> Relu (a GAN generator's or DB head's upsampling
    block) as an ONNX model: the build folds the BatchNorm and fuses the Relu, so the engine runs
    one FusedConvTranspose step, and its output matches ONNX Runtime's on fresh inputs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from farm.compiler import BuilderConfig, build

    rng = np.random.default_rng(11)
    c, m = 16, 8
    consts = {
        "w": rng.standard_normal((c, m, 4, 4)).astype(np.float32) / 8,
        "b": rng.standard_normal(m).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, m).astype(np.float32),
        "shift": rng.standard_normal(m).astype(np.float32),
        "mean": rng.standard_normal(m).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, m).astype(np.float32),
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["t", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 12, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, 24, 40])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    engine = build(model, "cpu", BuilderConfig(tuning_level=0))
    assert [k.node.op_type for k in engine.kernels] == ["FusedConvTranspose"]
    assert engine.kernels[0].tactic.name.startswith("cpu.conv_transpose.")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(2):
        x = rng.standard_normal((1, c, 12, 20)).astype(np.float32)
        (want,) = session.run(None, {"x": x})
        np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)
