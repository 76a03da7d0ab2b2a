"""Depthwise 3x3, 5x5 and 7x7 convolution with a window of output rows in registers.

``cpu.conv.depthwise_rows`` loads every tap of every kernel row for every output row: a 5x5
kernel reads each input vector five times, and each load is lane-masked, so on small planes
(MobileNet's 14x14 and 28x28 layers) its loads and mask arithmetic, not its FMAs, set the pace
(2.8 cycles per tap on a 2-core Zen 4 EPYC; ORT's NCHWc kernel 2.1).

``cpu.conv.depthwise_slide`` computes each (image, channel) plane in blocks of 16 output columns
and walks a block's input rows once, top to bottom:

* the input plane is first copied into a thread-owned zero-padded plane (16-lane moves, the
  padding written once when the buffer is made), so every tap after that is one plain
  unaligned load and the borders cost nothing;
* each input row's ``kw`` taps are loaded once (stride 2: 32 floats and their even or odd
  lanes, :func:`_pair`) and multiply-added into every output row of the window that uses that
  input row: ``kh - 1`` accumulators (3x3: two, 5x5: four) carry the rows not yet finished, and
  one output row is finished and stored per input row (stride 1) or per two input rows
  (stride 2). A 5x5 kernel at stride 1 thus loads 5 vectors per output vector instead of 25;
* the bias starts each accumulator; identity, Relu, Clip, HardSigmoid and HardSwish, with a
  residual before or after, are applied to the vector before its (masked) store; other
  activations run ``_epilogue.finish_row`` over the finished plane while it is in cache.

Kernels 3x3 and 5x5 at strides 1 and 2 (the same in both directions), 7x7 (ConvNeXt's) at
stride 1, no dilation, any pads: ``supports`` declines the rest, which ``depthwise_rows`` and
``depthwise_plane`` cover. 3x3 and 5x5 hold their weights in registers for the whole plane; a
7x7 kernel's 49 weights do not fit beside its window, so each is an FMA's broadcast memory
operand.

``cpu.conv.depthwise_slide_1t`` is the same on the calling thread only.

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
    vbroadcast16,
    vevens16,
    vfma16,
    vload16,
    vload16_masked,
    vodds16,
    vsplat16,
    vstore16,
)
from farm.compiler.kernels.cpu.conv import ConvGeometry
from farm.compiler.kernels.cpu.depthwise import DepthwisePlaneConv
from farm.compiler.kernels.cpu.depthwise_rows import _five, _three
from farm.compiler.kernels.registry import Prepared, register_tactic

# Floats past the last padded row that a block's lanes past the output width read (a stride-2
# pair of the last block: at most 36 - kw past the row's end) and that the copy's zero lanes
# past the last image row fill (at most 15).
SLACK = 4 * LANES + 8


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _copy_padded(xf, src, h, wi, pb, wp, pt, pl):
    """Copy the plane xf[src : src + h*wi] into the padded plane ``pb`` (row stride
    ``wp``, the image at row ``pt``, column ``pl``). Each row goes in 16-lane moves whose lanes
    past the row are zeros: they land in the row's right padding or the next row, which is
    written after it, so the padding stays zero."""
    for iy in range(h):
        row = src + iy * wi
        dst = (iy + pt) * wp + pl
        for c in range(0, wi, LANES):
            vstore16(pb, dst + c, vload16_masked(xf, row + c, wi - c))


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _pair(pb, at):
    """The 32 floats from ``at`` as two vectors: their even lanes are one stride-2 tap, their
    odd lanes the next."""
    return vload16(pb, at), vload16(pb, at + LANES)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _taps3(pb, at, sw):
    """The three taps of a kernel row for the 16 outputs whose window starts at ``at``."""
    if sw == 1:
        return vload16(pb, at), vload16(pb, at + 1), vload16(pb, at + 2)
    lo, hi = _pair(pb, at)
    lo2, hi2 = _pair(pb, at + 2)
    return vevens16(lo, hi), vodds16(lo, hi), vevens16(lo2, hi2)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _taps5(pb, at, sw):
    """The five taps of a kernel row for the 16 outputs whose window starts at ``at``."""
    if sw == 1:
        return (
            vload16(pb, at),
            vload16(pb, at + 1),
            vload16(pb, at + 2),
            vload16(pb, at + 3),
            vload16(pb, at + 4),
        )
    lo, hi = _pair(pb, at)
    lo2, hi2 = _pair(pb, at + 2)
    lo4, hi4 = _pair(pb, at + 4)
    return vevens16(lo, hi), vodds16(lo, hi), vevens16(lo2, hi2), vodds16(lo2, hi2), vevens16(lo4, hi4)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _dot3(t, k, acc):
    """acc + the three taps ``t`` times the kernel row's weights ``k``."""
    return vfma16(t[2], k[2], vfma16(t[1], k[1], vfma16(t[0], k[0], acc)))


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _dot5(t, k, acc):
    """acc + the five taps ``t`` times the kernel row's weights ``k``."""
    acc = vfma16(t[2], k[2], vfma16(t[1], k[1], vfma16(t[0], k[0], acc)))
    return vfma16(t[4], k[4], vfma16(t[3], k[3], acc))


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _plane3(pb, wp, wf, wb, bias, oplane, ho, wo, res, ep, s):
    """One output plane of a 3x3 kernel at stride ``s`` from the padded plane ``pb``."""
    k0 = _three(wf, wb)
    k1 = _three(wf, wb + 3)
    k2 = _three(wf, wb + 6)
    start = vsplat16(bias)
    for x0 in range(0, wo, LANES):
        count = wo - x0
        at = x0 * s
        if s == 1:
            # a: output row oy (input rows oy, oy+1 done); b: row oy+1 (row oy+1 done)
            a = _dot3(_taps3(pb, at, 1), k0, start)
            t = _taps3(pb, at + wp, 1)
            a = _dot3(t, k1, a)
            b = _dot3(t, k0, start)
            for oy in range(ho):
                t = _taps3(pb, at + (oy + 2) * wp, 1)
                finish16(_dot3(t, k2, a), oplane, oy * wo + x0, count, res, ep)
                a = _dot3(t, k1, b)
                b = _dot3(t, k0, start)
        else:
            # a: output row oy with input row 2*oy done
            a = _dot3(_taps3(pb, at, 2), k0, start)
            for oy in range(ho):
                a = _dot3(_taps3(pb, at + (2 * oy + 1) * wp, 2), k1, a)
                t = _taps3(pb, at + (2 * oy + 2) * wp, 2)
                finish16(_dot3(t, k2, a), oplane, oy * wo + x0, count, res, ep)
                a = _dot3(t, k0, start)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _plane5(pb, wp, wf, wb, bias, oplane, ho, wo, res, ep, s):
    """One output plane of a 5x5 kernel at stride ``s`` from the padded plane ``pb``."""
    # one assignment each: numba's parfor analysis mistakes a tuple of equal tuples for a shape
    k0 = _five(wf, wb)
    k1 = _five(wf, wb + 5)
    k2 = _five(wf, wb + 10)
    k3 = _five(wf, wb + 15)
    k4 = _five(wf, wb + 20)
    start = vsplat16(bias)
    for x0 in range(0, wo, LANES):
        count = wo - x0
        at = x0 * s
        if s == 1:
            # before row oy+4: a, b, c, d are output rows oy .. oy+3 with rows up to oy+3 done
            t = _taps5(pb, at, 1)
            a = _dot5(t, k0, start)
            t = _taps5(pb, at + wp, 1)
            a = _dot5(t, k1, a)
            b = _dot5(t, k0, start)
            t = _taps5(pb, at + 2 * wp, 1)
            a = _dot5(t, k2, a)
            b = _dot5(t, k1, b)
            c = _dot5(t, k0, start)
            t = _taps5(pb, at + 3 * wp, 1)
            a = _dot5(t, k3, a)
            b = _dot5(t, k2, b)
            c = _dot5(t, k1, c)
            d = _dot5(t, k0, start)
            for oy in range(ho):
                t = _taps5(pb, at + (oy + 4) * wp, 1)
                finish16(_dot5(t, k4, a), oplane, oy * wo + x0, count, res, ep)
                a = _dot5(t, k3, b)
                b = _dot5(t, k2, c)
                c = _dot5(t, k1, d)
                d = _dot5(t, k0, start)
        else:
            # before rows 2*oy+3, 2*oy+4: a is output row oy (rows up to 2*oy+2 done), b row oy+1
            # (row 2*oy+2 done)
            t = _taps5(pb, at, 2)
            a = _dot5(t, k0, start)
            a = _dot5(_taps5(pb, at + wp, 2), k1, a)
            t = _taps5(pb, at + 2 * wp, 2)
            a = _dot5(t, k2, a)
            b = _dot5(t, k0, start)
            for oy in range(ho):
                t = _taps5(pb, at + (2 * oy + 3) * wp, 2)
                a = _dot5(t, k3, a)
                b = _dot5(t, k1, b)
                t = _taps5(pb, at + (2 * oy + 4) * wp, 2)
                finish16(_dot5(t, k4, a), oplane, oy * wo + x0, count, res, ep)
                a = _dot5(t, k2, b)
                b = _dot5(t, k0, start)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _taps7(pb, at):
    """The seven stride-1 taps of a kernel row for the 16 outputs whose window starts at ``at``."""
    return _taps5(pb, at, 1) + (vload16(pb, at + 5), vload16(pb, at + 6))


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _dot7(t, wf, at, acc):
    """acc + the seven taps ``t`` times wf[at .. at+6], each weight broadcast from memory (49
    weights do not fit in the registers next to the window: each becomes an FMA's memory
    operand)."""
    acc = vfma16(t[0], vbroadcast16(wf, at), acc)
    acc = vfma16(t[1], vbroadcast16(wf, at + 1), acc)
    acc = vfma16(t[2], vbroadcast16(wf, at + 2), acc)
    acc = vfma16(t[3], vbroadcast16(wf, at + 3), acc)
    acc = vfma16(t[4], vbroadcast16(wf, at + 4), acc)
    acc = vfma16(t[5], vbroadcast16(wf, at + 5), acc)
    return vfma16(t[6], vbroadcast16(wf, at + 6), acc)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _plane7(pb, wp, wf, wb, bias, oplane, ho, wo, res, ep):
    """One output plane of a 7x7 kernel at stride 1 (ConvNeXt's depthwise layers) from the padded
    plane ``pb``. The window starts six rows above the plane: those output rows are
    computed on the padding and dropped, which spares a six-step prologue."""
    start = vsplat16(bias)
    for x0 in range(0, wo, LANES):
        count = wo - x0
        at = x0
        # before row oy+6: a .. f are output rows oy .. oy+5 with rows up to oy+5 done
        a = b = c = d = e = f = start
        for oy in range(-6, ho):
            t = _taps7(pb, at + (oy + 6) * wp)
            if oy >= 0:
                finish16(_dot7(t, wf, wb + 42, a), oplane, oy * wo + x0, count, res, ep)
            a = _dot7(t, wf, wb + 35, b)
            b = _dot7(t, wf, wb + 28, c)
            c = _dot7(t, wf, wb + 21, d)
            d = _dot7(t, wf, wb + 14, e)
            e = _dot7(t, wf, wb + 7, f)
            f = _dot7(t, wf, wb, start)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def depthwise_slide(x, w, bias, residual, res_mode, act, alpha, beta, out, ho, wo, mult, s, pt, pl, wp, pb):
    """Depthwise conv of ``x`` [N*C, H, W] into ``out`` [N*M, Ho*Wo] (plane t = n*M + m reads
    input plane n*C + m // mult); ``w`` [M, k, k] (k 3, 5 or 7) and ``bias`` [M] float32,
    ``residual`` [N*M, Ho*Wo] or a dummy; stride ``s`` (1 or 2) both ways. ``pb`` [chunks, ...]
    holds each chunk's padded plane (row stride ``wp``), zero outside the image. Plane range
    k*P//T .. (k+1)*P//T goes to chunk k = 0 .. T-1, T = pb.shape[0]."""
    planes = out.shape[0]
    chunks = pb.shape[0]
    h, wi = x.shape[1], x.shape[2]
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    m_count, k = w.shape[0], w.shape[1]
    c_count = m_count // mult
    vector = act in VECTOR_ACTS  # else finish_row runs the activation on the finished plane
    ep = vector_epilogue(res_mode, act, alpha, beta)
    for j in prange(chunks):
        pbf = pb[j]
        for t in range(j * planes // chunks, (j + 1) * planes // chunks):
            m = t % m_count
            src = ((t // m_count) * c_count + m // mult) * h * wi
            _copy_padded(xf, src, h, wi, pbf, wp, pt, pl)
            oplane = out[t]
            res = residual[t] if res_mode != RES_NONE else residual[0]
            # the kernel size and stride as constants in the inlined plane loops
            if k == 3:
                if s == 1:
                    _plane3(pbf, wp, wf, m * 9, bias[m], oplane, ho, wo, res, ep, 1)
                else:
                    _plane3(pbf, wp, wf, m * 9, bias[m], oplane, ho, wo, res, ep, 2)
            elif k == 5:
                if s == 1:
                    _plane5(pbf, wp, wf, m * 25, bias[m], oplane, ho, wo, res, ep, 1)
                else:
                    _plane5(pbf, wp, wf, m * 25, bias[m], oplane, ho, wo, res, ep, 2)
            else:
                _plane7(pbf, wp, wf, m * 49, bias[m], oplane, ho, wo, res, ep)
            if not vector:
                finish_row(oplane, np.float32(0.0), bias, 0, res, res_mode, act, alpha, beta)


def padded_plane(geo: ConvGeometry, h: int, wi: int, ho: int, wo: int) -> tuple[int, int]:
    """(rows, row stride) of the padded plane: every input row and column a valid output reads
    (the image, its top/left pads and what the bottom/right pads cover). What a block's lanes
    past the plane's width read beyond the last row, and the copy's zero lanes past the last
    image row, fall in the buffer's :data:`SLACK`."""
    wp = max(geo.pad_left + wi, (wo - 1) * geo.sw + geo.kw)
    rows = max(geo.pad_top + h, (ho - 1) * geo.sh + geo.kh)
    return rows, wp


@register_tactic
class DepthwiseSlideConv(DepthwisePlaneConv):
    """Depthwise 3x3 / 5x5 / 7x7 conv with a window of output rows in registers over a padded copy of
    each plane: every input vector loaded once per kernel row (see the module docstring)."""

    name = "cpu.conv.depthwise_slide"
    priority = 36

    def supports(self, node: Node, graph: Graph) -> bool:
        """The plane tactic's depthwise convs with a square kernel and no dilation: 3x3 or 5x5
        with the same stride, 1 or 2, in both directions, or 7x7 at stride 1."""
        if not super().supports(node, graph):
            return False
        w = graph.values[node.input(1)]
        if len(w.shape) != 4:  # type: ignore[arg-type]
            return False
        geo = ConvGeometry.of(node, w.shape)  # type: ignore[arg-type]
        if geo.kh != geo.kw or geo.sh != geo.sw or geo.dh != 1 or geo.dw != 1:
            return False
        return (geo.kh in (3, 5) and geo.sh in (1, 2)) or (geo.kh == 7 and geo.sh == 1)

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
        ho, wo = out_hw
        rows, wp = padded_plane(geo, x.shape[1], x.shape[2], ho, wo)
        pb = self._padded(prepared, (chunks, rows * wp + SLACK), (x.shape[1], x.shape[2], rows, wp))
        return depthwise_slide, (
            x, w, bias, residual, mode, act, alpha, beta, out, ho, wo, mult, geo.sh, geo.pad_top, geo.pad_left, wp, pb
        )  # fmt: skip

    @staticmethod
    def _padded(prepared: Prepared, shape: tuple[int, int], layout: tuple[int, ...]) -> np.ndarray:
        """The per-thread padded planes, zeroed when made: kept across runs while the layout
        (image and padded sizes) is the same, since only image pixels are written there."""
        key: Any = (shape, layout)
        cached = prepared.scratch.get("padded")
        if cached is None or cached[0] != key:
            cached = prepared.scratch["padded"] = (key, np.zeros(shape, np.float32))
        return cached[1]


@register_tactic
class SingleThreadDepthwiseSlideConv(DepthwiseSlideConv):
    """``cpu.conv.depthwise_slide`` on the calling thread only (small layers, busy hosts)."""

    name = "cpu.conv.depthwise_slide_1t"
    priority = 33

    def _elements(self, out_size: int, geo: ConvGeometry) -> int:
        return 0  # threads_for(0): numba's loops run on the calling thread
