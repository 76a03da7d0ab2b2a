"""Depthwise convolution straight from the input rows, sixteen output columns per vector.

``cpu.conv.depthwise_rows`` computes each (image, output channel) plane in blocks of 16 adjacent
output columns held in one ``float32x16`` (``_simd16``): for every kernel row whose input row is
inside the image, each tap loads the 16 input columns it needs (stride 1: one load; stride 2:
32 consecutive floats and their even lanes, one ``vpermt2ps``) and multiply-adds them with the
tap's broadcast weight. There is no copy of the input and no padded workspace:

* the padding is the load's lane mask: lanes whose input column falls outside the image are not
  read and count as zero, and kernel rows outside the image are skipped;
* a plane is walked column block by column block, output row by output row inside a block, so
  the masks (which depend on the block and the tap, not on the row) are computed once per block
  and hoisted out of the row loop;
* the taps of a kernel row go to three accumulators in turn (three independent FMA chains);
* the bias starts the first accumulator; identity, Relu and Clip, with a residual before or
  after, are applied to the vector before its (masked) store; other activations run
  ``_epilogue.finish_row`` over the finished plane while it is still in cache.

Against ``cpu.conv.depthwise_plane`` (phase-plane copy, wide-grid accumulation, copy out), in one
process, interleaved (AMD EPYC, 2 cores, AVX-512; MobileNet 3x3 layers at batch 1): stride 2
0.34-0.65x of its time, stride 1 0.54-0.87x. Strides other than 1 and 2 along the width are left
to ``depthwise_plane`` (``supports`` declines them). Without AVX-512 each vector is two AVX
halves and the masked loads are ``vmaskmovps``: still correct, and the tuner times it against the
plane tactic as on any host.

``cpu.conv.depthwise_rows_1t`` is the same on the calling thread only.

Pool: numba's (``prange`` over one contiguous run of planes per thread).
"""

