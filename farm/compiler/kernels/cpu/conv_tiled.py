"""Conv as output tiles in one thread pool: im2col, GEMM and epilogue of a tile on one core.

``cpu.conv.tiled_gemm`` splits a conv's output [N, M, Ho*Wo] into tiles of ``tile_m`` output
channels x ``tile_p`` output pixels of one image. One numba ``prange`` runs the tiles; each task

1. builds the im2col columns of its pixels only ([C*kh*kw, tile_p], sized to stay in L2),
   skipped for a 1x1 stride-1 unpadded conv, whose input already is that matrix;
2. multiplies its weight rows by them with single-threaded BLAS called from numba
   (``_blas.sgemm_tile``), straight into the NCHW output;
3. applies bias, residual and activation (``finish_row``) to its rows while they are in cache.

Unlike the ``im2col_gemm`` family (numba's pool for im2col and the epilogue, OpenBLAS's pool for
the GEMM, one after the other, the output read again by the epilogue), every core stays in one
pool for the whole layer. Channel tiles (``tile_m < M``) only appear when pixel tiles alone would
leave a core idle (late layers: 7x7 maps at batch 1); they recompute their pixels' columns.

Any kernel size, stride, dilation and asymmetric padding; group 1; 1-D convs as height-1 2-D.
Pool: numba's only (BLAS must be held to one thread: :func:`~._threads.blas_single_thread`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu import _blas
from farm.compiler.kernels.cpu._epilogue import RES_NONE, epilogue_params, finish_row, residual_rows
from farm.compiler.kernels.cpu._operands import RunsBound, dense, in_order, memo, workspace
from farm.compiler.kernels.cpu._threads import blas_single_thread_call, numba_thread_count
from farm.compiler.kernels.cpu._windows import copy_window, valid_columns
from farm.compiler.kernels.cpu.conv import ConvGeometry, _as_4d, _GemmConvBase, _out_4d, im2col
from farm.compiler.kernels.registry import Prepared, register_tactic

# im2col columns of one tile are kept under this many bytes (half of a 512 KiB-1 MiB L2).
TILE_BYTES = 256 * 1024
MIN_TILE_P = 16


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _im2col_tile(x, n, cols, p0, width, kh, kw, sh, sw, pt, pl, dh, dw, wo):
    """cols[r, q] = x[n, c, iy, ix] of output pixel p0 + q and kernel row r = (c*kh + i)*kw + j
    (0 outside the image), for q < width."""
    c_count, h, w = x.shape[1], x.shape[2], x.shape[3]
    taps = kh * kw
    for r in range(c_count * taps):
        c = r // taps
        i = (r // kw) % kh
        j = r % kw
        off_x = j * dw - pl
        plane = x[n, c]
        dst_row = cols[r]
        q = 0
        while q < width:
            p = p0 + q
            oy = p // wo
            ox0 = p - oy * wo
            span = min(wo - ox0, width - q)
            dst = dst_row[q : q + span]
            iy = oy * sh - pt + i * dh
            if iy < 0 or iy >= h:
                for t in range(span):
                    dst[t] = 0.0
            else:
                lo, hi = valid_columns(off_x, sw, w, wo)
                lo = min(max(lo - ox0, 0), span)
                hi = min(max(hi - ox0, lo), span)
                for t in range(lo):
                    dst[t] = 0.0
                copy_window(dst[lo:hi], plane[iy], (ox0 + lo) * sw + off_x, sw)
                for t in range(hi, span):
                    dst[t] = 0.0
            q += span


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def conv_tiles(
    x, w, bias, has_bias, residual, res_mode, act, alpha, beta, out,
    kh, kw, sh, sw, pt, pl, dh, dw, wo, tile_p, tile_m, direct,
):  # fmt: skip
    """Conv of x [N, C, H, W] with w [M, C*kh*kw] into out [N*M, Ho*Wo] (NCHW rows), tile by tile.

    ``residual`` is [N*M, Ho*Wo] or a dummy; ``direct``: 1x1 stride 1 unpadded (no im2col).
    """
    n_count, c_count = x.shape[0], x.shape[1]
    m_count, k = w.shape
    p_count = out.shape[1]
    pblocks = (p_count + tile_p - 1) // tile_p
    mblocks = (m_count + tile_m - 1) // tile_m
    per_image = pblocks * mblocks
    x_rows = x.reshape(n_count * c_count, -1)
    for t in prange(n_count * per_image):
        n = t // per_image
        pb = (t % per_image) // mblocks
        mb = t % mblocks
        p0 = pb * tile_p
        width = min(tile_p, p_count - p0)
        m0 = mb * tile_m
        rows = min(tile_m, m_count - m0)
        if direct:
            _blas.sgemm_tile(w, m0, x_rows, n * c_count, p0, out, n * m_count + m0, p0, rows, width, k, 0.0)
        else:
            cols = np.empty((k, width), np.float32)
            _im2col_tile(x, n, cols, p0, width, kh, kw, sh, sw, pt, pl, dh, dw, wo)
            _blas.sgemm_tile(w, m0, cols, 0, 0, out, n * m_count + m0, p0, rows, width, k, 0.0)
        for mm in range(m0, m0 + rows):
            r = n * m_count + mm
            row = out[r, p0 : p0 + width]
            b = bias[mm] if has_bias else np.float32(0.0)
            res = residual[r, p0 : p0 + width] if res_mode != RES_NONE else residual[0]
            finish_row(row, b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


def tile_shape(n: int, m: int, k: int, p: int, threads: int) -> tuple[int, int]:
    """(tile_p, tile_m): equal pixel tiles whose columns fit :data:`TILE_BYTES`, more of them
    (down to :data:`MIN_TILE_P` pixels) when there are fewer than two tasks per thread, and then
    channel tiles (at least 16 channels) if that is still too few."""
    want = 2 * max(threads, 1)
    budget = max(MIN_TILE_P, TILE_BYTES // (4 * max(k, 1)))
    blocks = max(-(-p // budget), -(-want // n))
    blocks = max(1, min(blocks, p // MIN_TILE_P))
    tile_p = -(-p // blocks)
    tile_m = m
    if n * blocks < want:
        tile_m = max(16, -(-m // -(-want // (n * blocks))))
    return tile_p, min(tile_m, m)


@register_tactic
class TiledGemmConv(RunsBound, _GemmConvBase):
    """im2col + single-threaded BLAS + epilogue per output tile, all tiles in numba's pool."""

    name = "cpu.conv.tiled_gemm"
    priority = 12
    needs_blas: ClassVar[bool] = True  # False for a subclass whose ``_conv`` makes no BLAS call

    def supports(self, node: Node, graph: Graph) -> bool:
        if (self.needs_blas and not _blas.AVAILABLE) or not super().supports(node, graph):
            return False
        w = graph.values[node.input(1)]
        return ConvGeometry.of(node, w.shape).group == 1  # type: ignore[arg-type]

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The conv's kernels on these arrays. Without ``copies`` (the runtime's binding), None
        when the input or the residual would have to be copied first or the weight or bias is
        a run-time input."""
        geo, weight, bias, has_bias = self.operands(node, inputs, prepared)
        residual_in = inputs[3] if len(inputs) > 3 else None
        if not copies and (
            "operands" not in prepared.scratch
            or not dense(inputs[0])
            or (residual_in is not None and not dense(residual_in, outputs[0].shape))
        ):
            return None
        x = np.ascontiguousarray(_as_4d(inputs[0]), dtype=np.float32)  # type: ignore[arg-type]
        out = _out_4d(outputs[0])
        n, m = out.shape[0], out.shape[1]
        epilogue = memo(prepared, "epilogue", lambda: epilogue_params(node))
        residual = residual_rows(residual_in, outputs[0].shape, n * m)
        call = self._conv(prepared, geo, x, weight.reshape(m, -1), bias, has_bias, residual, epilogue, out)
        return blas_single_thread_call(call) if self.needs_blas else call

    def _conv(
        self, prepared: Prepared, geo: ConvGeometry, x: np.ndarray, w2: np.ndarray, bias: np.ndarray,
        has_bias: bool, residual: np.ndarray, epilogue: tuple[int, float, float, int], out: np.ndarray,
    ) -> Callable[[], None]:  # fmt: skip
        """The call that convolves x [N, C, H, W] into out [N, M, Ho, Wo] with the weight as
        [M, K] (run with BLAS held to one thread)."""
        n, m, ho, wo = out.shape
        p = ho * wo
        k = w2.shape[1]
        threads = numba_thread_count()
        tile_p, tile_m = memo(prepared, ("tiles", n, p, threads), lambda: tile_shape(n, m, k, p, threads))
        direct = (geo.kh, geo.kw, geo.sh, geo.sw) == (1, 1, 1, 1) and not any(
            (geo.pad_top, geo.pad_left, geo.pad_bottom, geo.pad_right)
        )
        act, alpha, beta, mode = epilogue
        return functools.partial(
            conv_tiles,
            x, w2, bias, has_bias, residual, mode, act, alpha, beta, out.reshape(n * m, p),
            geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw, wo,
            tile_p, tile_m, direct,
        )  # fmt: skip


# Channel tiles of the im2col-then-tiles form: at least this many output channels each.
MIN_POOL_TILE_M = 32


def pool_tile_shape(m: int, p: int, threads: int) -> tuple[int, int]:
    """(tile_p, tile_m) for a GEMM [M, K] x [K, P] whose B is already in memory: channel tiles
    first (each task streams a slice of the weight against all of B, the wide GEMM BLAS runs
    best), multiples of 16 channels, at least two tasks per thread; then pixel tiles of at least
    64 pixels if the channels alone cannot give that many."""
    want = 2 * max(threads, 1)
    mblocks = max(1, min(want, m // MIN_POOL_TILE_M))
    tile_m = -(-m // mblocks)
    tile_m = min(m, -(-tile_m // 16) * 16)
    mblocks = -(-m // tile_m)
    pblocks = max(1, min(-(-want // mblocks), p // 64))
    return -(-p // pblocks), tile_m


@register_tactic
class Im2colTilesConv(TiledGemmConv):
    """im2col of the whole image first (numba's pool), then the GEMM and epilogue as output tiles
    in numba's pool, split over output channels (``conv_tiles`` on the columns as a 1x1 input).

    ``tiled_gemm`` builds each tile's columns itself, which for a late layer (7x7 map, 4,608-deep
    columns) meant 17-pixel tiles, columns rebuilt per channel tile, and BLAS on 17-column panels:
    3.1 ms for ResNet-18's 512-channel 3x3 convs at batch 1 where single-threaded BLAS on the
    whole image took 2.3 ms. Here every task multiplies a slice of the weight by all the image's
    columns. Pool: numba's only (BLAS held to one thread)."""

    name = "cpu.conv.im2col_tiles"
    priority = 11

    def _conv(
        self, prepared: Prepared, geo: ConvGeometry, x: np.ndarray, w2: np.ndarray, bias: np.ndarray,
        has_bias: bool, residual: np.ndarray, epilogue: tuple[int, float, float, int], out: np.ndarray,
    ) -> Callable[[], None]:  # fmt: skip
        n, m, ho, wo = out.shape
        p = ho * wo
        k = w2.shape[1]
        threads = numba_thread_count()
        tile_p, tile_m = memo(prepared, ("tiles", p, threads), lambda: pool_tile_shape(m, p, threads))
        cols = workspace(prepared, "cols", (k, p))
        act, alpha, beta, mode = epilogue
        rows = out.reshape(n * m, p)
        calls: list[Callable[[], None]] = []
        for image in range(n):
            calls.append(functools.partial(
                im2col, x, cols, image, geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left,
                geo.dh, geo.dw, ho, wo,
            ))  # fmt: skip
            image_residual = residual[image * m : (image + 1) * m] if mode != RES_NONE else residual
            calls.append(functools.partial(
                conv_tiles,
                cols.reshape(1, k, 1, p), w2, bias, has_bias, image_residual, mode, act, alpha, beta,
                rows[image * m : (image + 1) * m], 1, 1, 1, 1, 0, 0, 1, 1, p, tile_p, tile_m, 1,
            ))  # fmt: skip
        return in_order(*calls)
