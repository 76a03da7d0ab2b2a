"""``cpu.gemm.packed16`` (our 12 x 32 micro-kernel on prepacked weight panels) against float64
numpy matmul with fused.py's epilogue: row and column tails, K blocks, every epilogue, MatMul,
declines. The micro-kernel itself is checked in both of its forms, the one-pass AVX-512 tile and
the four 6 x 16 quarters AVX2 hosts run, whichever host runs the tests."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close
from numba import njit
from test_kernels_gemm import _fused_gemm

from farm.compiler.ir import ACTIVATIONS
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu import _microgemm, gemm_packed

TACTIC = "cpu.gemm.packed16"


@njit(cache=False)
def _zmm_tile(ap, ao, bp, bo, offs, o0, kc, c, co, ldc, acc):
    _microgemm._tile_12x32_zmm(ap, ao, _microgemm.MR, bp, bo, offs, o0, kc, c, co, ldc, acc)


@njit(cache=False)
def _quarters_tile(ap, ao, bp, bo, offs, o0, kc, c, co, ldc, acc):
    _microgemm._quarter_6x16(ap, ao, bp, bo, offs, o0, kc, c, co, ldc, acc)
    _microgemm._quarter_6x16(ap, ao, bp, bo + 16, offs, o0, kc, c, co + 16, ldc, acc)
    _microgemm._quarter_6x16(ap, ao + 6, bp, bo, offs, o0, kc, c, co + 6 * ldc, ldc, acc)
    _microgemm._quarter_6x16(ap, ao + 6, bp, bo + 16, offs, o0, kc, c, co + 6 * ldc + 16, ldc, acc)


@pytest.mark.parametrize(
    ("a_shape", "n", "trans_b", "activation", "residual"),
    [
        ((4, 5, 64), 130, 1, "Relu", "pre"),  # 20 rows: one full and one partial row tile
        ((30, 300), 200, 1, "Tanh", "post"),  # K = 300: a full and a partial K block
        ((1, 128, 256), 768, 0, "Gelu", None),  # BERT's QKV projection
        ((128, 1024), 256, 0, "", "post"),  # BERT's output projection: four K blocks
        ((197, 192), 576, 1, "", "post"),  # ViT: 197 rows, 16 full row tiles and 5 rows
        ((2, 9, 17), 1000, 0, "HardSwish", "pre"),  # K = 17, N = 1000 (a 8-column last panel)
    ],
)
def test_packed_gemm_matches_oracle(
    rng: np.random.Generator, a_shape: tuple, n: int, trans_b: int, activation: str, residual: str | None
) -> None:
    one, expected = _fused_gemm(rng, a_shape, n, trans_b=trans_b, activation=activation, residual=residual)
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_packed_gemm_every_activation_with_tails(rng: np.random.Generator, activation: str) -> None:
    one, expected = _fused_gemm(rng, (25, 40), 45, activation=activation, residual="post")
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_packed_gemm_any_task_split(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """The task split only changes which core runs a tile: every split gives the same result."""
    monkeypatch.setattr(gemm_packed, "numba_thread_count", lambda: threads)
    one, expected = _fused_gemm(rng, (50, 260), 70, activation="Relu", residual="pre")
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("a_shape", "n", "activation", "residual"),
    [
        ((2, 100, 300), 70, "Relu", "pre"),  # 17 row tiles, the last of 8 rows; K blocks; N tail
        ((197, 192), 96, "Gelu", "post"),  # a row activation after the product
        ((61, 40), 32, "", None),  # 6 row tiles: a run shorter than the others
    ],
)
def test_packed_gemm_own_runs(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    a_shape: tuple,
    n: int,
    activation: str,
    residual: str | None,
) -> None:
    """``gemm_runs`` (each thread packs its own runs of A), forced on small shapes: tiny runs, row
    tiles split unevenly between the threads, edge tiles, every epilogue path."""
    monkeypatch.setattr(gemm_packed, "numba_thread_count", lambda: threads)
    monkeypatch.setattr(gemm_packed, "A_CHUNK_BYTES", 4096)
    monkeypatch.setattr(gemm_packed, "OWN_RUNS_FROM", 1)
    calls: list[int] = []
    runs = gemm_packed.gemm_runs
    monkeypatch.setattr(gemm_packed, "gemm_runs", lambda *args: calls.append(1) or runs(*args))
    one, expected = _fused_gemm(rng, a_shape, n, activation=activation, residual=residual)
    assert_close(one.run_tactic(TACTIC), expected)
    assert calls  # the own-runs path ran


def test_packed_gemm_without_bias_and_plain_matmul(rng: np.random.Generator) -> None:
    one, expected = _fused_gemm(rng, (40, 33), 70, activation="", residual=None, with_bias=False)
    assert_close(one.run_tactic(TACTIC), expected)
    a = rng.standard_normal((2, 20, 48)).astype(np.float32)
    w = rng.standard_normal((48, 90)).astype(np.float32)
    mm = OneNode("MatMul", {}).feed("a", a).feed("w", w, const=True)
    mm.build((2, 20, 90))
    assert_close(mm.run_tactic(TACTIC), mm.expected(lambda *_: a.astype(np.float64) @ w))


@pytest.mark.parametrize(
    "tile", [_microgemm.tile_12x32, _zmm_tile, _quarters_tile], ids=["host", "zmm", "quarters"]
)
def test_micro_kernel_accumulates_k_blocks(rng: np.random.Generator, tile) -> None:  # type: ignore[no-untyped-def]
    """The 12 x 32 tile (as this host runs it, and each of its two forms) over two K blocks (the
    second with ``acc``) equals one pass over all of K and numpy, and the packers lay panels out
    as documented (zeros past the edges)."""
    a = rng.standard_normal((7, 40)).astype(np.float32)
    w = rng.standard_normal((40, 20)).astype(np.float32)
    ap = np.empty(40 * _microgemm.MR, np.float32)
    _microgemm.pack_row_panel(a, 0, 7, ap, 0)
    assert np.array_equal(ap.reshape(40, 12)[:, :7], a.T) and not ap.reshape(40, 12)[:, 7:].any()
    wp = _microgemm.pack_cols(w)
    assert np.array_equal(wp.reshape(40, 32)[:, :20], w) and not wp.reshape(40, 32)[:, 20:].any()
    offs = _microgemm.panel_offsets(40)
    whole = np.full(12 * 32, np.nan, np.float32)
    tile(ap, 0, wp, 0, offs, 0, 40, whole, 0, 32, False)
    split = np.full(12 * 32, np.nan, np.float32)
    tile(ap, 0, wp, 0, offs, 0, 25, split, 0, 32, False)
    tile(ap, 25 * 12, wp, 0, offs, 25, 15, split, 0, 32, True)
    want = a.astype(np.float64) @ w
    assert np.allclose(whole.reshape(12, 32)[:7, :20], want, rtol=1e-5, atol=1e-4)
    assert not whole.reshape(12, 32)[7:].any() and not whole.reshape(12, 32)[:, 20:].any()
    assert np.allclose(split, whole, rtol=1e-5, atol=1e-5)
    rows = _microgemm.pack_rows(a)
    assert np.array_equal(rows, ap)


@pytest.mark.parametrize(("m", "k"), [(197, 768), (24, 37), (12, 16), (13, 48), (5, 9), (36, 15)])
def test_row_panels_match_the_layout(rng: np.random.Generator, m: int, k: int) -> None:
    """``pack_row_panels`` (whole panels 16 columns at a time through register transposes, the
    column tail and short panels element by element) against the layout written in numpy:
    ``[ceil(M/12), K, 12]``, zero rows past M."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    got = np.full(-(-m // 12) * k * 12, np.nan, np.float32)
    _microgemm.pack_row_panels(a, got)
    padded = np.zeros((-(-m // 12) * 12, k), np.float32)
    padded[:m] = a
    assert np.array_equal(got, padded.reshape(-1, 12, k).transpose(0, 2, 1).reshape(-1))


def test_row_chunks_give_every_thread_work() -> None:
    # BERT's output projection at batch 1 is 8 column panels: four tasks per thread on two
    # cores, row panels split in two on four cores.
    assert gemm_packed.row_chunks(128, 256, 1024, 2) == 1
    assert gemm_packed.row_chunks(128, 256, 1024, 4) == 2
    assert gemm_packed.row_chunks(128, 768, 256, 2) == 1  # 24 panels are enough
    assert gemm_packed.row_chunks(12, 32, 64, 8) == 1  # never more chunks than row panels
    # Batch 8 (1,024 rows of 1,024): runs of A small enough to stay in L2.
    assert gemm_packed.row_chunks(1024, 256, 1024, 2) == 8


def test_packed_gemm_declines_few_rows_and_runtime_weights(rng: np.random.Generator) -> None:
    few, _ = _fused_gemm(rng, (4, 64), 32)
    assert not get_tactic(TACTIC).supports(few.node, few.graph)
    a = rng.standard_normal((32, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    runtime = OneNode("MatMul", {}).feed("a", a).feed("w", w)
    runtime.build((32, 5))
    assert not get_tactic(TACTIC).supports(runtime.node, runtime.graph)
    many, _ = _fused_gemm(rng, (64, 64), 32)
    assert get_tactic(TACTIC).supports(many.node, many.graph)
