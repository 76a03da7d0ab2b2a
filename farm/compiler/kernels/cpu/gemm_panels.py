"""Few-rows GEMM on sixteen-column weight panels (``cpu.gemm.panel_rows``, ``..._1t``).

For a batch of 1-16 rows the product is bound by streaming the constant weight, not by the
multiply-adds. ``dot_rows`` reads it as [N, K] rows and ends every output with a horizontal sum;
here it is packed once as panels ``[ceil(N/16), K, 16]`` (panel ``p``, step ``k``: the 16
weights of columns ``16p .. 16p+15`` for input ``k``, zero-padded past N), so one step over K is
one broadcast of ``a[i, k]`` and one vector load per panel, and an output vector is finished in
its register (bias, activation and residual on the vector, :func:`~._epilogue.finish16`) and
stored once. Tiles are 4 rows x 4 panels (16 accumulators, 8 loads per 16 FMAs) or, for a lone
row, 1 row x 4 panels (5 loads per 4 FMAs); a partial tile recomputes a valid row or panel and
stores nothing for it.

``panel_rows`` gives each numba thread one contiguous range of panels (at least
:data:`MIN_PANELS_PER_PART`): numba's static schedule hands part ``t`` to thread ``t`` on every
run, so each core's slice of the weight stays in its own cache from run to run. ``panel_rows_1t``
runs on the calling thread (no pool wake-up: the better choice for small layers). Measured on the
2-core Xeon (AVX-512), alone, panels on a 64-byte line: 1x512x512 7.4 us against
``dot_rows_split``'s 13.1 and OpenBLAS's 16.0; 8x512x512 15.8 against 31.2 and 160. Offered where the CPU has AVX-512
(:data:`~._simd16.AVX512`). More rows than the tuner saw (a dynamic batch) run the same tiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    VECTOR_ACTS,
    finish16,
    finish_row,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    called_tile,
    vadd16,
    vbroadcast16,
    vfma16,
    vload16,
    vload16_masked,
    vzero16,
)
from farm.compiler.kernels.cpu._threads import numba_thread_count
from farm.compiler.kernels.cpu.gemm import DotRowsGemm
from farm.compiler.kernels.registry import Prepared, register_tactic

PANEL = 16  # columns per panel: one float32x16 vector
TILE_PANELS = 4  # panels per tile
# Fewest panels a thread gets (64 columns): below that a part's work is not worth the launch.
MIN_PANELS_PER_PART = 4


def pack_panels(w_nk: np.ndarray) -> np.ndarray:
    """[N, K] weight -> [ceil(N/16), K, 16] panels, zero-padded columns."""
    n, k = w_nk.shape
    blocks = -(-n // PANEL)
    padded = np.zeros((blocks * PANEL, k), dtype=np.float32)
    padded[:n] = w_nk
    return np.ascontiguousarray(padded.reshape(blocks, PANEL, k).transpose(0, 2, 1))


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _store(v, bias, has_bias, col, of, at, end, res, ep):
    """Bias (from column ``col``), then ``finish16``'s epilogue, on one output vector, its lanes
    before column ``end`` stored at of[at:] (none: a recomputed panel)."""
    count = min(max(end - col, 0), PANEL)
    if has_bias:
        v = vadd16(v, vload16_masked(bias, col, count))
    finish16(v, of, at, count, res, ep)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _store_row(c0, c1, c2, c3, bias, has_bias, col, of, at, end, res, ep):
    """One row's four tile vectors (columns col .. col+63) to of[at:]."""
    _store(c0, bias, has_bias, col, of, at, end, res, ep)
    _store(c1, bias, has_bias, col + PANEL, of, at + PANEL, end, res, ep)
    _store(c2, bias, has_bias, col + 2 * PANEL, of, at + 2 * PANEL, end, res, ep)
    _store(c3, bias, has_bias, col + 3 * PANEL, of, at + 3 * PANEL, end, res, ep)


