"""Convs with a handful of output pixels, on the calling thread with no set-up.

``cpu.conv.small_direct`` is for the convs whose whole output is a few pixels: the encoder of an
audio model run on one 32 ms chunk (Silero VAD's stride-2 convs end at lengths 2 and 1), the
last stages of a detector on a tiny input, convs after a global pool. The other conv tactics
pay 10-20 us before their first multiply-add there (stride-phase copies, task plans, a parallel
region, BLAS packing) for a layer that is 10-100 thousand multiply-adds. Here, per output pixel,
the input patch is gathered into a K-vector (zeros where the window leaves the image) and
multiplied into the M sums held in 16-lane registers (four blocks of 16 channels at a time,
each step over K one broadcast of the patch value and a fused multiply-add per block with the
weight stored [K, M]); the epilogue (bias, residual, activation) runs over the pixel's M sums
while they are in L1, which then go to the NCHW output. One thread, no workspace
beyond two small vectors.

Any kernel, stride, dilation and asymmetric pads, 1-D and 2-D, group 1, a constant weight; at
most :data:`MAX_PIXELS` output pixels over the batch (beyond that the parallel tactics win).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    epilogue_params,
    finish_row,
    residual_rows,
    vector_or_dummy,
)
from farm.compiler.kernels.cpu._operands import RunsBound, dense, memo
from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    LANES,
    vbroadcast16,
    vfma16,
    vload16,
    vload16_masked,
    vstore16,
    vstore16_masked,
    vzero16,
)
from farm.compiler.kernels.cpu.conv import ConvGeometry, _as_4d, _GemmConvBase, _out_4d
from farm.compiler.kernels.registry import Prepared, register_tactic

MAX_PIXELS = 64  # output pixels over the whole batch
MAX_WEIGHTS = 1 << 20  # floats of the weight (4 MiB): past it the layer is not small
PIXEL_BLOCK = 4 if AVX512 else 1  # pixels computed together (:func:`_four_pixels`)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _weight_times_patch(wf, m_count, k_count, m0, patch):
    """``wt[:, m0:m0+16]^T @ patch``: sixteen output channels' sums over the K-vector patch."""
    a = vzero16()
    for q in range(k_count):
        a = vfma16(vload16(wf, q * m_count + m0), vbroadcast16(patch, q), a)
    return a


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _gather(x, n, oy, ox, kh, kw, sh, sw, pt, pl, dh, dw, patch, at):
    """The input window of output pixel (n, oy, ox) as patch[at : at + C*kh*kw], zeros where
    the window leaves the image."""
    c_count, h, w = x.shape[1], x.shape[2], x.shape[3]
    r = at
    for c in range(c_count):
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            for j in range(kw):
                ix = ox * sw - pl + j * dw
                inside = iy >= 0 and iy < h and ix >= 0 and ix < w
                patch[r] = x[n, c, iy, ix] if inside else np.float32(0.0)
                r += 1


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _one_pixel(wf, m_count, k_count, patch, acc):
    """acc[m] = sum over q of wt[q, m] * patch[q], for every m: four blocks of 16 channels at a
    time (four independent FMA chains), then single blocks, then the masked tail."""
    whole = m_count - m_count % LANES
    m0 = 0
    while m0 + 4 * LANES <= whole:
        a0 = vzero16()
        a1 = vzero16()
        a2 = vzero16()
        a3 = vzero16()
        for q in range(k_count):
            v = vbroadcast16(patch, q)
            base = q * m_count + m0
            a0 = vfma16(vload16(wf, base), v, a0)
            a1 = vfma16(vload16(wf, base + LANES), v, a1)
            a2 = vfma16(vload16(wf, base + 2 * LANES), v, a2)
            a3 = vfma16(vload16(wf, base + 3 * LANES), v, a3)
        vstore16(acc, m0, a0)
        vstore16(acc, m0 + LANES, a1)
        vstore16(acc, m0 + 2 * LANES, a2)
        vstore16(acc, m0 + 3 * LANES, a3)
        m0 += 4 * LANES
    while m0 < whole:
        vstore16(acc, m0, _weight_times_patch(wf, m_count, k_count, m0, patch))
        m0 += LANES
    if whole < m_count:
        tail = m_count - whole
        a = vzero16()
        for q in range(k_count):
            a = vfma16(vload16_masked(wf, q * m_count + whole, tail), vbroadcast16(patch, q), a)
        vstore16_masked(acc, whole, a, tail)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _four_pixels(wf, m_count, k_count, patch, acc):
    """:func:`_one_pixel` for four pixels at once (patches and sums at rows of ``k_count`` and
    ``m_count`` floats): each weight vector loaded once feeds four FMAs, so a weight too large
    for L1 (Silero's 256-tap STFT, 258 x 256 floats) is read from L2 a quarter as often. Four
    blocks of 16 channels x four pixels: sixteen accumulators."""
    whole = m_count - m_count % LANES
    k1, k2, k3 = k_count, 2 * k_count, 3 * k_count
    m1, m2, m3 = m_count, 2 * m_count, 3 * m_count
    m0 = 0
    while m0 + 4 * LANES <= whole:
        a00 = a01 = a02 = a03 = vzero16()
        a10 = a11 = a12 = a13 = vzero16()
        a20 = a21 = a22 = a23 = vzero16()
        a30 = a31 = a32 = a33 = vzero16()
        for q in range(k_count):
            base = q * m_count + m0
            w0 = vload16(wf, base)
            w1 = vload16(wf, base + LANES)
            w2 = vload16(wf, base + 2 * LANES)
            w3 = vload16(wf, base + 3 * LANES)
            v = vbroadcast16(patch, q)
            a00 = vfma16(w0, v, a00)
            a01 = vfma16(w1, v, a01)
            a02 = vfma16(w2, v, a02)
            a03 = vfma16(w3, v, a03)
            v = vbroadcast16(patch, k1 + q)
            a10 = vfma16(w0, v, a10)
            a11 = vfma16(w1, v, a11)
            a12 = vfma16(w2, v, a12)
            a13 = vfma16(w3, v, a13)
            v = vbroadcast16(patch, k2 + q)
            a20 = vfma16(w0, v, a20)
            a21 = vfma16(w1, v, a21)
            a22 = vfma16(w2, v, a22)
            a23 = vfma16(w3, v, a23)
            v = vbroadcast16(patch, k3 + q)
            a30 = vfma16(w0, v, a30)
            a31 = vfma16(w1, v, a31)
            a32 = vfma16(w2, v, a32)
            a33 = vfma16(w3, v, a33)
        vstore16(acc, m0, a00)
        vstore16(acc, m0 + LANES, a01)
        vstore16(acc, m0 + 2 * LANES, a02)
        vstore16(acc, m0 + 3 * LANES, a03)
        vstore16(acc, m1 + m0, a10)
        vstore16(acc, m1 + m0 + LANES, a11)
        vstore16(acc, m1 + m0 + 2 * LANES, a12)
        vstore16(acc, m1 + m0 + 3 * LANES, a13)
        vstore16(acc, m2 + m0, a20)
        vstore16(acc, m2 + m0 + LANES, a21)
        vstore16(acc, m2 + m0 + 2 * LANES, a22)
        vstore16(acc, m2 + m0 + 3 * LANES, a23)
        vstore16(acc, m3 + m0, a30)
        vstore16(acc, m3 + m0 + LANES, a31)
        vstore16(acc, m3 + m0 + 2 * LANES, a32)
        vstore16(acc, m3 + m0 + 3 * LANES, a33)
        m0 += 4 * LANES
    while m0 < m_count:
        count = m_count - m0  # the last block may be partial
        a0 = a1 = a2 = a3 = vzero16()
        for q in range(k_count):
            w = vload16_masked(wf, q * m_count + m0, count)
            a0 = vfma16(w, vbroadcast16(patch, q), a0)
            a1 = vfma16(w, vbroadcast16(patch, k1 + q), a1)
            a2 = vfma16(w, vbroadcast16(patch, k2 + q), a2)
            a3 = vfma16(w, vbroadcast16(patch, k3 + q), a3)
        vstore16_masked(acc, m0, a0, count)
        vstore16_masked(acc, m1 + m0, a1, count)
        vstore16_masked(acc, m2 + m0, a2, count)
        vstore16_masked(acc, m3 + m0, a3, count)
        m0 += LANES


