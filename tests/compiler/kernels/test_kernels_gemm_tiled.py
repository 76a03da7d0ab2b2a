"""``cpu.gemm.tiled`` (BLAS product + epilogue per output tile, BLAS called from numba) against
float64 numpy matmul with fused.py's epilogue: tile edges, epilogues, MatMul, declines."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close
from test_kernels_gemm import _fused_gemm

from farm.compiler.ir import ACTIVATIONS
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu import gemm_tiled

TACTIC = "cpu.gemm.tiled"


@pytest.mark.parametrize(
    ("a_shape", "n", "trans_b", "activation", "residual"),
    [
        ((4, 5, 64), 130, 1, "Relu", "pre"),
        ((30, 256), 200, 1, "Tanh", "post"),
        ((1, 128, 256), 768, 0, "Gelu", None),
        ((197, 192), 576, 1, "", "post"),
        ((2, 9, 17), 1000, 0, "HardSwish", "pre"),
    ],
)
def test_tiled_gemm_matches_oracle(
    rng: np.random.Generator, a_shape: tuple, n: int, trans_b: int, activation: str, residual: str | None
) -> None:
    one, expected = _fused_gemm(rng, a_shape, n, trans_b=trans_b, activation=activation, residual=residual)
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tiled_gemm_every_activation_small_tiles(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, activation: str
) -> None:
    """Tiles of 5 x 7 put edges everywhere: every row and column tail of the epilogue."""
    monkeypatch.setattr(gemm_tiled, "tile_shape", lambda m, n, k, threads: (5, 7))
    one, expected = _fused_gemm(rng, (23, 40), 31, activation=activation, residual="post")
    assert_close(one.run_tactic(TACTIC), expected)


def test_tiled_gemm_without_bias_and_plain_matmul(rng: np.random.Generator) -> None:
    one, expected = _fused_gemm(rng, (40, 33), 70, activation="", residual=None, with_bias=False)
    assert_close(one.run_tactic(TACTIC), expected)
    a = rng.standard_normal((2, 20, 48)).astype(np.float32)
    w = rng.standard_normal((48, 90)).astype(np.float32)
    mm = OneNode("MatMul", {}).feed("a", a).feed("w", w, const=True)
    mm.build((2, 20, 90))
    assert_close(mm.run_tactic(TACTIC), mm.expected(lambda *_: a.astype(np.float64) @ w))


def test_tile_shape_gives_every_thread_work() -> None:
    # BERT's QKV projection at batch 1: the weight panel splits the columns, rows split further.
    tile_m, tile_n = gemm_tiled.tile_shape(128, 768, 256, 2)
    assert -(-128 // tile_m) * -(-768 // tile_n) >= 4 and 256 * tile_n * 4 <= gemm_tiled.PANEL_BYTES
    # Few rows, narrow output: columns split below the panel size so both threads work.
    tile_m, tile_n = gemm_tiled.tile_shape(16, 256, 64, 2)
    assert -(-16 // tile_m) * -(-256 // tile_n) >= 4
    # One thread, a small GEMM: two row tiles (two tasks per thread), all columns.
    assert gemm_tiled.tile_shape(20, 30, 10, 1) == (10, 30)


def test_tiled_gemm_declines_few_rows_and_runtime_weights(rng: np.random.Generator) -> None:
    few, _ = _fused_gemm(rng, (4, 64), 32)
    assert not get_tactic(TACTIC).supports(few.node, few.graph)
    a = rng.standard_normal((32, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    runtime = OneNode("MatMul", {}).feed("a", a).feed("w", w)
    runtime.build((32, 5))
    assert not get_tactic(TACTIC).supports(runtime.node, runtime.graph)