@called_tile
def _tile_4x4(af, i0, i1, i2, i3, rows, wf, w0, w1, w2, w3, k, col, n, end, of, bias, has_bias, res, ep):
    """Rows i0..i3 of ``af`` ([M, k] flat; the first ``rows`` real, the others recomputed) times
    the panels at w0..w3 (k steps of 16), stored at columns col.. (before ``end``) of those rows
    (``n`` columns per output row).

    A :func:`~._simd16.called_tile`: inlined, compiling ``panel_gemm`` and ``panel_gemm_split``
    took 31 s and 87 s (cold kernel cache, 2-core Xeon), called 20 s and 4.5 s, and the few-rows
    GEMM runs in 0.54-1.00x the inlined one's time."""
    a0, a1, a2, a3 = i0 * k, i1 * k, i2 * k, i3 * k
    z = vzero16()
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    for q in range(k):
        p = PANEL * q
        v0 = vload16(wf, w0 + p)
        v1 = vload16(wf, w1 + p)
        v2 = vload16(wf, w2 + p)
        v3 = vload16(wf, w3 + p)
        x = vbroadcast16(af, a0 + q)
        c00 = vfma16(x, v0, c00)
        c01 = vfma16(x, v1, c01)
        c02 = vfma16(x, v2, c02)
        c03 = vfma16(x, v3, c03)
        x = vbroadcast16(af, a1 + q)
        c10 = vfma16(x, v0, c10)
        c11 = vfma16(x, v1, c11)
        c12 = vfma16(x, v2, c12)
        c13 = vfma16(x, v3, c13)
        x = vbroadcast16(af, a2 + q)
        c20 = vfma16(x, v0, c20)
        c21 = vfma16(x, v1, c21)
        c22 = vfma16(x, v2, c22)
        c23 = vfma16(x, v3, c23)
        x = vbroadcast16(af, a3 + q)
        c30 = vfma16(x, v0, c30)
        c31 = vfma16(x, v1, c31)
        c32 = vfma16(x, v2, c32)
        c33 = vfma16(x, v3, c33)
    _store_row(c00, c01, c02, c03, bias, has_bias, col, of, i0 * n + col, end, res, ep)
    if rows > 1:
        _store_row(c10, c11, c12, c13, bias, has_bias, col, of, i1 * n + col, end, res, ep)
    if rows > 2:
        _store_row(c20, c21, c22, c23, bias, has_bias, col, of, i2 * n + col, end, res, ep)
    if rows > 3:
        _store_row(c30, c31, c32, c33, bias, has_bias, col, of, i3 * n + col, end, res, ep)


@called_tile
def _tile_1x4(af, i0, wf, w0, w1, w2, w3, k, col, n, end, of, bias, has_bias, res, ep):
    """One row times four panels (see :func:`_tile_4x4`)."""
    a0 = i0 * k
    # Two sets of accumulators over even and odd steps: four FMA chains alone wait on the FMA
    # latency (4 cycles a step), eight are bound by the loads.
    z = vzero16()
    c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = z
    for q in range(0, k - 1, 2):
        p = PANEL * q
        x = vbroadcast16(af, a0 + q)
        c0 = vfma16(x, vload16(wf, w0 + p), c0)
        c1 = vfma16(x, vload16(wf, w1 + p), c1)
        c2 = vfma16(x, vload16(wf, w2 + p), c2)
        c3 = vfma16(x, vload16(wf, w3 + p), c3)
        x = vbroadcast16(af, a0 + q + 1)
        p += PANEL
        d0 = vfma16(x, vload16(wf, w0 + p), d0)
        d1 = vfma16(x, vload16(wf, w1 + p), d1)
        d2 = vfma16(x, vload16(wf, w2 + p), d2)
        d3 = vfma16(x, vload16(wf, w3 + p), d3)
    if k % 2:
        p = PANEL * (k - 1)
        x = vbroadcast16(af, a0 + k - 1)
        c0 = vfma16(x, vload16(wf, w0 + p), c0)
        c1 = vfma16(x, vload16(wf, w1 + p), c1)
        c2 = vfma16(x, vload16(wf, w2 + p), c2)
        c3 = vfma16(x, vload16(wf, w3 + p), c3)
    _store_row(vadd16(c0, d0), vadd16(c1, d1), vadd16(c2, d2), vadd16(c3, d3),
               bias, has_bias, col, of, i0 * n + col, end, res, ep)  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _panel_range(a, panels, out, p0, p1, bias, has_bias, residual, res_mode, act, alpha, beta):
    """Columns of panels p0..p1-1 for every row of ``a``, epilogue included."""
    m, k = a.shape
    n = out.shape[1]
    af = a.reshape(-1)
    wf = panels.reshape(-1)
    of = out.reshape(-1)
    rf = residual.reshape(-1)
    ep = vector_epilogue(res_mode, act, alpha, beta)
    step = PANEL * k  # one panel
    last = p1 - 1  # a partial tile recomputes the range's last panel and stores none of it
    end = min(n, p1 * PANEL)  # columns past the range are another part's
    for t in range(p0, p1, TILE_PANELS):
        w0 = t * step
        w1 = min(t + 1, last) * step
        w2 = min(t + 2, last) * step
        w3 = min(t + 3, last) * step
        col = t * PANEL
        i = 0
        while m - i >= 2:  # four rows, or two or three with the last one recomputed
            rows = min(m - i, 4)
            _tile_4x4(af, i, min(i + 1, m - 1), min(i + 2, m - 1), min(i + 3, m - 1), rows,
                      wf, w0, w1, w2, w3, k, col, n, end, of, bias, has_bias, rf, ep)  # fmt: skip
            i += rows
        if i < m:
            _tile_1x4(af, i, wf, w0, w1, w2, w3, k, col, n, end, of, bias, has_bias, rf, ep)
    if act not in VECTOR_ACTS:  # the activation (and residual) over the finished columns
        c0 = p0 * PANEL
        c1 = min(n, p1 * PANEL)
        for i in range(m):
            res = residual[i, c0:c1] if res_mode != RES_NONE else residual[0]
            finish_row(out[i, c0:c1], np.float32(0.0), bias, 0, res, res_mode, act, alpha, beta)


