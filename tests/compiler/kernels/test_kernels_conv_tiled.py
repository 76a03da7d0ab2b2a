"""``cpu.conv.tiled_gemm`` (im2col + BLAS + epilogue per output tile, BLAS called from numba) and
``cpu.conv.im2col_tiles`` (the image's im2col first, then channel tiles) against a direct float64
convolution: geometries, tile boundaries, channel tiles, epilogues."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close
from test_kernels_conv import CASES, _conv_case, conv_oracle

from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu import _blas, conv_tiled

TACTIC = "cpu.conv.tiled_gemm"
TACTICS = [TACTIC, "cpu.conv.im2col_tiles"]
DENSE = [c for c in CASES if c[-1] == 1]
# (N, C, H, W, M, kernel, strides, pads, dilations, group): wide enough for several tiles
TILE_CASES = [
    (1, 8, 30, 29, 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (3, 5, 23, 31, 37, (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 1),
    (2, 12, 17, 19, 33, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # direct: no im2col
    (1, 6, 40, 9, 18, (5, 3), (1, 2), (2, 1, 2, 1), (2, 1), 1),
    (2, 7, 16, 16, 9, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),  # 1x1 strided: im2col
]


def test_blas_symbol_found() -> None:
    """numpy's BLAS exposes a CBLAS sgemm the tactic can call (else it would always decline)."""
    assert _blas.AVAILABLE and _blas.INT_BITS in (32, 64)


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize("case", DENSE)
def test_tiled_conv_matches_oracle(rng: np.random.Generator, case: tuple, tactic: str) -> None:
    one, expected = _conv_case(rng, case, activation="LeakyRelu", alpha=0.1, residual="pre")
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("case", TILE_CASES)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("tile_bytes", [conv_tiled.TILE_BYTES, 600])
def test_tiled_conv_across_tiles(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple,
    residual: str | None,
    tile_bytes: int,
) -> None:
    """Small ``TILE_BYTES`` forces many pixel tiles whose edges fall mid-row."""
    monkeypatch.setattr(conv_tiled, "TILE_BYTES", tile_bytes)
    activation = "HardSwish" if residual else "Clip"
    one, expected = _conv_case(rng, case, activation=activation, alpha=-1.0, beta=2.0, residual=residual)
    assert_close(one.run_tactic(TACTIC), expected)


def test_tile_shape_splits_for_every_thread() -> None:
    # A 7x7 map at batch 1: three pixel tiles of at least 16 pixels, then channel halves.
    assert conv_tiled.tile_shape(1, 512, 4608, 49, 2) == (17, 256)
    # A big map: equal pixel tiles sized to the budget, no channel split.
    tile_p, tile_m = conv_tiled.tile_shape(1, 64, 576, 3136, 2)
    assert tile_m == 64 and 4 * 576 * tile_p <= conv_tiled.TILE_BYTES and 3136 % tile_p == 0
    # Batch 8 of the 7x7 map: enough tasks from the pixel tiles alone, no channel split.
    assert conv_tiled.tile_shape(8, 512, 4608, 49, 2) == (17, 512)


def test_channel_tiles(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few pixels and many channels: tiles split the output channels and recompute columns."""
    case = (1, 9, 5, 5, 70, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    monkeypatch.setattr(conv_tiled, "tile_shape", lambda n, m, k, p, threads: (16, 17))
    one, expected = _conv_case(rng, case, activation="Relu", residual="post")
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("case", TILE_CASES)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("tiles", [None, (16, 16), (7, 32)])
def test_im2col_tiles_across_tiles(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, case: tuple, residual: str | None,
    tiles: tuple[int, int] | None,
) -> None:  # fmt: skip
    """The image's columns first, then (pixel, channel) tiles of every shape; per-image residual
    slices at batch > 1."""
    if tiles is not None:
        monkeypatch.setattr(conv_tiled, "pool_tile_shape", lambda m, p, threads: tiles)
    activation = "HardSwish" if residual else "Clip"
    one, expected = _conv_case(rng, case, activation=activation, alpha=-1.0, beta=2.0, residual=residual)
    assert_close(one.run_tactic("cpu.conv.im2col_tiles"), expected)


def test_pool_tile_shape_splits_channels_first() -> None:
    # ResNet-18's 512-channel 3x3 convs at batch 1: four 128-channel tiles over all 49 pixels.
    assert conv_tiled.pool_tile_shape(512, 49, 2) == (49, 128)
    # Few channels, a big map: pixel tiles make up the tasks.
    tile_p, tile_m = conv_tiled.pool_tile_shape(40, 3136, 2)
    assert tile_m == 40 and tile_p * 4 >= 3136 and tile_p >= 64
    # One thread: two channel tiles.
    assert conv_tiled.pool_tile_shape(64, 100, 1) == (100, 32)


@pytest.mark.parametrize("tactic", TACTICS)
def test_tiled_conv_runtime_weights_no_bias_1d(rng: np.random.Generator, tactic: str) -> None:
    """Weight fed at run time (not packed in ``prepare``), no bias, a 1-D conv, batch 2."""
    x = rng.standard_normal((2, 6, 41)).astype(np.float32)
    w = rng.standard_normal((11, 6, 5)).astype(np.float32)
    attrs = {"kernel_shape": [5], "strides": [2], "pads": [2, 1], "dilations": [2], "group": 1}
    z = conv_oracle(x[:, :, None, :], w[:, :, None, :], None, (1, 2), (0, 2, 0, 1), (1, 2), 1)[:, :, 0, :]
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w)
    one.build(z.shape)
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


@pytest.mark.parametrize("tactic", TACTICS)
def test_tiled_conv_declines_grouped(rng: np.random.Generator, tactic: str) -> None:
    grouped, _ = _conv_case(rng, CASES[3])
    assert not get_tactic(tactic).supports(grouped.node, grouped.graph)
