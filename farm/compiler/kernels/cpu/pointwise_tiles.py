"""1x1 convs as register tiles with the epilogue on the vectors (``cpu.conv.pointwise_tiles``).

A strided 1 x 1 conv (a ResNet's downsample) first copies the pixels it reads into a dense
input, planes split over the threads, in a buffer the execution context keeps (a fraction of
the layer's arithmetic: 128 -> 256 at 28 x 28, stride 2, batch 1 0.93x ORT on the 2-core AVX2
EPYC, where the best tactic before took 1.06x); then it is the stride-1 case.
A 1 x 1, stride-1, unpadded conv is ``out[n, m, p] = sum_c W[m, c] * x[n, c, p]`` over the
pixels p of a plane. A tile is 12 output channels x 32 pixels in 24 sixteen-lane accumulators:
each input channel c adds two vector loads of x's row (32 consecutive pixels of channel c, read
where they lie) times 12 broadcast weights (the weight packed once into 12-channel panels
``[ceil(M/12), C, 12]``, :func:`~._microgemm.pack_rows`), 24 FMAs. After the last channel each
accumulator gets the channel's bias, the residual and the activation
(:func:`~._epilogue.finish16`) and is stored once, straight into the NCHW output: no tile
scratch, no second pass. A plane's ragged last 32 pixels use masked loads and stores (they do
not fault past the input); channels past M (the last panel's zero rows) are computed and not
stored.

``pointwise16`` runs the same multiply-adds on ``_microgemm``'s kernel, which blocks K by 128 and
finishes tiles through a scratch and a per-element store; with MobileNet's short K (16-120 input
channels) that store outweighs the arithmetic (16 -> 64 at 112 x 112: 28 GFLOP/s, 2-core Xeon).
Tasks are (image, 12-channel panel, run of 32-pixel panels): the weight panel (C x 12 floats)
stays in L1 while the task walks its pixels. A tile's walk down the channels reads one plane
apart, which the hardware prefetcher does not follow, so each step also prefetches the next
tile's two lines of that channel (``vprefetch``): MobileNetV2 at batch 1, whose 1 x 1 layers read
an input the previous layer left in the other core's L2 or in L3, ran 2.49 -> 2.13 ms
(in-process A/B, Xeon with AVX-512). LeakyRelu, which ``finish16`` lacks, runs over the
task's finished rows. Without AVX-512 (:data:`~._simd16.AVX512`) the 24 accumulators
would spill the 16 ``ymm`` registers, so there a tile runs as four 6-channel x 16-pixel quarters
(:func:`_quarter`); on a 2-core AVX2 EPYC the tuner then picked it for 7 of MobileNet's 1 x 1
layers and the model ran 5.5 % faster at batch 1 (in-process A/B).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    VECTOR_ACTS,
    epilogue_params,
    finish16,
    finish_row,
    residual_rows,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._microgemm import MR, pack_rows
from farm.compiler.kernels.cpu._operands import dense, in_order, memo, nothing, workspace
from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    LANES,
    called_tile,
    vadd16,
    vbroadcast16,
    vfma16,
    vload16_masked,
    vprefetch,
    vsplat16,
    vzero16,
)
from farm.compiler.kernels.cpu._stream import STREAM_BYTES, stream_in
from farm.compiler.kernels.cpu._threads import bound_call, numba_thread_count, threads_for
from farm.compiler.kernels.cpu.conv import ConvGeometry, _as_4d, _out_4d
from farm.compiler.kernels.cpu.conv_rows import DirectRowsConv
from farm.compiler.kernels.registry import Prepared, register_tactic

PIXELS = 2 * LANES  # pixels per tile

HALF = MR // 2  # channels per quarter tile (hosts without AVX-512)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _row_out(v0, v1, bias, m, of, at, n0, n1, res, ep):
    """Output channel ``m``'s two tile vectors: its bias, the epilogue, the first n0 / n1 lanes
    stored at of[at:] / of[at+16:] (none when the channel is past the layer's)."""
    b = vsplat16(bias[m])
    finish16(vadd16(v0, b), of, at, n0, res, ep)
    finish16(vadd16(v1, b), of, at + LANES, n1, res, ep)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _tile(xf, x_at, plane, cin, wf, w_at, bias, m0, m, of, o_at, ldo, n0, n1, res, ep):
    """12 channels from m0 x 32 pixels: x rows at xf[x_at + c*plane] (n0 + n1 valid pixels),
    weight panel wf[w_at:] ([cin, 12]), output at of[o_at + r*ldo] (``ldo`` is ``plane`` for a
    conv's output, a column buffer's row length for ConvTranspose's GEMM). With AVX-512 one pass in
    24 accumulators; without it four 6-channel x 16-pixel quarters (:func:`_quarter`), and the
    same quarters on AVX-512 for a plane's last 16 or fewer pixels (n1 = 0), which the 24
    accumulators would compute twice over: a 14 x 14 plane's 196 pixels cost 208 columns of
    FMAs instead of 224."""
    if AVX512 and n1 > 0:
        _tile_zmm(xf, x_at, plane, cin, wf, w_at, bias, m0, m, of, o_at, ldo, n0, n1, res, ep)
        return
    _quarter(xf, x_at, plane, cin, wf, w_at, bias, m0, m, of, o_at, ldo, n0, res, ep)
    if n1 > 0:
        _quarter(xf, x_at + LANES, plane, cin, wf, w_at, bias, m0, m, of, o_at + LANES, ldo, n1, res, ep)
    if m > m0 + HALF:
        w_half = w_at + HALF
        o_half = o_at + HALF * ldo
        _quarter(xf, x_at, plane, cin, wf, w_half, bias, m0 + HALF, m, of, o_half, ldo, n0, res, ep)
        if n1 > 0:
            _quarter(xf, x_at + LANES, plane, cin, wf, w_half, bias, m0 + HALF, m, of, o_half + LANES,
                     ldo, n1, res, ep)  # fmt: skip


@called_tile
def _quarter(xf, x_at, plane, cin, wf, w_at, bias, m0, m, of, o_at, ldo, n, res, ep):
    """6 channels from m0 (fewer where the layer's end, ``m``, is nearer) x 16 pixels (``n``
    valid) in six sixteen-lane accumulators: 12 ``ymm`` registers on an AVX2 host, with the
    input row's two halves and one broadcast 15 of its 16. The weight panel's row stride stays
    12 (``w_at`` points at the panel's first or second half)."""
    z = vzero16()
    a0 = a1 = a2 = a3 = a4 = a5 = z
    for c in range(cin):
        u = vload16_masked(xf, x_at + c * plane, n)
        w = w_at + c * MR
        a0 = vfma16(vbroadcast16(wf, w), u, a0)
        a1 = vfma16(vbroadcast16(wf, w + 1), u, a1)
        a2 = vfma16(vbroadcast16(wf, w + 2), u, a2)
        a3 = vfma16(vbroadcast16(wf, w + 3), u, a3)
        a4 = vfma16(vbroadcast16(wf, w + 4), u, a4)
        a5 = vfma16(vbroadcast16(wf, w + 5), u, a5)
    rows = m - m0
    finish16(vadd16(a0, vsplat16(bias[m0])), of, o_at, n, res, ep)
    if rows > 1:
        finish16(vadd16(a1, vsplat16(bias[m0 + 1])), of, o_at + ldo, n, res, ep)
    if rows > 2:
        finish16(vadd16(a2, vsplat16(bias[m0 + 2])), of, o_at + 2 * ldo, n, res, ep)
    if rows > 3:
        finish16(vadd16(a3, vsplat16(bias[m0 + 3])), of, o_at + 3 * ldo, n, res, ep)
    if rows > 4:
        finish16(vadd16(a4, vsplat16(bias[m0 + 4])), of, o_at + 4 * ldo, n, res, ep)
    if rows > 5:
        finish16(vadd16(a5, vsplat16(bias[m0 + 5])), of, o_at + 5 * ldo, n, res, ep)


@called_tile
def _tile_zmm(xf, x_at, plane, cin, wf, w_at, bias, m0, m, of, o_at, ldo, n0, n1, res, ep):
    """:func:`_tile` in one pass: 24 accumulators (AVX-512's 32 registers).

    A :func:`~._simd16.called_tile`: inlined, ``pointwise_tiles_conv`` took 82 s to compile
    (cold cache, 2-core Xeon), called 16 s, at 0.92-1.04x the inlined kernel's time."""
    z = vzero16()
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = z
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = b10 = b11 = z
    for c in range(cin):
        at = x_at + c * plane
        u = vload16_masked(xf, at, n0)
        v = vload16_masked(xf, at + LANES, n1)
        vprefetch(xf, at + PIXELS)  # the next tile's pixels of this channel
        vprefetch(xf, at + PIXELS + LANES)
        w = w_at + c * MR
        s = vbroadcast16(wf, w)
        a0 = vfma16(s, u, a0)
        b0 = vfma16(s, v, b0)
        s = vbroadcast16(wf, w + 1)
        a1 = vfma16(s, u, a1)
        b1 = vfma16(s, v, b1)
        s = vbroadcast16(wf, w + 2)
        a2 = vfma16(s, u, a2)
        b2 = vfma16(s, v, b2)
        s = vbroadcast16(wf, w + 3)
        a3 = vfma16(s, u, a3)
        b3 = vfma16(s, v, b3)
        s = vbroadcast16(wf, w + 4)
        a4 = vfma16(s, u, a4)
        b4 = vfma16(s, v, b4)
        s = vbroadcast16(wf, w + 5)
        a5 = vfma16(s, u, a5)
        b5 = vfma16(s, v, b5)
        s = vbroadcast16(wf, w + 6)
        a6 = vfma16(s, u, a6)
        b6 = vfma16(s, v, b6)
        s = vbroadcast16(wf, w + 7)
        a7 = vfma16(s, u, a7)
        b7 = vfma16(s, v, b7)
        s = vbroadcast16(wf, w + 8)
        a8 = vfma16(s, u, a8)
        b8 = vfma16(s, v, b8)
        s = vbroadcast16(wf, w + 9)
        a9 = vfma16(s, u, a9)
        b9 = vfma16(s, v, b9)
        s = vbroadcast16(wf, w + 10)
        a10 = vfma16(s, u, a10)
        b10 = vfma16(s, v, b10)
        s = vbroadcast16(wf, w + 11)
        a11 = vfma16(s, u, a11)
        b11 = vfma16(s, v, b11)
    rows = m - m0  # channels of this panel that exist (12 but in the last panel)
    _row_out(a0, b0, bias, m0, of, o_at, n0, n1, res, ep)
    if rows > 1:
        _row_out(a1, b1, bias, m0 + 1, of, o_at + ldo, n0, n1, res, ep)
    if rows > 2:
        _row_out(a2, b2, bias, m0 + 2, of, o_at + 2 * ldo, n0, n1, res, ep)
    if rows > 3:
        _row_out(a3, b3, bias, m0 + 3, of, o_at + 3 * ldo, n0, n1, res, ep)
    if rows > 4:
        _row_out(a4, b4, bias, m0 + 4, of, o_at + 4 * ldo, n0, n1, res, ep)
    if rows > 5:
        _row_out(a5, b5, bias, m0 + 5, of, o_at + 5 * ldo, n0, n1, res, ep)
    if rows > 6:
        _row_out(a6, b6, bias, m0 + 6, of, o_at + 6 * ldo, n0, n1, res, ep)
    if rows > 7:
        _row_out(a7, b7, bias, m0 + 7, of, o_at + 7 * ldo, n0, n1, res, ep)
    if rows > 8:
        _row_out(a8, b8, bias, m0 + 8, of, o_at + 8 * ldo, n0, n1, res, ep)
    if rows > 9:
        _row_out(a9, b9, bias, m0 + 9, of, o_at + 9 * ldo, n0, n1, res, ep)
    if rows > 10:
        _row_out(a10, b10, bias, m0 + 10, of, o_at + 10 * ldo, n0, n1, res, ep)
    if rows > 11:
        _row_out(a11, b11, bias, m0 + 11, of, o_at + 11 * ldo, n0, n1, res, ep)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def pointwise_tiles_conv(x, wp, bias, out, residual, res_mode, act, alpha, beta, m, runs, chunks, stream):
    """``out`` [N*M*P] (flat) = epilogue(W @ x) per image, x [N, C, P] (a plane flattened), the
    weight as A panels ``wp`` (flat [ceil(M/12), C, 12]), ``bias`` [>= M]; ``residual`` flat like
    ``out`` or a dummy. Tasks (image, 12-channel panel, one of ``runs`` runs of 32-pixel panels)
    over ``chunks`` threads. ``stream``: each task first reads its pixels of every input channel
    once in order (``_stream``: the tiles' walk down the channels, one plane apart, defeats the
    prefetcher when the input is not in cache)."""
    n, cin, plane = x.shape
    xf = x.reshape(-1)
    panels = -(-m // MR)
    pixel_panels = -(-plane // PIXELS)
    vector = act in VECTOR_ACTS  # else finish_row runs the activation afterwards
    ep = vector_epilogue(res_mode, act, alpha, beta)
    tasks = n * panels * runs
    for k in prange(chunks):
        sink = np.zeros(LANES, np.float32)
        for task in range(k * tasks // chunks, (k + 1) * tasks // chunks):
            img = task // (panels * runs)
            blk = (task // runs) % panels
            run = task % runs
            j0 = run * pixel_panels // runs
            j1 = (run + 1) * pixel_panels // runs
            m0 = blk * MR
            x_at = img * cin * plane
            if stream:
                span = min(plane, j1 * PIXELS) - j0 * PIXELS
                for c in range(cin):
                    stream_in(xf, x_at + c * plane + j0 * PIXELS, span, sink)
            o_base = (img * m + m0) * plane
            for j in range(j0, j1):
                p0 = j * PIXELS
                left = plane - p0
                n0 = min(left, LANES)
                n1 = min(max(left - LANES, 0), LANES)
                _tile(xf, x_at + p0, plane, cin, wp, blk * cin * MR, bias, m0, min(m, m0 + MR), out,
                      o_base + p0, plane, n0, n1, residual, ep)  # fmt: skip
            if not vector:
                p0 = j0 * PIXELS
                p1 = min(plane, j1 * PIXELS)
                for r in range(min(MR, m - m0)):
                    lo = o_base + r * plane + p0
                    hi = lo + p1 - p0
                    rrow = residual[lo:hi] if res_mode != RES_NONE else residual
                    finish_row(out[lo:hi], np.float32(0.0), bias, 0, rrow, res_mode, act, alpha, beta)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def take_strided(x, out, sh, sw):
    """``out[i, c, oy, ox] = x[i, c, oy*sh, ox*sw]`` for out's shape: a strided 1 x 1 conv's input
    pixels, planes split over the threads (numpy's strided copy ran on one thread, and ResNet-18's
    downsample at batch 1 spent 0.21 ms in the model on the copy and the tiles)."""
    n, c, ho, wo = out.shape
    for t in prange(n * c):
        i = t // c
        j = t % c
        for oy in range(ho):
            row = x[i, j, oy * sh]
            dst = out[i, j, oy]
            for ox in range(wo):
                dst[ox] = row[ox * sw]


def tile_tasks(n_img: int, m: int, plane: int) -> tuple[int, int]:
    """(runs, chunks) of the (image, 12-channel panel, run of 32-pixel panels) tasks of a conv
    on channel x pixel tiles: about four tasks a thread, spread over at most the threads numba
    runs now (call it inside the ``threads_for`` region)."""
    threads = numba_thread_count()
    tasks = n_img * -(-m // MR)
    pixel_panels = -(-plane // PIXELS)
    runs = max(1, min(pixel_panels, -(-4 * threads // tasks)))
    return runs, max(1, min(threads, tasks * runs))


@register_tactic
class PointwiseTilesConv(DirectRowsConv):
    """1x1 conv on 12-channel x 32-pixel register tiles, epilogue on the vectors (module doc)."""

    name = "cpu.conv.pointwise_tiles"
    priority = 9  # the tuner times it; level 0 keeps the BLAS tactics

    def geometry_ok(self, channels: int, w_shape: tuple[int, ...], geo: ConvGeometry) -> bool:
        """Group 1, a 1 x 1 kernel, no padding (any stride: a strided layer, such as a ResNet's
        downsample, first copies the pixels it reads into a dense input)."""
        pads = (geo.pad_top, geo.pad_left, geo.pad_bottom, geo.pad_right)
        return geo.group == 1 and all(d == 1 for d in w_shape[2:]) and not any(pads)

    def pack(self, w: np.ndarray) -> np.ndarray:
        """12-channel A panels (:func:`~._microgemm.pack_rows`)."""
        return pack_rows(np.asarray(w, np.float32).reshape(w.shape[0], -1))

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        call = self.bind(node, inputs, outputs, prepared)
        if call is None:  # a strided layer or a broadcast residual: make the dense operands first
            geo = self._geometry(node, prepared)[1]
            ho, wo = _out_4d(outputs[0]).shape[2:]
            x4 = _as_4d(inputs[0])  # type: ignore[arg-type]
            x4 = x4[:, :, : (ho - 1) * geo.sh + 1 : geo.sh, : (wo - 1) * geo.sw + 1 : geo.sw]
            operands = [np.ascontiguousarray(x4, np.float32), *inputs[1:3]]
            if len(inputs) > 3:
                operands.append(residual_rows(inputs[3], outputs[0].shape, 1).reshape(outputs[0].shape))
            call = self.bind(node, operands, outputs, prepared, strided=False)
        if call is not None:
            call()

    @staticmethod
    def _geometry(node: Node, prepared: Prepared) -> tuple[tuple[int, float, float, int], ConvGeometry]:
        return memo(
            prepared,
            "epilogue",
            lambda: (epilogue_params(node), ConvGeometry.of(node, prepared.params["weight_shape"])),
        )

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        strided: bool = True,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays, or None when the input must first be copied (a strided
        layer with ``strided``, a non-contiguous input) or the residual broadcast."""
        (act, alpha, beta, mode), geo = self._geometry(node, prepared)
        x4 = _as_4d(inputs[0])  # type: ignore[arg-type]
        out4 = _out_4d(outputs[0])
        n, m, ho, wo = out4.shape
        if out4.size == 0:
            return nothing
        if strided and (geo.sh, geo.sw) != (1, 1):
            if not dense(x4):
                return None
            # the pixels the layer reads, gathered on every core into a buffer of this context
            picked = workspace(prepared, "strided_input", (n, x4.shape[1], ho, wo))
            call = self.bind(node, [picked, *inputs[1:]], outputs, prepared, strided=False)
            if call is None:
                return None
            with threads_for(picked.size):
                gather = bound_call(take_strided, (x4, picked, geo.sh, geo.sw), picked.size)
            return in_order(gather, call)
        residual_in = inputs[3] if len(inputs) > 3 else None
        if not dense(x4) or (residual_in is not None and not dense(residual_in, outputs[0].shape)):
            return None
        plane = ho * wo
        residual = residual_rows(residual_in, outputs[0].shape, 1).reshape(-1)
        cin = x4.shape[1]
        elements = out4.size * cin
        with threads_for(elements):
            runs, chunks = tile_tasks(n, m, plane)
            args = (
                x4.reshape(n, cin, plane), np.asarray(prepared.tensors["weight"], np.float32),
                np.asarray(prepared.tensors["bias"], np.float32), out4.reshape(-1), residual, mode, act, alpha,
                beta, m, runs, chunks, x4.nbytes > STREAM_BYTES,
            )  # fmt: skip
            return bound_call(pointwise_tiles_conv, args, elements)
