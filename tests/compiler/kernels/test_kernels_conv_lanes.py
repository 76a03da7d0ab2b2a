"""``cpu.conv.channel_lanes`` (output channels in the lanes, 14 x 32 tiles of two 7-pixel row
segments over the input's stride phases) against a direct float64 convolution: every dense
geometry of the conv suite, segment and channel tails, segment pairs across rows and images,
K blocks, runs, every epilogue. The tactic is offered on AVX-512 hosts only; these tests switch
it on, so its kernels are checked on any host (without AVX-512 they are slow, not wrong)."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import assert_close
from test_kernels_conv import CASES, STRIDED_POINTWISE_CASES, _conv_case, conv_oracle

from farm.compiler.ir import ACTIVATIONS
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu import conv_lanes
from farm.compiler.kernels.cpu._lanegemm import pack_lanes, tile_7x32, tile_14x32

TACTIC = "cpu.conv.channel_lanes"
DENSE = [c for c in CASES if c[-1] == 1 and c[5] != (1, 1)]
# (N, C, H, W, M, kernel, strides, pads, dilations, group)
LANE_CASES = [
    (1, 16, 7, 7, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 7 segments: 3 pairs + a single
    (2, 9, 14, 14, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 40 channels: an 8-channel panel
    (3, 5, 9, 11, 33, (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 1),  # 6 wide: one short segment a row
    (1, 4, 20, 30, 16, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),  # ResNet's stem: four phases
    (2, 6, 12, 19, 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 19 wide: 7 + 7 + 5, pairs across rows
    (1, 40, 9, 9, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K = 360: two K blocks
    (1, 70, 5, 5, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K = 630: three blocks, a ragged one
    (1, 3, 9, 11, 12, (3, 3), (3, 2), (0, 2, 1, 0), (2, 3), 1),  # strides and dilations mixed
    (1, 6, 40, 9, 18, (5, 3), (1, 2), (2, 1, 2, 1), (2, 1), 1),  # dilation, asymmetric pads
    (5, 3, 3, 3, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 3 x 3 maps: five images, odd total
    (2, 40, 15, 17, 36, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride 2, K = 360 in address order
]
LANE_CASES += STRIDED_POINTWISE_CASES


@pytest.fixture(autouse=True)
def _offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_lanes, "OFFERED", True)


@pytest.mark.parametrize("case", DENSE)
def test_channel_lanes_matches_oracle(rng: np.random.Generator, case: tuple) -> None:
    one, expected = _conv_case(rng, case, activation="LeakyRelu", alpha=0.1, residual="pre")
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("case", LANE_CASES)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_channel_lanes_segments_and_tails(
    rng: np.random.Generator, case: tuple, residual: str | None
) -> None:
    activation = "HardSwish" if residual else "Clip"
    one, expected = _conv_case(rng, case, activation=activation, alpha=-1.0, beta=2.0, residual=residual)
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_channel_lanes_every_activation(
    rng: np.random.Generator, activation: str, residual: str | None
) -> None:
    """Piecewise-linear activations go into the stores, transcendental ones run per segment."""
    case = (2, 5, 9, 11, 14, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    one, expected = _conv_case(rng, case, activation=activation, alpha=0.2, beta=0.7, residual=residual)
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3, 8, 64])
def test_channel_lanes_any_runs(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int, with_bias: bool
) -> None:
    """More threads split a panel's tiles into more runs: the result never changes."""
    monkeypatch.setattr(conv_lanes, "numba_thread_count", lambda: threads)
    case = (2, 16, 7, 7, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    one, expected = _conv_case(rng, case, activation="Relu", residual="post", with_bias=with_bias)
    assert_close(one.run_tactic(TACTIC), expected)


def test_task_split() -> None:
    # A 7 x 7 map at batch 1 (4 tiles), 512 channels (16 panels): one run, weights read once.
    assert conv_lanes.task_split(1, 512, 7, 7, 2) == 1
    # 64 channels (2 panels) of a 56 x 56 map: 224 tiles in runs of at most 32.
    assert conv_lanes.task_split(1, 64, 56, 56, 2) == 7
    # A tiny map never gets more runs than tiles.
    assert conv_lanes.task_split(1, 32, 2, 3, 64) == 1


def test_channel_lanes_is_offered_only_where_asked(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = _conv_case(rng, DENSE[0])
    assert get_tactic(TACTIC).supports(one.node, one.graph)
    monkeypatch.setattr(conv_lanes, "OFFERED", False)
    assert not get_tactic(TACTIC).supports(one.node, one.graph)
    monkeypatch.setattr(conv_lanes, "OFFERED", True)
    grouped, _ = _conv_case(rng, next(c for c in CASES if c[-1] > 1))
    assert not get_tactic(TACTIC).supports(grouped.node, grouped.graph)
    pointwise, _ = _conv_case(rng, next(c for c in CASES if c[5] == (1, 1) and c[6] == (1, 1) and c[-1] == 1))
    assert not get_tactic(TACTIC).supports(pointwise.node, pointwise.graph)
    strided, _ = _conv_case(rng, STRIDED_POINTWISE_CASES[0])
    assert get_tactic(TACTIC).supports(strided.node, strided.graph)


def test_channel_lanes_new_input_size_with_the_same_prepared(rng: np.random.Generator) -> None:
    """A dynamic batch and spatial size: the plan, runs and phase buffer follow the run's shape."""
    case = (1, 6, 20, 24, 13, (3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 1)
    one, expected = _conv_case(rng, case, activation="Relu")
    tactic = get_tactic(TACTIC)
    prepared = tactic.prepare(one.node, one.graph)
    inputs = [None if i in prepared.replaces else a for i, a in enumerate(one.arrays())]
    out = np.empty(expected.shape, np.float32)
    tactic.run(one.node, inputs, [out], prepared)
    assert_close(out, expected)
    x = rng.standard_normal((3, 6, 11, 37)).astype(np.float32)
    w, b = one.arrays()[1], one.arrays()[2]
    want = np.maximum(conv_oracle(x, w, b, case[6], case[7], case[8], 1), 0.0)
    small = np.empty(want.shape, np.float32)
    tactic.run(one.node, [x, *inputs[1:]], [small], prepared)
    assert_close(small, want)


def test_pack_lanes_is_aligned_and_zero_padded(rng: np.random.Generator) -> None:
    w = rng.standard_normal((40, 9)).astype(np.float32)
    panels = pack_lanes(w)
    assert panels.ctypes.data % 64 == 0
    as3 = panels.reshape(2, 9, 32)
    np.testing.assert_array_equal(as3[0].T, w[:32])
    np.testing.assert_array_equal(as3[1, :, :8].T, w[32:])
    assert not as3[1, :, 8:].any()


@pytest.mark.parametrize(("acc", "ahead"), [(False, 0), (True, 0), (False, 256 * 32), (True, 1 << 22)])
def test_lane_tiles_agree_with_numpy(rng: np.random.Generator, acc: bool, ahead: int) -> None:
    """Both tile forms: rows from two segments a gap apart (or one), K rows through an offset
    table, added to the tile's old values when ``acc``; ``ahead`` > 0 prefetches the weight
    that far on (past the panel here), which must change nothing."""
    k = 23
    x = rng.standard_normal(500).astype(np.float32)
    offs = rng.integers(0, 300, k).astype(np.int64)
    w = rng.standard_normal((k, 32)).astype(np.float32)
    xo, gap = 11, 130
    rows = np.stack([x[xo + offs + j] for j in range(7)] + [x[xo + gap + offs + j] for j in range(7)])
    old = rng.standard_normal((14, 32)).astype(np.float32)
    want = rows.astype(np.float64) @ w + (old if acc else 0.0)
    got = old.copy().reshape(-1)
    tile_14x32(x, xo, gap, offs, 0, k, w.reshape(-1), 0, got, 0, acc, ahead)
    np.testing.assert_allclose(got.reshape(14, 32), want, rtol=1e-5, atol=1e-5)
    one = np.full(14 * 32, np.nan, np.float32)
    one[: 7 * 32] = old[:7].reshape(-1)
    tile_7x32(x, xo, offs, 0, k, w.reshape(-1), 0, one, 0, acc, ahead)
    np.testing.assert_allclose(one[: 7 * 32].reshape(7, 32), want[:7], rtol=1e-5, atol=1e-5)
    assert np.isnan(one[7 * 32 :]).all()