from __future__ import annotations

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
    LANES,
    vadd16,
    vbroadcast16,
    vevens16,
    vfma16,
    vload16_lanes,
    vodds16,
    vsplat16,
    vzero16,
)
from farm.compiler.kernels.cpu._stream import STREAM_BYTES, stream_in
from farm.compiler.kernels.cpu.conv import ConvGeometry
from farm.compiler.kernels.cpu.depthwise import DepthwisePlaneConv
from farm.compiler.kernels.registry import Prepared, register_tactic


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _tap(xf, row, c, wi, sw):
    """Input columns c, c+sw, .., c+15*sw of the row starting at flat offset ``row`` (``sw`` 1 or
    2), zero where a column is outside [0, wi)."""
    if sw == 1:
        return vload16_lanes(xf, row + c, -c, wi - c)
    lo, hi = _pair(xf, row, c, wi)
    return vevens16(lo, hi)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _kernel_row(a0, a1, a2, xf, row, c0, dw, wi, sw, wf, wb, kw):
    """The ``kw`` taps of one kernel row (weights wf[wb:wb+kw], first tap at input column c0 of
    the block's first output) multiply-added into three accumulators in turn."""
    j = 0
    while j + 3 <= kw:
        a0 = vfma16(_tap(xf, row, c0 + j * dw, wi, sw), vbroadcast16(wf, wb + j), a0)
        a1 = vfma16(_tap(xf, row, c0 + (j + 1) * dw, wi, sw), vbroadcast16(wf, wb + j + 1), a1)
        a2 = vfma16(_tap(xf, row, c0 + (j + 2) * dw, wi, sw), vbroadcast16(wf, wb + j + 2), a2)
        j += 3
    if j < kw:
        a0 = vfma16(_tap(xf, row, c0 + j * dw, wi, sw), vbroadcast16(wf, wb + j), a0)
    if j + 1 < kw:
        a1 = vfma16(_tap(xf, row, c0 + (j + 1) * dw, wi, sw), vbroadcast16(wf, wb + j + 1), a1)
    return a0, a1, a2


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _plane(xf, src, wf, wb, bias, oplane, res, ep, g, kh, kw, sw):
    """One output plane ``oplane`` [Ho*Wo] from the input plane at flat offset ``src``, weights
    wf[wb:wb+kh*kw]; ``g`` = (H, W, Ho, Wo, stride h, pad top, pad left, dilation h, dilation w),
    ``sw`` the width stride, ``ep`` the epilogue (``_finish``)."""
    h, wi, ho, wo, sh, pt, pl, dh, dw = g
    start = vsplat16(bias)
    for x0 in range(0, wo, LANES):
        c0 = x0 * sw - pl
        for oy in range(ho):
            a0 = start
            a1 = vzero16()
            a2 = vzero16()
            for i in range(kh):
                iy = oy * sh + i * dh - pt
                if iy < 0 or iy >= h:
                    continue
                a0, a1, a2 = _kernel_row(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, wf, wb + i * kw, kw)
            finish16(vadd16(vadd16(a0, a1), a2), oplane, oy * wo + x0, wo - x0, res, ep)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _row3(a0, a1, a2, xf, row, c0, dw, wi, sw, k):
    """One row of a 3-wide kernel, its weights ``k`` given as vectors. At stride 2 without
    dilation taps 0 and 1 are the even and odd lanes of the same 32 columns (:func:`_pair`):
    4 loads for the three taps instead of 6."""
    if sw == 2 and dw == 1:
        lo, hi = _pair(xf, row, c0, wi)
        a0 = vfma16(vevens16(lo, hi), k[0], a0)
        a1 = vfma16(vodds16(lo, hi), k[1], a1)
        lo, hi = _pair(xf, row, c0 + 2, wi)
        a2 = vfma16(vevens16(lo, hi), k[2], a2)
        return a0, a1, a2
    a0 = vfma16(_tap(xf, row, c0, wi, sw), k[0], a0)
    a1 = vfma16(_tap(xf, row, c0 + dw, wi, sw), k[1], a1)
    a2 = vfma16(_tap(xf, row, c0 + 2 * dw, wi, sw), k[2], a2)
    return a0, a1, a2


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _pair(xf, row, c, wi):
    """Input columns c .. c+31 of the row at flat offset ``row`` as two vectors, zero outside
    [0, wi): their even lanes are one stride-2 tap, their odd lanes the next."""
    return (
        vload16_lanes(xf, row + c, -c, wi - c),
        vload16_lanes(xf, row + c + LANES, -c - LANES, wi - c - LANES),
    )


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _row5(a0, a1, a2, xf, row, c0, dw, wi, sw, k):
    """One row of a 5-wide kernel, its weights ``k`` given as vectors."""
    if sw == 2 and dw == 1:  # 6 loads for the five taps instead of 10 (see _row3)
        lo, hi = _pair(xf, row, c0, wi)
        a0 = vfma16(vevens16(lo, hi), k[0], a0)
        a1 = vfma16(vodds16(lo, hi), k[1], a1)
        lo, hi = _pair(xf, row, c0 + 2, wi)
        a2 = vfma16(vevens16(lo, hi), k[2], a2)
        a0 = vfma16(vodds16(lo, hi), k[3], a0)
        lo, hi = _pair(xf, row, c0 + 4, wi)
        a1 = vfma16(vevens16(lo, hi), k[4], a1)
        return a0, a1, a2
    a0, a1, a2 = _row3(a0, a1, a2, xf, row, c0, dw, wi, sw, k)
    a0 = vfma16(_tap(xf, row, c0 + 3 * dw, wi, sw), k[3], a0)
    a1 = vfma16(_tap(xf, row, c0 + 4 * dw, wi, sw), k[4], a1)
    return a0, a1, a2


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _three(wf, at):
    """wf[at], wf[at+1], wf[at+2], each broadcast to a vector."""
    return vbroadcast16(wf, at), vbroadcast16(wf, at + 1), vbroadcast16(wf, at + 2)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _five(wf, at):
    """wf[at], .., wf[at+4], each broadcast to a vector."""
    return (
        vbroadcast16(wf, at),
        vbroadcast16(wf, at + 1),
        vbroadcast16(wf, at + 2),
        vbroadcast16(wf, at + 3),
        vbroadcast16(wf, at + 4),
    )


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _plane3x3(xf, src, wf, wb, bias, oplane, res, ep, g, sw):
    """``_plane`` for a 3x3 kernel, its nine weights held in registers for the whole plane (a
    weight loaded per tap inside the loop cannot be hoisted: numba's arrays may alias)."""
    h, wi, ho, wo, sh, pt, pl, dh, dw = g
    k0 = _three(wf, wb)
    k1 = _three(wf, wb + 3)
    k2 = _three(wf, wb + 6)
    start = vsplat16(bias)
    for x0 in range(0, wo, LANES):
        c0 = x0 * sw - pl
        for oy in range(ho):
            a0 = start
            a1 = vzero16()
            a2 = vzero16()
            iy = oy * sh - pt
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row3(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k0)
            iy += dh
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row3(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k1)
            iy += dh
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row3(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k2)
            finish16(vadd16(vadd16(a0, a1), a2), oplane, oy * wo + x0, wo - x0, res, ep)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _plane5x5(xf, src, wf, wb, bias, oplane, res, ep, g, sw):
    """``_plane`` for a 5x5 kernel, its 25 weights held in registers for the whole plane."""
    h, wi, ho, wo, sh, pt, pl, dh, dw = g
    # one assignment each: numba's parfor analysis mistakes a tuple of equal tuples for a shape
    k0 = _five(wf, wb)
    k1 = _five(wf, wb + 5)
    k2 = _five(wf, wb + 10)
    k3 = _five(wf, wb + 15)
    k4 = _five(wf, wb + 20)
    start = vsplat16(bias)
    for x0 in range(0, wo, LANES):
        c0 = x0 * sw - pl
        for oy in range(ho):
            a0 = start
            a1 = vzero16()
            a2 = vzero16()
            iy = oy * sh - pt
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row5(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k0)
            iy += dh
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row5(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k1)
            iy += dh
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row5(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k2)
            iy += dh
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row5(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k3)
            iy += dh
            if iy >= 0 and iy < h:
                a0, a1, a2 = _row5(a0, a1, a2, xf, src + iy * wi, c0, dw, wi, sw, k4)
            finish16(vadd16(vadd16(a0, a1), a2), oplane, oy * wo + x0, wo - x0, res, ep)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def depthwise_rows(
    x, w, bias, residual, res_mode, act, alpha, beta, out, ho, wo, mult, sh, sw, pt, pl, dh, dw, chunks, stream,
):  # fmt: skip
    """Depthwise conv of ``x`` [N*C, H, W] into ``out`` [N*M, Ho*Wo] (plane t = n*M + m reads
    input plane n*C + m // mult); ``w`` [M, kh, kw] and ``bias`` [M] float32, ``residual``
    [N*M, Ho*Wo] or a dummy; ``sw`` 1 or 2. Plane range k*P//T .. (k+1)*P//T goes to chunk k.
    ``stream``: read each input plane once front to back first (``_stream``: the column-block
    walk below defeats the prefetcher when the input is not in cache)."""
    planes = out.shape[0]
    h, wi = x.shape[1], x.shape[2]
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    m_count, kh, kw = w.shape
    c_count = m_count // mult
    vector = act in VECTOR_ACTS  # else the caller's finish_row runs the activation
    ep = vector_epilogue(res_mode, act, alpha, beta)
    g = (h, wi, ho, wo, sh, pt, pl, dh, dw)
    for k in prange(chunks):
        sink = np.zeros(LANES, np.float32)
        for t in range(k * planes // chunks, (k + 1) * planes // chunks):
            m = t % m_count
            src = ((t // m_count) * c_count + m // mult) * h * wi
            if stream:
                stream_in(xf, src, h * wi, sink)
            oplane = out[t]
            res = residual[t] if res_mode != RES_NONE else residual[0]
            wb = m * kh * kw
            # the common kernels and both strides as constants in the inlined plane loops, so
            # that the taps (and their lane masks) unroll and the masks leave the row loop
            if kh == 3 and kw == 3:
                if sw == 1:
                    _plane3x3(xf, src, wf, wb, bias[m], oplane, res, ep, g, 1)
                else:
                    _plane3x3(xf, src, wf, wb, bias[m], oplane, res, ep, g, 2)
            elif kh == 5 and kw == 5:
                if sw == 1:
                    _plane5x5(xf, src, wf, wb, bias[m], oplane, res, ep, g, 1)
                else:
                    _plane5x5(xf, src, wf, wb, bias[m], oplane, res, ep, g, 2)
            else:  # other kernels: the generic loop, taps and strides at run time
                _plane(xf, src, wf, wb, bias[m], oplane, res, ep, g, kh, kw, sw)
            if not vector:
                finish_row(oplane, np.float32(0.0), bias, 0, res, res_mode, act, alpha, beta)


@register_tactic
class DepthwiseRowsConv(DepthwisePlaneConv):
    """Depthwise conv from the input rows, 16 output columns per vector, padding by lane masks,
    no workspace (see the module docstring); strides 1 and 2 along the width."""

    name = "cpu.conv.depthwise_rows"
    priority = 35

    def supports(self, node: Node, graph: Graph) -> bool:
        """The plane tactic's depthwise convs whose width stride is 1 or 2."""
        if not super().supports(node, graph):
            return False
        w = graph.values[node.input(1)]
        return ConvGeometry.of(node, w.shape).sw in (1, 2)  # type: ignore[arg-type]

    def _kernel(
        self,
        prepared: Prepared,
        geo: ConvGeometry,
        x: np.ndarray,
        w: np.ndarray,
        bias: np.ndarray,
        residual: np.ndarray,
        epilogue: tuple[int, int, float, float],
        out: np.ndarray,
        out_hw: tuple[int, int],
        mult: int,
        chunks: int,
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        mode, act, alpha, beta = epilogue
        return depthwise_rows, (
            x, w, bias, residual, mode, act, alpha, beta, out, *out_hw, mult,
            geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw, chunks, x.nbytes > STREAM_BYTES,
        )  # fmt: skip


@register_tactic
class SingleThreadDepthwiseRowsConv(DepthwiseRowsConv):
    """``cpu.conv.depthwise_rows`` on the calling thread only (small layers, busy hosts)."""

    name = "cpu.conv.depthwise_rows_1t"
    priority = 33

    def _elements(self, out_size: int, geo: ConvGeometry) -> int:
        return 0  # threads_for(0): numba's loops run on the calling thread
