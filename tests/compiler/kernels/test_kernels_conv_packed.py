"""``cpu.conv.packed16`` (im2col into 32-pixel panels against prepacked 12-channel weight panels,
our 12 x 32 micro-kernel) and the 1 x 1 tactics ``pointwise16`` and ``pointwise_tiles`` against a
direct float64 convolution: every dense geometry of the conv suite, pixel and channel tails, K
blocks, stride phases, task splits, epilogues. ``pointwise_tiles``'s register tile is checked in
both of its forms (one AVX-512 pass, four quarters on AVX2 hosts) on any host."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import assert_close
from numba import njit
from test_kernels_conv import CASES, STRIDED_POINTWISE_CASES, _conv_case, conv_oracle

from farm.compiler.ir import ACTIVATIONS
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu import conv_packed, pointwise_tiles
from farm.compiler.kernels.cpu._epilogue import ACT_CLIP, RES_NONE, vector_epilogue

TACTIC = "cpu.conv.packed16"
DENSE = [c for c in CASES if c[-1] == 1]
# (N, C, H, W, M, kernel, strides, pads, dilations, group)
PANEL_CASES = [
    (1, 8, 30, 29, 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 870 pixels: a 6-pixel last panel
    (3, 5, 23, 31, 37, (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 1),  # 37 channels: a 1-channel last tile
    (2, 12, 16, 16, 24, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 1),  # 16 x 18 wide pixels: 9 full panels
    (2, 12, 17, 19, 33, (3, 1), (1, 1), (1, 0, 1, 0), (1, 1), 1),  # wq == wo: panels of whole rows
    (1, 4, 20, 30, 16, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),  # ResNet's stem: four phases
    (1, 3, 9, 11, 12, (3, 3), (3, 2), (0, 2, 1, 0), (2, 3), 1),  # strides and dilations mixed
    (1, 6, 40, 9, 18, (5, 3), (1, 2), (2, 1, 2, 1), (2, 1), 1),  # dilation, asymmetric pads
    (1, 40, 9, 9, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K = 360: two K blocks
    (2, 40, 15, 17, 36, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride 2, K = 360 in address order
]
PANEL_CASES += STRIDED_POINTWISE_CASES

POINTWISE = "cpu.conv.pointwise16"
TILES = "cpu.conv.pointwise_tiles"
POINTWISE_TACTICS = [POINTWISE, TILES]
# (N, C, H, W, M, kernel, strides, pads, dilations, group): 1 x 1, stride 1, unpadded
POINTWISE_CASES = [
    (1, 16, 8, 8, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 64 pixels: whole panels only
    (2, 7, 9, 11, 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 99 pixels: a 3-pixel ragged panel
    (3, 5, 3, 5, 37, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 15 pixels: the ragged panel only
    (1, 200, 7, 7, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # C = 200: two K blocks
    (2, 24, 1, 1, 30, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # squeeze-excite: 1 x 1 maps
]


@pytest.mark.parametrize("case", [c for c in DENSE if c[5] != (1, 1)])
def test_packed_conv_matches_oracle(rng: np.random.Generator, case: tuple) -> None:
    one, expected = _conv_case(rng, case, activation="LeakyRelu", alpha=0.1, residual="pre")
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize(
    ("tactic", "case"),
    [(TACTIC, c) for c in PANEL_CASES] + [(t, c) for t in POINTWISE_TACTICS for c in POINTWISE_CASES],
)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_packed_conv_panels_and_tails(
    rng: np.random.Generator, tactic: str, case: tuple, residual: str | None
) -> None:
    activation = "HardSwish" if residual else "Clip"
    one, expected = _conv_case(rng, case, activation=activation, alpha=-1.0, beta=2.0, residual=residual)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize(
    "case",
    [
        (1, 16, 14, 14, 24, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),  # a ResNet downsample's shape
        (2, 7, 9, 11, 13, (1, 1), (2, 3), (0, 0, 0, 0), (1, 1), 1),  # odd sizes, unequal strides
        (1, 5, 13, 40, 30, (1, 1), (1, 2), (0, 0, 0, 0), (1, 1), 1),  # width stride only
        (1, 6, 50, 3, 7, (1, 1), (4, 1), (0, 0, 0, 0), (1, 1), 1),  # height stride only
    ],
)
@pytest.mark.parametrize("residual", [None, "post"])
def test_pointwise_tiles_strided_matches_oracle(
    rng: np.random.Generator, case: tuple, residual: str | None
) -> None:
    """A strided 1 x 1 conv: the pixels it reads copied dense first, then the same tiles."""
    one, expected = _conv_case(rng, case, activation="Relu", residual=residual)
    assert_close(one.run_tactic(TILES), expected)


@pytest.mark.parametrize("strides", [(2, 2), (1, 3)])
def test_pointwise_tiles_binds_a_strided_layer_that_gathers_on_every_call(
    rng: np.random.Generator, strides: tuple[int, int]
) -> None:
    """A strided 1 x 1 conv on a dense input binds (a ResNet downsample in an engine's arena):
    the bound call gathers the pixels it reads into the context's buffer on every call, so new
    input data gives new results, each matching the direct convolution."""
    from farm.compiler.frontend import infer_shapes
    from farm.compiler.ir import Graph

    graph = Graph("downsample")
    graph.add_input("x", "float32", (2, 9, 13, 14))
    w = rng.standard_normal((20, 9, 1, 1)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    graph.add_const("w", w)
    graph.add_const("b", b)
    graph.add_node("Conv", ["x", "w", "b"], ["y"], {"kernel_shape": [1, 1], "strides": list(strides)})
    graph.outputs = ["y"]
    infer_shapes(graph, {"x": (2, 9, 13, 14)})
    node = graph.nodes[0]
    tactic = get_tactic(TILES)
    prepared = tactic.prepare(node, graph)
    x = np.empty((2, 9, 13, 14), np.float32)
    out = np.empty(graph.values["y"].shape, np.float32)
    inputs = [
        None if i in prepared.replaces else (x if n == "x" else graph.const(n))
        for i, n in enumerate(node.inputs)
    ]
    call = tactic.bind(node, inputs, [out], prepared)
    assert call is not None
    for _ in range(2):
        x[...] = rng.standard_normal(x.shape)
        call()
        want = conv_oracle(x, w, b, strides, (0, 0, 0, 0), (1, 1), 1)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("tactic", "case"),
    [
        (TACTIC, (2, 5, 9, 11, 14, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)),
        (POINTWISE, (2, 9, 5, 13, 14, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
        (TILES, (2, 9, 5, 13, 14, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
    ],
)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_packed_conv_every_activation(
    rng: np.random.Generator, tactic: str, case: tuple, activation: str, residual: str | None
) -> None:
    """Piecewise-linear activations go into the tile stores, transcendental ones run per row."""
    one, expected = _conv_case(rng, case, activation=activation, alpha=0.2, beta=0.7, residual=residual)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize(
    ("tactic", "case"),
    [
        (TACTIC, (1, 16, 7, 7, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)),
        (POINTWISE, (2, 40, 10, 10, 52, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
        (TILES, (2, 40, 10, 10, 52, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3, 8, 64])
def test_packed_conv_any_channel_runs(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, tactic: str, case: tuple, threads: int
) -> None:
    """More threads split a small map's panels and channels finer: the result never changes."""
    monkeypatch.setattr(conv_packed, "numba_thread_count", lambda: threads)
    monkeypatch.setattr(pointwise_tiles, "numba_thread_count", lambda: threads)
    one, expected = _conv_case(rng, case, activation="Relu", residual="post")
    assert_close(one.run_tactic(tactic), expected)


def test_task_split() -> None:
    # A 7x7 map at batch 1 (7 x 9 wide pixels: two panels): one group, its weight in 8 runs.
    assert conv_packed.task_split(1, 512, 7 * 9, 2) == (2, 8)
    # A 56x56 map: groups of four panels give enough tasks on their own.
    assert conv_packed.task_split(1, 64, 56 * 58, 2) == (4, 1)
    # One panel, two weight panels, eight threads: runs stop at the weight panels.
    assert conv_packed.task_split(1, 20, 16, 8) == (1, 2)


def test_packed_conv_declines_groups_and_1x1(rng: np.random.Generator) -> None:
    grouped = next(c for c in CASES if c[-1] > 1)
    one, _ = _conv_case(rng, grouped)
    assert not get_tactic(TACTIC).supports(one.node, one.graph)
    pointwise = next(c for c in DENSE if c[5] == (1, 1) and c[6] == (1, 1))
    one, _ = _conv_case(rng, pointwise)
    assert not get_tactic(TACTIC).supports(one.node, one.graph)
    strided, _ = _conv_case(rng, STRIDED_POINTWISE_CASES[0])
    assert get_tactic(TACTIC).supports(strided.node, strided.graph)  # the phase copy is needed anyway
    dense, _ = _conv_case(rng, next(c for c in DENSE if c[5] != (1, 1)))
    assert get_tactic(TACTIC).supports(dense.node, dense.graph)


@pytest.mark.parametrize(
    ("tactic", "case", "new_shape"),
    [
        (TACTIC, (1, 6, 20, 24, 13, (3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 1), (2, 6, 11, 37)),
        (POINTWISE, (1, 6, 4, 8, 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1), (3, 6, 11, 5)),
        (TILES, (1, 6, 4, 8, 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1), (3, 6, 11, 5)),
    ],
)
def test_packed_conv_new_input_size_with_the_same_prepared(
    rng: np.random.Generator, tactic: str, case: tuple, new_shape: tuple[int, ...]
) -> None:
    """A dynamic spatial size: the plan, task split and phase buffer follow the run's shape."""
    one, expected = _conv_case(rng, case, activation="Relu")
    chosen = get_tactic(tactic)
    prepared = chosen.prepare(one.node, one.graph)
    inputs = [None if i in prepared.replaces else a for i, a in enumerate(one.arrays())]
    out = np.empty(expected.shape, np.float32)
    chosen.run(one.node, inputs, [out], prepared)
    assert_close(out, expected)
    x = rng.standard_normal(new_shape).astype(np.float32)
    w = one.arrays()[1]
    b = one.arrays()[2]
    want = np.maximum(conv_oracle(x, w, b, case[6], case[7], case[8], 1), 0.0)
    small = np.empty(want.shape, np.float32)
    chosen.run(one.node, [x, *inputs[1:]], [small], prepared)
    assert_close(small, want)


@pytest.mark.parametrize("tactic_name", POINTWISE_TACTICS)
def test_pointwise16_on_a_view_of_a_larger_buffer(rng: np.random.Generator, tactic_name: str) -> None:
    """An input that is a view of a larger buffer whose tail holds NaNs: the ragged last panel's
    padding lanes never reach the output."""
    case = (1, 6, 5, 7, 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    one, expected = _conv_case(rng, case)
    tactic = get_tactic(tactic_name)
    prepared = tactic.prepare(one.node, one.graph)
    inputs = [None if i in prepared.replaces else a for i, a in enumerate(one.arrays())]
    x = np.asarray(inputs[0])
    backing = np.full(x.size + 64, np.nan, np.float32)
    backing[: x.size] = x.reshape(-1)
    out = np.empty(expected.shape, np.float32)
    tactic.run(one.node, [backing[: x.size].reshape(x.shape), *inputs[1:]], [out], prepared)
    assert_close(out, expected)


@pytest.mark.parametrize("tactic_name", POINTWISE_TACTICS)
def test_pointwise16_declines_other_geometries(rng: np.random.Generator, tactic_name: str) -> None:
    tactic = get_tactic(tactic_name)
    ok, _ = _conv_case(rng, POINTWISE_CASES[0])
    assert tactic.supports(ok.node, ok.graph)
    strided, _ = _conv_case(rng, (1, 8, 8, 8, 8, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1))
    assert tactic.supports(strided.node, strided.graph) == (tactic_name == TILES)
    for case in [
        (1, 8, 8, 8, 8, (1, 1), (1, 1), (1, 0, 0, 0), (1, 1), 1),  # padded
        (1, 8, 8, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 3 x 3
        (1, 8, 8, 8, 8, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),  # grouped
    ]:
        one, _ = _conv_case(rng, case)
        assert not tactic.supports(one.node, one.graph), case


@pytest.mark.parametrize(
    "case",
    [
        (1, 16, 12, 12, 64, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 144 pixels: 4.5 panels, M 64
        (2, 3, 6, 7, 25, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 42 pixels (16 + 16 + 10), M 25
        (1, 31, 2, 8, 11, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 16 pixels: the second vector empty
        (1, 5, 1, 33, 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 33 pixels: one in the last panel
    ],
)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_pointwise_tiles_vector_and_panel_tails(
    rng: np.random.Generator, case: tuple, residual: str | None
) -> None:
    """The two vectors of a 32-pixel tile filled partly or not at all, output channels past the
    layer's in the last 12-channel panel, with and without bias."""
    for with_bias in (True, False):
        one, expected = _conv_case(rng, case, activation="Relu", residual=residual, with_bias=with_bias)
        assert_close(one.run_tactic(TILES), expected)


@njit(cache=False)
def _tile_forms(xf, plane, cin, wp, bias, m, n0, n1, zmm, quarters, lo, hi):
    """Tile 0 (channels 0 .. 11, the first 32 pixels) in its AVX-512 form into ``zmm`` and as the
    AVX2 hosts' four quarters into ``quarters``, both through a Clip to [lo, hi]."""
    ep = vector_epilogue(RES_NONE, ACT_CLIP, lo, hi)
    pointwise_tiles._tile_zmm(xf, 0, plane, cin, wp, 0, bias, 0, m, zmm, 0, plane, n0, n1, zmm, ep)
    half = pointwise_tiles.HALF
    lanes = pointwise_tiles.LANES
    for h in range(2):
        if m > h * half:
            for q in range(2):
                n = n0 if q == 0 else n1
                if n > 0:
                    pointwise_tiles._quarter(
                        xf, q * lanes, plane, cin, wp, h * half, bias, h * half, m, quarters,
                        h * half * plane + q * lanes, plane, n, quarters, ep,
                    )  # fmt: skip


@pytest.mark.parametrize(("m", "pixels"), [(12, 32), (7, 32), (12, 21), (5, 9), (9, 16)])
def test_pointwise_tile_forms_agree_with_numpy(rng: np.random.Generator, m: int, pixels: int) -> None:
    """Both forms of the 12 x 32 tile store bias + W @ x through a Clip for the channels and
    pixels that exist, and nothing else (channel and pixel tails included)."""
    cin = 19
    plane = 40
    x = rng.standard_normal((cin, plane)).astype(np.float32)
    w = rng.standard_normal((m, cin)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    wp = pointwise_tiles.pack_rows(w)
    n0, n1 = min(pixels, 16), max(pixels - 16, 0)
    zmm = np.full(m * plane, np.nan, np.float32)
    quarters = np.full(m * plane, np.nan, np.float32)
    _tile_forms(x.reshape(-1), plane, cin, wp, bias, m, n0, n1, zmm, quarters, -0.5, 0.75)
    want = np.full((m, plane), np.nan)
    want[:, :pixels] = np.clip(w.astype(np.float64) @ x[:, :pixels] + bias[:m, None], -0.5, 0.75)
    for got in (zmm, quarters):
        np.testing.assert_allclose(got.reshape(m, plane), want, rtol=1e-5, atol=1e-5)


def test_address_order_sorts_the_k_rows_of_a_strided_conv() -> None:
    """A stride-2 3 x 3 conv's taps lie in four phase planes, so its (channel, ky, kx) rows read
    out of address order; ``address_order`` gives the permutation that sorts them (stable), and
    for a stride-1 conv the order it had."""
    from farm.compiler.kernels.cpu.conv import ConvGeometry
    from farm.compiler.kernels.registry import Prepared

    def plan_offsets(stride: int) -> np.ndarray:
        geo = ConvGeometry(3, 3, stride, stride, 1, 1, 1, 1, 1, 1, 1)
        return conv_packed.phase_plan(8, 14 // stride, 14 // stride, geo).offsets

    strided = plan_offsets(2)
    assert np.any(np.diff(strided) < 0)
    order, offsets = conv_packed.address_order(Prepared(), strided)
    assert sorted(order.tolist()) == list(range(strided.size))
    np.testing.assert_array_equal(offsets, strided[order])
    assert np.all(np.diff(offsets) >= 0)
    plain = plan_offsets(1)
    order, offsets = conv_packed.address_order(Prepared(), plain)
    np.testing.assert_array_equal(order, np.arange(plain.size))
    np.testing.assert_array_equal(offsets, plain)
