"""ConvTranspose as output bands in one thread pool: a GEMM to columns, then col2im, per band.

``cpu.conv_transpose.bands`` computes ConvTranspose (the decoder upsampling of segmentation and
text-detection heads, U-Nets, vocoders) of x [N, C, H, W] with a constant weight
[C, M/group, kh, kw] into y [N, M, Ho, Wo]. A task owns one band of output rows of a block of
output channels of one image and group, so no two tasks write the same element:

1. it fills its rows with the bias (0 without one);
2. for the input rows that reach its band (``iy*sh + ky*dh - pad_top`` inside it), a few rows at
   a time, it multiplies the group's transposed weight [Mb*kh*kw, C/group] by those input rows
   [C/group, rows*W] with single-threaded BLAS called from numba (``_blas.sgemm_at``: the NCHW
   input is read in place, the channel stride is the leading dimension) into a small column
   buffer that stays in L2;
3. it adds each column row into the output row and columns it lands on (col2im): output pixel
   ``(iy*sh + ky*dh - pad_top, ix*sw + kx*dw - pad_left)`` of tap (ky, kx), skipping the
   positions the pads crop. The 2-wide stride-2 taps of decoder upsampling are added as one
   interleave of the two tap rows, sixteen columns a step.

Bands overlap in the input rows they read when ``(kh-1)*dh >= sh``; those few rows' products are
computed once per band (a band is tens of rows). Any stride, dilation, group, asymmetric or
negative (``output_shape`` larger than the full output) pads and ``output_padding`` (the rows and
columns no tap reaches hold the bias); 1-D as height-1 2-D. 3-D and a weight read at run time go
to the reference tactic. Pool: numba's (BLAS held to one thread).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu import _blas
from farm.compiler.kernels.cpu._operands import RunsBound, constant_input, dense, float32_io, memo
from farm.compiler.kernels.cpu._simd16 import LANES, vadd16, vload16, vstore16, vziphi16, vziplo16
from farm.compiler.kernels.cpu._threads import blas_single_thread_call, numba_thread_count
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.reference.nn_conv import conv_transpose_geometry

# A task's column buffer ([channels*kh*kw, rows*W] floats) is kept under this many bytes.
COLUMN_BYTES = 256 * 1024


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _ceil_div(a, b):
    return -((-a) // b)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def conv_transpose_bands(x, wt, bias, out, kh, kw, sh, sw, pt, pl, dh, dw, band, block, chunk):
    """ConvTranspose of x [N, C, H, W] with wt [G, Mg*kh*kw, Cg] (row ``(m*kh + ky)*kw + kx`` is
    output channel m's tap (ky, kx)) plus ``bias`` [M] into out [N, M, Ho, Wo]: tasks of ``band``
    output rows x ``block`` output channels, input rows ``chunk`` at a time."""
    n_count, c_count, h, w = x.shape
    groups, _, cg = wt.shape
    m_count, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    mg = m_count // groups
    taps = kh * kw
    bands = _ceil_div(ho, band)
    blocks = _ceil_div(mg, block)
    xf = x.reshape(-1)
    wf = wt.reshape(-1)
    for t in prange(n_count * groups * blocks * bands):
        b = t % bands
        rest = t // bands
        mb = rest % blocks
        rest //= blocks
        g = rest % groups
        n = rest // groups
        oy0 = b * band
        oy1 = min(ho, oy0 + band)
        m0 = mb * block
        mn = min(block, mg - m0)
        for m in range(mn):
            out[n, g * mg + m0 + m, oy0:oy1, :] = bias[g * mg + m0 + m]
        iy_lo = max(0, _ceil_div(oy0 + pt - (kh - 1) * dh, sh))
        iy_hi = min(h - 1, (oy1 - 1 + pt) // sh)  # floor division: oy1 - 1 + pt may be negative
        if iy_hi < iy_lo:
            continue
        cols = np.empty((mn * taps, chunk * w), np.float32)
        ix_lo = np.empty(kw, np.int64)
        ix_hi = np.empty(kw, np.int64)
        for kx in range(kw):
            ix_lo[kx] = max(0, _ceil_div(pl - kx * dw, sw))
            ix_hi[kx] = min(w - 1, (wo - 1 + pl - kx * dw) // sw)
        # 2-wide taps at stride 2 with nothing cropped at the sides (the k2 s2 upsampling of
        # decoder heads): input column ix lands on output columns 2ix and 2ix+1, one interleave
        pairs = kw == 2 and sw == 2 and dw == 1 and pl == 0 and wo >= 2 * w
        for r0 in range(iy_lo, iy_hi + 1, chunk):
            rn = min(chunk, iy_hi + 1 - r0)
            _blas.sgemm_at(
                False, mn * taps, rn * w, cg, 1.0,
                wf, (g * mg + m0) * taps * cg, cg,
                xf, ((n * c_count + g * cg) * h + r0) * w, h * w,
                0.0, cols.reshape(-1), 0, chunk * w,
            )  # fmt: skip
            for m in range(mn):
                plane = out[n, g * mg + m0 + m]
                for ky in range(kh):
                    for iy in range(r0, r0 + rn):
                        oy = iy * sh + ky * dh - pt
                        if oy < oy0 or oy >= oy1:
                            continue
                        dst = plane[oy]
                        base = (iy - r0) * w
                        row = (m * kh + ky) * kw
                        if pairs:
                            _add_interleaved(dst, cols[row], cols[row + 1], base, w)
                            continue
                        for kx in range(kw):
                            src = cols[row + kx]
                            shift = kx * dw - pl
                            for ix in range(ix_lo[kx], ix_hi[kx] + 1):
                                dst[ix * sw + shift] += src[base + ix]


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _add_interleaved(dst, even, odd, base, w):
    """``dst[2i] += even[base + i]``, ``dst[2i + 1] += odd[base + i]`` for i < w: sixteen of
    each interleaved into two vectors (``vziplo16``/``vziphi16``) per step, the tail one by one."""
    whole = w - w % LANES
    for i in range(0, whole, LANES):
        a = vload16(even, base + i)
        b = vload16(odd, base + i)
        vstore16(dst, 2 * i, vadd16(vload16(dst, 2 * i), vziplo16(a, b)))
        vstore16(dst, 2 * i + LANES, vadd16(vload16(dst, 2 * i + LANES), vziphi16(a, b)))
    for i in range(whole, w):
        dst[2 * i] += even[base + i]
        dst[2 * i + 1] += odd[base + i]


def band_plan(n: int, groups: int, mg: int, ho: int, taps: int, w: int, threads: int) -> tuple[int, int, int]:
    """(band, block, chunk): all of a group's output channels in one task and whole images when
    that gives two tasks per thread, else bands of output rows (at least 8 rows each), then
    channel blocks; ``chunk`` input rows make a column buffer under :data:`COLUMN_BYTES`."""
    want = 2 * max(threads, 1)
    tasks = n * groups
    bands = 1
    if tasks < want:
        bands = max(1, min(-(-want // tasks), ho // 8))
    band = -(-ho // bands)
    bands = -(-ho // band)
    block = mg
    if tasks * bands < want and mg > 1:
        blocks = min(mg, -(-want // (tasks * bands)))
        block = -(-mg // blocks)
    chunk = max(1, COLUMN_BYTES // (4 * block * taps * max(w, 1)))
    return band, block, chunk


@register_tactic
class BandConvTranspose(RunsBound, Tactic):
    """ConvTranspose as output bands: GEMM to columns with single-threaded BLAS, then col2im,
    in numba's pool (module docstring)."""

    name = "cpu.conv_transpose.bands"
    op_types = ("ConvTranspose",)
    priority = 10

    def supports(self, node: Node, graph: Graph) -> bool:
        """Float32, 1-D or 2-D, a constant weight and a constant bias or none."""
        if not _blas.AVAILABLE or not float32_io(node, graph):
            return False
        x = graph.values[node.input(0)]
        w = graph.const(node.input(1))
        bias_known, _ = constant_input(node, graph, 2)
        if w is None or not bias_known or x.rank not in (3, 4) or w.ndim != x.rank:
            return False
        channels = x.shape[1] if x.shape else None
        group = int(node.attr("group", 1))
        return isinstance(channels, int) and group >= 1 and channels == w.shape[0] and channels % group == 0

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """The weight as [G, Mg*kh*kw, Cg] (each group's A matrix, row-major) and the bias as a
        float32 vector over the output channels (zeros without one)."""
        w = graph.const(node.input(1))
        assert w is not None
        group = int(node.attr("group", 1))
        cg, mg = w.shape[0] // group, w.shape[1]
        kernel = [int(k) for k in w.shape[2:]]
        wt = np.ascontiguousarray(
            w.astype(np.float32).reshape(group, cg, mg * int(np.prod(kernel))).transpose(0, 2, 1)
        )
        _, b = constant_input(node, graph, 2)
        bias = np.zeros(group * mg, np.float32) if b is None else np.asarray(b, np.float32).reshape(-1).copy()
        return Prepared(
            tensors={"wt": wt, "bias": bias}, params={"kernel": kernel}, replaces=frozenset({1, 2})
        )

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The band kernel on these arrays; without ``copies``, None when the input is not a
        dense float32 array the kernel can read in place."""
        x = inputs[0]
        assert x is not None
        if not copies and not dense(x):
            return None
        x = np.ascontiguousarray(x, dtype=np.float32)
        x4 = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if x.ndim == 3 else x
        out = outputs[0]
        out4 = out.reshape(out.shape[0], out.shape[1], 1, out.shape[2]) if out.ndim == 3 else out
        kernel = prepared.params["kernel"]
        wt = prepared.tensors["wt"]
        threads = numba_thread_count()

        def plan() -> tuple[int, ...]:
            strides, dilations, pads, _ = conv_transpose_geometry(node, x.shape[2:], kernel)
            if x.ndim == 3:  # height 1: no vertical taps, stride or pads
                kh, kw, sh, sw, pt, pl, dh, dw = 1, kernel[0], 1, strides[0], 0, pads[0], 1, dilations[0]
            else:
                kh, kw = kernel
                (sh, sw), (pt, pl), (dh, dw) = strides, pads[:2], dilations
            n, _, ho, _ = out4.shape
            band, block, chunk = band_plan(
                n, wt.shape[0], wt.shape[1] // (kh * kw), ho, kh * kw, x4.shape[3], threads
            )
            return kh, kw, sh, sw, pt, pl, dh, dw, band, block, chunk

        geometry = memo(prepared, ("convt_plan", x.shape, out.shape, threads), plan)
        call = functools.partial(conv_transpose_bands, x4, wt, prepared.tensors["bias"], out4, *geometry)
        return blas_single_thread_call(call)


__all__: Sequence[str] = ("BandConvTranspose", "band_plan", "conv_transpose_bands")
