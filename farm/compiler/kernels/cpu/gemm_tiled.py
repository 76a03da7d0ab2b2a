"""GEMM as output tiles in one thread pool: BLAS product and fused epilogue of a tile on one core.

``cpu.gemm.tiled`` computes ``out[M, N] = epilogue(A[M, K] @ W[K, N])`` (FusedGemm or MatMul with
a constant 2-D weight; A's leading axes are rows) as tiles of ``tile_m`` rows x ``tile_n``
columns run by one numba ``prange``. Each task multiplies its rows by its weight columns with
single-threaded BLAS called from numba (``_blas.sgemm_tile``), then applies bias, residual and
activation to its rows while they are in cache. ``cpu.gemm.blas`` instead runs the product in
OpenBLAS's pool and the epilogue in numba's, reading the output twice and handing the cores from
one pool to the other twice per layer. Column tiles bound the weight panel a task streams
(:data:`PANEL_BYTES`); row tiles then give every thread at least two tasks.

Pool: numba's only (BLAS must be held to one thread: :func:`~._threads.blas_single_thread`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu import _blas
from farm.compiler.kernels.cpu._epilogue import RES_NONE, finish_row, residual_rows
from farm.compiler.kernels.cpu._operands import RunsBound, dense, float32_io
from farm.compiler.kernels.cpu._threads import blas_single_thread_call, numba_thread_count
from farm.compiler.kernels.cpu.gemm import (
    GEMM_OPS,
    _cached_weight,
    _const_2d_weight,
    _epilogue_operands,
    _prepare_weight,
    rows_at_least,
)
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# The weight columns of one task are kept under this many bytes (half of a 512 KiB-1 MiB L2).
PANEL_BYTES = 256 * 1024
MIN_ROWS = 16  # fewer rows go to the few-rows tactics (dot_rows, small_rows)
MIN_TILE_N = 64


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def gemm_tiles(a, w, out, bias, has_bias, residual, res_mode, act, alpha, beta, tile_m, tile_n):
    """``out = epilogue(a @ w)`` with a [M, K], w [K, N], out [M, N], tile by tile; ``residual``
    is [M, N] or a dummy, ``bias`` [N] or a dummy."""
    m, k = a.shape
    n = w.shape[1]
    mblocks = (m + tile_m - 1) // tile_m
    nblocks = (n + tile_n - 1) // tile_n
    for t in prange(mblocks * nblocks):
        i0 = (t // nblocks) * tile_m
        j0 = (t % nblocks) * tile_n
        rows = min(tile_m, m - i0)
        cols = min(tile_n, n - j0)
        _blas.sgemm_tile(a, i0, w, 0, j0, out, i0, j0, rows, cols, k, 0.0)
        if not has_bias and act == 0 and res_mode == RES_NONE:
            continue
        b = bias[j0 : j0 + cols] if has_bias else bias
        for i in range(i0, i0 + rows):
            res = residual[i, j0 : j0 + cols] if res_mode != RES_NONE else residual[0]
            finish_row(
                out[i, j0 : j0 + cols],
                np.float32(0.0),
                b,
                2 if has_bias else 0,
                res,
                res_mode,
                act,
                alpha,
                beta,
            )


def tile_shape(m: int, n: int, k: int, threads: int) -> tuple[int, int]:
    """(tile_m, tile_n): equal column tiles whose weight panel fits :data:`PANEL_BYTES` (at least
    :data:`MIN_TILE_N` columns), then equal row tiles (at least 8 rows) until every thread has at
    least two tasks, then narrower column tiles if rows alone cannot give that."""
    want = 2 * max(threads, 1)
    nblocks = max(1, min(-(-n * k * 4 // PANEL_BYTES), n // MIN_TILE_N))
    mblocks = max(1, min(-(-want // nblocks), m // 8))
    while mblocks * nblocks < want and n // (nblocks + 1) >= MIN_TILE_N // 2:
        nblocks += 1
    return -(-m // mblocks), -(-n // nblocks)


@register_tactic
class TiledGemm(RunsBound, Tactic):
    """BLAS product + fused epilogue per output tile, all tiles in numba's pool (M >= 16 rows)."""

    name = "cpu.gemm.tiled"
    op_types = GEMM_OPS
    priority = 12

    def supports(self, node: Node, graph: Graph) -> bool:
        if not _blas.AVAILABLE or not float32_io(node, graph) or _const_2d_weight(node, graph) is None:
            return False
        return rows_at_least(node, graph, MIN_ROWS)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return _prepare_weight(node, graph, "kn")

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The tile kernel on these arrays. Without ``copies`` (the runtime's binding), None
        when A or the residual would have to be copied first or the bias is a run-time input."""
        a, out = inputs[0], outputs[0]
        assert a is not None
        w = _cached_weight(prepared)
        k, n = w.shape
        bias, has_bias, act, alpha, beta, mode = _epilogue_operands(node, inputs, prepared, n)
        if not copies and (
            not dense(a)
            or "epilogue" not in prepared.scratch
            or (mode != RES_NONE and not dense(inputs[3], out.shape))
        ):
            return None
        a2 = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, k)
        m = a2.shape[0]
        residual = residual_rows(inputs[3] if mode != RES_NONE else None, out.shape, m)
        tile_m, tile_n = tile_shape(m, n, k, numba_thread_count())
        args = (a2, w, out.reshape(m, n), bias, has_bias, residual, mode, act, alpha, beta, tile_m, tile_n)
        return blas_single_thread_call(functools.partial(gemm_tiles, *args))