@njit(error_model="numpy", cache=True, nogil=True)
def panel_gemm(a, panels, out, bias, has_bias, residual, res_mode, act, alpha, beta):
    """``out = epilogue(a @ W.T)`` on the calling thread: a [M, K], panels of W [N, K], out [M, N]."""
    _panel_range(a, panels, out, 0, panels.shape[0], bias, has_bias, residual, res_mode, act, alpha, beta)


@njit(error_model="numpy", cache=True, nogil=True, parallel=True)
def panel_gemm_split(a, panels, out, bias, has_bias, residual, res_mode, act, alpha, beta, parts):
    """:func:`panel_gemm` with the panels in ``parts`` contiguous ranges over numba's pool."""
    count = panels.shape[0]
    for part in prange(parts):
        _panel_range(a, panels, out, part * count // parts, (part + 1) * count // parts,
                     bias, has_bias, residual, res_mode, act, alpha, beta)  # fmt: skip


@register_tactic
class PanelRowsGemm(DotRowsGemm):
    """``dot_rows``' few-rows GEMM on [N/16, K, 16] weight panels, split over numba's threads."""

    name = "cpu.gemm.panel_rows"
    priority = 27

    def supports(self, node: Node, graph: Graph) -> bool:
        return AVX512 and super().supports(node, graph)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        prepared = super().prepare(node, graph)
        w_nk = prepared.tensors["weight"]
        prepared.tensors["weight"] = pack_panels(w_nk)
        prepared.params["columns"] = int(w_nk.shape[0])
        return prepared

    def _columns(self, prepared: Prepared) -> int:
        return int(prepared.params["columns"])

    def _dot(
        self, a: np.ndarray, w: np.ndarray, out: np.ndarray, epilogue: tuple[Any, ...]
    ) -> Callable[[], None]:
        parts = min(numba_thread_count(), w.shape[0] // MIN_PANELS_PER_PART)
        if parts <= 1:
            return functools.partial(panel_gemm, a, w, out, *epilogue)
        return functools.partial(panel_gemm_split, a, w, out, *epilogue, parts)  # type: ignore[call-arg]

    def _many_rows(self, a: np.ndarray, w: np.ndarray, out: np.ndarray, epilogue: tuple[Any, ...]) -> None:
        """More rows than the tuner saw: the same tiles."""
        self._dot(a, w, out, epilogue)()


@register_tactic
class PanelRowsGemm1t(PanelRowsGemm):
    """``panel_rows`` on the calling thread: no pool wake-up, for layers too small to share."""

    name = "cpu.gemm.panel_rows_1t"
    priority = 24

    def _dot(
        self, a: np.ndarray, w: np.ndarray, out: np.ndarray, epilogue: tuple[Any, ...]
    ) -> Callable[[], None]:
        return functools.partial(panel_gemm, a, w, out, *epilogue)