@njit(error_model="numpy", cache=True, nogil=True)
def conv_small(
    x, wt, bias, has_bias, residual, res_mode, act, alpha, beta, out, kh, kw, sh, sw, pt, pl, dh, dw
):
    """Conv of x [N, C, H, W] with wt [C*kh*kw, M] (row ``(c*kh + i)*kw + j``) into out [N, M,
    Ho, Wo], then bias, ``residual`` ([N*M, Ho*Wo] or a dummy) and the activation per row.
    With AVX-512, pixels go four at a time (:func:`_four_pixels`, also for a last group of two
    or three; 16 accumulators do not fit in AVX2's sixteen registers), else one by one."""
    n_count = x.shape[0]
    k_count, m_count = wt.shape
    ho, wo = out.shape[2], out.shape[3]
    plane = ho * wo
    group = PIXEL_BLOCK
    # a short last group's unused rows hold zeros or an earlier group's patch: finite, sums dropped
    patch = np.zeros(group * k_count, np.float32)
    acc = np.empty(group * m_count, np.float32)
    res = np.empty(m_count if res_mode != RES_NONE else 1, np.float32)  # a pixel's residuals
    wf = wt.reshape(-1)
    rows = out.reshape(n_count * m_count, plane)
    total = n_count * plane
    first = 0
    while first < total:
        count = min(group, total - first)
        for u in range(count):
            n, p = divmod(first + u, plane)
            _gather(x, n, p // wo, p % wo, kh, kw, sh, sw, pt, pl, dh, dw, patch, u * k_count)
        if count > 1:  # two or three pixels too: the unused rows' sums are dropped
            _four_pixels(wf, m_count, k_count, patch, acc)
        else:
            _one_pixel(wf, m_count, k_count, patch, acc)
        for u in range(count):
            n, p = divmod(first + u, plane)
            sums = acc[u * m_count : (u + 1) * m_count]
            if res_mode != RES_NONE:
                for m in range(m_count):
                    res[m] = residual[n * m_count + m, p]
            finish_row(sums, np.float32(0.0), bias, 2 if has_bias else 0, res, res_mode, act, alpha, beta)
            for m in range(m_count):
                rows[n * m_count + m, p] = sums[m]
        first += count


@register_tactic
class SmallDirectConv(RunsBound, _GemmConvBase):
    """A conv with at most :data:`MAX_PIXELS` output pixels: per pixel a gathered patch times the
    [K, M] weight, on the calling thread (module docstring)."""

    name = "cpu.conv.small_direct"
    priority = 4

    def supports(self, node: Node, graph: Graph) -> bool:
        if not super().supports(node, graph) or graph.const(node.input(1)) is None:
            return False
        w = graph.values[node.input(1)]
        y = graph.values[node.outputs[0]]
        if ConvGeometry.of(node, w.shape).group != 1 or int(np.prod(w.shape)) > MAX_WEIGHTS:  # type: ignore[arg-type]
            return False
        pixels = [d for i, d in enumerate(y.shape or ()) if i != 1]
        known = [d for d in pixels if isinstance(d, int)]
        return len(known) == len(pixels) and math.prod(known) <= MAX_PIXELS

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """The base's packed weight [1, M, K] transposed once into [K, M]."""
        prepared = super().prepare(node, graph)
        weight = prepared.tensors.pop("weight")
        prepared.tensors["weight_t"] = np.ascontiguousarray(weight[0].T)
        return prepared

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays; without ``copies``, None when the input or residual would
        have to be copied first or the bias is a run-time input."""
        x_in = inputs[0]
        residual_in = inputs[3] if len(inputs) > 3 else None
        runtime_bias = len(inputs) > 2 and "bias" not in prepared.tensors and inputs[2] is not None
        if not copies and (
            runtime_bias
            or not dense(x_in)
            or (residual_in is not None and not dense(residual_in, outputs[0].shape))
        ):
            return None
        geo = memo(prepared, "geometry", lambda: ConvGeometry.of(node, prepared.params["weight_shape"]))
        x = np.ascontiguousarray(_as_4d(x_in), dtype=np.float32)  # type: ignore[arg-type]
        out = _out_4d(outputs[0])
        bias, has_bias = vector_or_dummy(prepared.tensors.get("bias", inputs[2] if len(inputs) > 2 else None))
        act, alpha, beta, mode = memo(prepared, "epilogue", lambda: epilogue_params(node))
        residual = residual_rows(residual_in, outputs[0].shape, out.shape[0] * out.shape[1])
        return functools.partial(
            conv_small,
            x, prepared.tensors["weight_t"], bias, has_bias, residual, mode, act, alpha, beta, out,
            geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw,
        )  # fmt: skip


__all__: Sequence[str] = ("MAX_PIXELS", "SmallDirectConv", "conv_small")
