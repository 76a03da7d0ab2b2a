"""Direct convolution for few input channels (a network's stem), from the input rows.

``cpu.conv.direct_rows`` computes blocks of 16 output channels x 16 adjacent output columns in 16
``float32x16`` accumulators (one per channel): for every tap (input channel, kernel row, kernel
column) the 16 input columns it needs are loaded once, as in ``depthwise_rows`` (stride 1: one
lane-masked load; stride 2: 32 floats and their even lanes; padding = the lane mask, rows outside
the image skipped), and multiply-added into all 16 accumulators with the tap's 16 weights,
broadcast from a panel packed once as [channel block, tap, 16]. One input load feeds 16 FMAs, the
weights stream from L1, and there is no im2col: what a 3-channel image's GEMM formulation lacks
(K = 27 or 147 is too short for a GEMM micro-kernel to run at speed, and the im2col matrix is 9x
or 49x the image).

Tasks are (image, channel block, band of output rows), at least two per thread where the output
allows, split evenly over numba's threads. A band is walked row by row, each row's column blocks
in order, so the 16 output planes and the input rows are written and read as sequential streams
(column blocks outer made each a 64-byte hop of a row's length: on the AVX2 EPYC the stem with
cold caches took 0.66-0.70 ms that way against 0.53-0.57 row by row, and MobileNet's stem at
batch 8 3.4 against 1.6 ms). The bias starts the accumulators; identity, Relu,
Clip, HardSigmoid and HardSwish, with a residual before or after, run on the vectors before their
masked stores (``_epilogue.finish16``), other activations over each finished band.

Limits (``supports``): group 1, at most :data:`MAX_INPUT_CHANNELS` input channels, width stride 1
or 2, a constant weight. Measured (AMD EPYC, 2 cores, AVX-512, in one process against ONNX
Runtime's one-node session): MobileNet's stem (3 -> 16, 3x3 stride 2, 224x224) 0.060 ms vs
0.090 at batch 1; ResNet's (3 -> 64, 7x7 stride 2) 1.52 vs 1.17-1.37 ms, near this CPU's FMA
bound. ``cpu.conv.direct_rows_1t`` is the same on the calling thread only.

Without AVX-512 the 16 accumulators of a block would spill AVX2's 16 ``ymm`` registers (each is
two), so there a block runs as four passes of four channels (:data:`QUADS`, ``_band_quads``),
each loading the taps again from L1. In-process A/B of the two forms on a 2-core AVX2 EPYC:
MobileNet's stem 0.199 -> 0.188 ms at batch 1 and 4.66 -> 3.42 ms at batch 8, ResNet's 3.56 ->
3.47 ms at batch 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    VECTOR_ACTS,
    epilogue_params,
    finish16,
    finish_row,
    residual_rows,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._operands import RunsBound, dense, memo, nothing
from farm.compiler.kernels.cpu._simd16 import AVX512, LANES, vbroadcast16, vfma16
from farm.compiler.kernels.cpu._threads import bound_call, numba_thread_count, threads_for
from farm.compiler.kernels.cpu.conv import CONV_OPS, ConvGeometry, _as_4d, _conv_node_ok, _out_4d, _weight_4d
from farm.compiler.kernels.cpu.depthwise_rows import _tap
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# Stems have 1-4 input channels; past this many the GEMM tactics' input reuse wins.
MAX_INPUT_CHANNELS = 8

QUAD = 4  # channels per pass without AVX-512
QUADS: bool = not AVX512
"""Run a 16-channel block as four passes of four channels (:func:`_band_quads`): without
AVX-512 the sixteen accumulators of one pass spill. Read when ``direct_rows_conv`` compiles."""


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _biases(bp, b):
    """bp[b], .., bp[b+15], each broadcast to a vector: the 16 accumulators' start."""
    return (
        vbroadcast16(bp, b), vbroadcast16(bp, b + 1), vbroadcast16(bp, b + 2), vbroadcast16(bp, b + 3),
        vbroadcast16(bp, b + 4), vbroadcast16(bp, b + 5), vbroadcast16(bp, b + 6), vbroadcast16(bp, b + 7),
        vbroadcast16(bp, b + 8), vbroadcast16(bp, b + 9), vbroadcast16(bp, b + 10), vbroadcast16(bp, b + 11),
        vbroadcast16(bp, b + 12), vbroadcast16(bp, b + 13), vbroadcast16(bp, b + 14), vbroadcast16(bp, b + 15),
    )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _fma16(a, t, wp, w):
    """a[q] += t * wp[w + q] for the 16 accumulators ``a``: one tap of 16 output channels."""
    return (
        vfma16(t, vbroadcast16(wp, w), a[0]), vfma16(t, vbroadcast16(wp, w + 1), a[1]),
        vfma16(t, vbroadcast16(wp, w + 2), a[2]), vfma16(t, vbroadcast16(wp, w + 3), a[3]),
        vfma16(t, vbroadcast16(wp, w + 4), a[4]), vfma16(t, vbroadcast16(wp, w + 5), a[5]),
        vfma16(t, vbroadcast16(wp, w + 6), a[6]), vfma16(t, vbroadcast16(wp, w + 7), a[7]),
        vfma16(t, vbroadcast16(wp, w + 8), a[8]), vfma16(t, vbroadcast16(wp, w + 9), a[9]),
        vfma16(t, vbroadcast16(wp, w + 10), a[10]), vfma16(t, vbroadcast16(wp, w + 11), a[11]),
        vfma16(t, vbroadcast16(wp, w + 12), a[12]), vfma16(t, vbroadcast16(wp, w + 13), a[13]),
        vfma16(t, vbroadcast16(wp, w + 14), a[14]), vfma16(t, vbroadcast16(wp, w + 15), a[15]),
    )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _band(xf, x_at, wp, w_at, bp, m0, of, o_at, count, oy0, oy1, res, ep, g, cin, kh, kw, sw):
    """Output rows oy0 .. oy1 of channels m0 .. m0+count (``count`` <= 16) of one image: input
    planes from xf[x_at], weight panel wp[w_at:] ([tap, 16]), output/residual planes from
    of[o_at] / res[o_at]; ``g`` = (H, W, Ho, Wo, stride h, pad top, pad left, dilation h, w)."""
    h, wi, ho, wo, sh, pt, pl, dh, dw = g
    plane = ho * wo
    for oy in range(oy0, oy1):
        for x0 in range(0, wo, LANES):
            c0 = x0 * sw - pl
            a = _biases(bp, m0)
            tap = w_at
            for c in range(cin):
                for i in range(kh):
                    iy = oy * sh + i * dh - pt
                    if iy < 0 or iy >= h:
                        tap += kw * LANES
                        continue
                    row = x_at + (c * h + iy) * wi
                    for j in range(kw):
                        a = _fma16(a, _tap(xf, row, c0 + j * dw, wi, sw), wp, tap + j * LANES)
                    tap += kw * LANES
            at = o_at + oy * wo + x0
            for q in range(LANES):
                if q < count:
                    finish16(a[q], of, at + q * plane, wo - x0, res, ep)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _fma4(a, t, wp, w):
    """a[q] += t * wp[w + q] for four accumulators ``a``: one tap of four output channels."""
    return (
        vfma16(t, vbroadcast16(wp, w), a[0]), vfma16(t, vbroadcast16(wp, w + 1), a[1]),
        vfma16(t, vbroadcast16(wp, w + 2), a[2]), vfma16(t, vbroadcast16(wp, w + 3), a[3]),
    )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _band_quads(xf, x_at, wp, w_at, bp, m0, of, o_at, count, oy0, oy1, res, ep, g, cin, kh, kw, sw):
    """:func:`_band` four channels at a time: four sixteen-lane accumulators (8 ``ymm``
    registers) where the sixteen of one pass would spill AVX2's 16; each pass loads the taps
    again (from L1)."""
    h, wi, ho, wo, sh, pt, pl, dh, dw = g
    plane = ho * wo
    for oy in range(oy0, oy1):
        for x0 in range(0, wo, LANES):
            c0 = x0 * sw - pl
            at = o_at + oy * wo + x0
            for q0 in range(0, count, QUAD):
                a = (
                    vbroadcast16(bp, m0 + q0), vbroadcast16(bp, m0 + q0 + 1),
                    vbroadcast16(bp, m0 + q0 + 2), vbroadcast16(bp, m0 + q0 + 3),
                )  # fmt: skip
                tap = w_at + q0
                for c in range(cin):
                    for i in range(kh):
                        iy = oy * sh + i * dh - pt
                        if iy < 0 or iy >= h:
                            tap += kw * LANES
                            continue
                        row = x_at + (c * h + iy) * wi
                        for j in range(kw):
                            a = _fma4(a, _tap(xf, row, c0 + j * dw, wi, sw), wp, tap + j * LANES)
                        tap += kw * LANES
                for q in range(QUAD):
                    if q0 + q < count:
                        finish16(a[q], of, at + (q0 + q) * plane, wo - x0, res, ep)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _band_any(xf, x_at, wp, w_at, bp, m0, of, o_at, count, oy0, oy1, res, ep, g, cin, kh, kw, sw):
    """:func:`_band` in one pass of 16 channels with AVX-512, else :func:`_band_quads`."""
    if QUADS:
        _band_quads(xf, x_at, wp, w_at, bp, m0, of, o_at, count, oy0, oy1, res, ep, g, cin, kh, kw, sw)
    else:
        _band(xf, x_at, wp, w_at, bp, m0, of, o_at, count, oy0, oy1, res, ep, g, cin, kh, kw, sw)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def direct_rows_conv(
    x, wp, bp, out, residual, res_mode, act, alpha, beta, m, ho, wo, kh, kw, geo, chunks, bands
):
    """Conv of ``x`` [N, C, H, W] into ``out`` [N*M*Ho*Wo] (flat) with the packed weight ``wp``
    [ceil(M/16), C*kh*kw, 16] and bias ``bp`` [ceil(M/16)*16]; ``residual`` flat like ``out`` or
    a dummy; ``geo`` = (stride h, stride w, pad top, pad left, dilation h, dilation w); tasks
    (image, channel block, one of ``bands`` row bands) split over ``chunks`` threads."""
    n, cin, h, wi = x.shape
    sh, sw, pt, pl, dh, dw = geo
    xf = x.reshape(-1)
    wf = wp.reshape(-1)
    blocks = wp.shape[0]
    panel = wp.shape[1] * LANES
    vector = act in VECTOR_ACTS  # else the caller's finish_row runs the activation
    ep = vector_epilogue(res_mode, act, alpha, beta)
    g = (h, wi, ho, wo, sh, pt, pl, dh, dw)
    tasks = n * blocks * bands
    for k in prange(chunks):
        for task in range(k * tasks // chunks, (k + 1) * tasks // chunks):
            img = task // (blocks * bands)
            blk = (task // bands) % blocks
            band = task % bands
            oy0 = band * ho // bands
            oy1 = (band + 1) * ho // bands
            count = min(LANES, m - blk * LANES)
            x_at = img * cin * h * wi
            o_at = (img * m + blk * LANES) * ho * wo
            m0 = blk * LANES
            w_at = blk * panel
            # the common kernels and strides as constants, so the taps and their masks unroll
            if kw == 3 and sw == 2:
                _band_any(
                    xf, x_at, wf, w_at, bp, m0, out, o_at, count, oy0, oy1, residual, ep, g, cin, kh, 3, 2
                )
            elif kw == 7 and sw == 2:
                _band_any(
                    xf, x_at, wf, w_at, bp, m0, out, o_at, count, oy0, oy1, residual, ep, g, cin, kh, 7, 2
                )
            else:
                _band_any(
                    xf, x_at, wf, w_at, bp, m0, out, o_at, count, oy0, oy1, residual, ep, g, cin, kh, kw, sw
                )
            if not vector:
                for q in range(count):
                    lo_at = o_at + q * ho * wo + oy0 * wo
                    hi_at = lo_at + (oy1 - oy0) * wo
                    rrow = residual[lo_at:hi_at] if res_mode != RES_NONE else residual
                    finish_row(out[lo_at:hi_at], np.float32(0.0), bp, 0, rrow, res_mode, act, alpha, beta)


def pack_weight(w: np.ndarray) -> np.ndarray:
    """[M, C, kh, kw] -> float32 [ceil(M/16), C*kh*kw, 16], zero-padded channels."""
    w4 = _weight_4d(np.asarray(w, np.float32))
    m = w4.shape[0]
    blocks = -(-m // LANES)
    padded = np.zeros((blocks * LANES, w4[0].size), np.float32)
    padded[:m] = w4.reshape(m, -1)
    return np.ascontiguousarray(padded.reshape(blocks, LANES, -1).transpose(0, 2, 1))


def pack_bias(b: np.ndarray | None, m: int) -> np.ndarray:
    """The bias zero-padded to whole 16-channel blocks (zeros when absent)."""
    out = np.zeros(-(-m // LANES) * LANES, np.float32)
    if b is not None:
        out[:m] = np.asarray(b, np.float32).reshape(-1)
    return out


@register_tactic
class DirectRowsConv(RunsBound, Tactic):
    """Direct conv of few-input-channel layers (stems): 16 channels x 16 columns in registers,
    one tap load per 16 FMAs, padding by lane masks (see the module docstring)."""

    name = "cpu.conv.direct_rows"
    op_types = CONV_OPS
    priority = 30

    def supports(self, node: Node, graph: Graph) -> bool:
        """A constant weight (and bias), a known channel count, and :meth:`geometry_ok`."""
        if not _conv_node_ok(node, graph):
            return False
        w = graph.const(node.input(1))
        x = graph.values[node.input(0)]
        if w is None or x.shape is None or len(x.shape) < 3 or not isinstance(x.shape[1], int):
            return False
        if node.input(2) and graph.const(node.input(2)) is None:
            return False
        return self.geometry_ok(x.shape[1], tuple(w.shape), ConvGeometry.of(node, list(w.shape)))

    def geometry_ok(self, channels: int, w_shape: tuple[int, ...], geo: ConvGeometry) -> bool:
        """Group 1, <= 8 input channels, width stride 1 or 2."""
        return geo.group == 1 and channels <= MAX_INPUT_CHANNELS and geo.sw in (1, 2)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """The weight packed (:meth:`pack`), the bias padded to whole 16-channel blocks."""
        w = graph.const(node.input(1))
        assert w is not None
        b = graph.const(node.input(2)) if node.input(2) else None
        prepared = Prepared(params={"weight_shape": list(w.shape)})
        prepared.tensors["weight"] = self.pack(w)
        prepared.tensors["bias"] = pack_bias(b, int(w.shape[0]))
        prepared.replaces = frozenset(i for i in (1, 2) if node.input(i))
        return prepared

    def pack(self, w: np.ndarray) -> np.ndarray:
        """The constant weight in this tactic's layout: 16-channel panels (:func:`pack_weight`)."""
        return pack_weight(w)

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays. Without ``copies`` (the runtime's binding), None when the
        input or the residual would have to be copied first."""
        geo, (act, alpha, beta, mode) = memo(
            prepared,
            "geometry",
            lambda: (ConvGeometry.of(node, prepared.params["weight_shape"]), epilogue_params(node)),
        )
        residual_in = inputs[3] if len(inputs) > 3 else None
        if not copies and (
            not dense(inputs[0]) or (residual_in is not None and not dense(residual_in, outputs[0].shape))
        ):
            return None
        x = np.ascontiguousarray(_as_4d(inputs[0]), np.float32)  # type: ignore[arg-type]
        out4 = _out_4d(outputs[0])
        n, m, ho, wo = out4.shape
        if out4.size == 0:
            return nothing
        residual = residual_rows(residual_in, outputs[0].shape, 1).reshape(-1)
        wp = np.asarray(prepared.tensors["weight"], np.float32)
        elements = out4.size * wp.shape[1] if self.parallel() else 0
        with threads_for(elements):
            tasks = n * wp.shape[0]
            bands = max(1, min(ho, -(-2 * numba_thread_count() // tasks)))  # two tasks a thread
            chunks = max(1, min(numba_thread_count(), tasks * bands))
            args = (
                x, wp, np.asarray(prepared.tensors["bias"], np.float32), out4.reshape(-1), residual,
                mode, act, alpha, beta, m, ho, wo, geo.kh, geo.kw,
                (geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw), chunks, bands,
            )  # fmt: skip
            return bound_call(direct_rows_conv, args, elements)

    def parallel(self) -> bool:
        """Whether the layer runs on numba's pool."""
        return True


@register_tactic
class SingleThreadDirectRowsConv(DirectRowsConv):
    """``cpu.conv.direct_rows`` on the calling thread only (small layers, busy hosts)."""

    name = "cpu.conv.direct_rows_1t"
    priority = 29

    def parallel(self) -> bool:
        return False
