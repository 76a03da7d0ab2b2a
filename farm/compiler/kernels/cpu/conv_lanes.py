"""Conv with output channels across the vector lanes: ``cpu.conv.channel_lanes``.

The input is copied once per run into its zero-padded stride phases, as ``conv_packed`` does
(:func:`~.conv_packed.build_phases`; output pixel (oy, ox) reads kernel row k at a fixed offset
``offs[k]`` from wide pixel ``oy*wq + ox``), and the weight is packed once into 32-channel
panels ``[ceil(M/32), K, 32]``. The output rows are cut into *segments* of 7 pixels, the
segments of the whole batch numbered in order (image, row, column) and taken in pairs: one
pair x one channel panel is a 14 x 32 tile of ``_lanegemm`` (an odd last segment: a 7 x 32 one).
K runs in the order of its rows' addresses in the phase buffer (:func:`~.conv_packed.address_order`).

A task is one channel panel x a run of consecutive tiles (:func:`task_split`), K in blocks of
:data:`KC` with each weight block used for all of the run's tiles while it is in L1, so a late
layer at any batch size reads its weight from memory once per run. The task's first tile over a
block prefetches the next block into L2 (``vprefetch_l2``, two lines per K step): in a whole
ResNet-18 run the weights come from L3 or memory, and layer4's 512 @7 convs went from 0.89 to
0.70 ms in the model at batch 1 (Xeon with AVX-512, in-process A/B). Tiles accumulate in a task
scratch (pixel-major) and then go out to their NCHW pixels through an in-register transpose
(:func:`_store_segment`): one 7-lane store per channel and segment, bias added before the
transpose, residual and a ``VECTOR_ACTS`` activation after it (LeakyRelu: a scalar copy, then
``finish_row`` per segment).

Where it wins (one thread each, interleaved with ORT on a Zen 5 EPYC): ResNet's 512 @7 3x3 conv
1.55 -> 1.04x ORT, 256 @14 1.26 -> 1.08x, the 7x7 stem 1.36 -> 1.18x (docs/KERNELS.md,
*Channels in the lanes*). Offered on AVX-512 hosts only: with sixteen ``ymm`` registers its 28
accumulators would spill.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    RES_POST,
    RES_PRE,
    VECTOR_ACTS,
    activate16,
    finish_row,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._lanegemm import LANES32, SEG, TILE, pack_lanes, tile_7x32, tile_14x32
from farm.compiler.kernels.cpu._operands import in_order, memo
from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    LANES,
    vadd16,
    vload16,
    vload16_lanes,
    vload16_masked,
    vstore16_lanes,
    vstore16_masked,
    vtranspose8x16,
)
from farm.compiler.kernels.cpu._threads import numba_thread_count
from farm.compiler.kernels.cpu.conv import ConvGeometry
from farm.compiler.kernels.cpu.conv_packed import PackedConv, address_order
from farm.compiler.kernels.registry import Prepared, register_tactic

KC = 256  # K per block: a panel's weight block (32 KiB) stays in L1 across the task's tiles
MAX_RUN = 32  # tiles per task at most: their scratch (56 KiB) stays in L2
OFFERED: bool = AVX512  # tests switch it on to check the kernel on any host


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def conv_lanes(
    buf, image_size, offs, wp, m, wq, wo, bias32, residual, res_mode, act, alpha, beta, out, runs, vector,
):  # fmt: skip
    """out [N*M, Ho*Wo] (NCHW rows) = the conv over the phases in ``buf`` (image n's kernel row
    k of wide pixel v at ``buf[n*image_size + offs[k] + v]``) with the weight panels ``wp``
    (:func:`~._lanegemm.pack_lanes`, M channels), plus ``bias32`` (the bias, zeros past M and
    where there is none: one vector per 16 channels); ``residual`` [N*M, Ho*Wo] or a dummy;
    ``vector``: the activation is one of ``VECTOR_ACTS`` and goes into the vector stores (the
    others: a scalar copy, then ``finish_row``). Each channel panel's tiles are split into
    ``runs`` runs, one task each."""
    k = offs.shape[0]
    n_count = out.shape[0] // m
    ho = out.shape[1] // wo
    per_row = (wo + SEG - 1) // SEG
    segs = ho * per_row  # per image
    total = n_count * segs
    tiles = (total + 1) // 2
    panels = (m + LANES32 - 1) // LANES32
    per_run = (tiles + runs - 1) // runs
    for t in prange(panels * runs):
        i = t // runs
        t0 = (t % runs) * per_run
        t1 = min(tiles, t0 + per_run)
        if t0 >= t1:
            continue
        scratch = np.empty((t1 - t0) * TILE, np.float32)
        for k0 in range(0, k, KC):
            kk = min(KC, k - k0)
            w0 = (i * k + k0) * LANES32
            ahead = KC * LANES32 if k0 + KC < k else 0
            for tt in range(t0, t1):
                g = 2 * tt
                va = _wide_start(g, segs, per_row, image_size, wq)
                pf = ahead if tt == t0 else 0
                if g + 1 < total:
                    vb = _wide_start(g + 1, segs, per_row, image_size, wq)
                    tile_14x32(buf, va, vb - va, offs, k0, kk, wp, w0, scratch, (tt - t0) * TILE, k0 > 0, pf)
                else:
                    tile_7x32(buf, va, offs, k0, kk, wp, w0, scratch, (tt - t0) * TILE, k0 > 0, pf)
        ep = vector_epilogue(res_mode, act, alpha, beta)
        for g in range(2 * t0, min(total, 2 * t1)):
            n = g // segs
            r = g % segs
            ox = (r % per_row) * SEG
            pix = (r // per_row) * wo + ox
            src = (g - 2 * t0) * SEG * LANES32
            count = min(SEG, wo - ox)
            if vector:
                _store_segment(scratch, src, bias32, i, n, m, pix, count, out, residual, ep)
                continue
            for mm in range(i * LANES32, min(m, i * LANES32 + LANES32)):  # the rest: per value, per row
                row = n * m + mm
                s = src + mm - i * LANES32
                for j in range(count):
                    out[row, pix + j] = scratch[s + j * LANES32]
                res = residual[row, pix : pix + count] if res_mode != RES_NONE else residual[0]
                finish_row(
                    out[row, pix : pix + count], bias32[mm], bias32, 1, res, res_mode, act, alpha, beta
                )


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"contract"})
def _store_segment(scratch, src, bias32, i, n, m, pix, count, out, residual, ep):
    """One segment's 7 x 32 values (pixel-major at ``scratch[src:]``, row stride 32) into out
    [N*M, P] at pixel ``pix`` of image n (``count`` of its 7 pixels exist), channels of panel
    i: bias added with channels across the lanes, then each 16-channel half transposed in
    registers (:func:`~._simd16.vtranspose8x16`: vector ii is pixels 0-7 of channels ii and
    ii+8) and stored a channel row at a time through the epilogue ``ep`` (residual and
    activation), where the scalar copy cost 1.4 ns a value, as much as the tile's FMAs at K 576."""
    hw = out.shape[1]
    for h in range(2):
        c0 = i * LANES32 + h * LANES
        if c0 >= m:
            break
        bv = vload16(bias32, c0)
        at = src + h * LANES
        v6 = vadd16(vload16(scratch, at + 6 * LANES32), bv)
        t = vtranspose8x16(
            vadd16(vload16(scratch, at), bv),
            vadd16(vload16(scratch, at + LANES32), bv),
            vadd16(vload16(scratch, at + 2 * LANES32), bv),
            vadd16(vload16(scratch, at + 3 * LANES32), bv),
            vadd16(vload16(scratch, at + 4 * LANES32), bv),
            vadd16(vload16(scratch, at + 5 * LANES32), bv),
            v6,
            v6,
        )
        for ii in range(8):
            ca = c0 + ii
            if ca >= m:
                break
            cb = ca + 8
            nb = count if cb < m else 0
            da = (n * m + ca) * hw + pix
            db = (n * m + cb) * hw + pix - 8  # the upper half's lanes 8.. land at pixel pix..
            v = t[ii]
            if ep[0] != RES_NONE:
                rv = vadd16(vload16_masked(residual, da, count), vload16_lanes(residual, db, 8, 8 + nb))
                if ep[0] == RES_PRE:
                    v = vadd16(v, rv)
                v = activate16(v, ep)
                if ep[0] == RES_POST:
                    v = vadd16(v, rv)
            else:
                v = activate16(v, ep)
            vstore16_masked(out, da, v, count)
            if nb:
                vstore16_lanes(out, db, v, 8, 8 + nb)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _wide_start(g, segs, per_row, image_size, wq):
    """Where segment g of the batch starts in the phase buffer: image, row and column."""
    n = g // segs
    r = g % segs
    return n * image_size + (r // per_row) * wq + (r % per_row) * SEG


def padded_bias(bias: np.ndarray, has_bias: bool, m: int) -> np.ndarray:
    """The bias as whole 32-channel panels: zeros past M, all zeros without a bias."""
    out = np.zeros(-(-m // LANES32) * LANES32, np.float32)
    if has_bias:
        out[:m] = bias[:m]
    return out


def task_split(n: int, m: int, ho: int, wo: int, threads: int) -> int:
    """Runs of tiles per channel panel: enough tasks for four per thread where the tiles allow,
    each run at most :data:`MAX_RUN` tiles (a 7 x 7 map at batch 1 is 4 tiles: one run, so each
    of 512 channels' 16 panels reads its weight once)."""
    tiles = -(-n * ho * -(-wo // SEG) // 2)
    panels = -(-m // LANES32)
    want = -(-4 * max(threads, 1) // panels)
    return max(1, min(tiles, max(want, -(-tiles // MAX_RUN))))


@register_tactic
class ChannelLanesConv(PackedConv):
    """Output channels in the lanes, 14 pixels (two 7-pixel row segments) broadcast: a 14 x 32
    register tile over the input's stride phases, weight packed once (group 1, constant
    weight, kernel larger than 1 x 1, AVX-512)."""

    name = "cpu.conv.channel_lanes"

    def supports(self, node: Node, graph: Graph) -> bool:
        return OFFERED and super().supports(node, graph)

    def _conv(
        self, prepared: Prepared, geo: ConvGeometry, x: np.ndarray, w2: np.ndarray, bias: np.ndarray,
        has_bias: bool, residual: np.ndarray, epilogue: tuple[int, float, float, int], out: np.ndarray,
    ) -> Callable[[], None]:  # fmt: skip
        n, m, ho, wo = out.shape
        b, copy_in = self.b_operand(prepared, geo, x, ho, wo)
        threads = numba_thread_count()
        runs = memo(prepared, ("lane_runs", n, ho, wo, threads), lambda: task_split(n, m, ho, wo, threads))
        order, offsets = address_order(prepared, b.offsets)
        panels = memo(prepared, ("lane_panels", order.tobytes()), lambda: pack_lanes(w2[:, order].copy()))
        bias32 = memo(prepared, "lane_bias", lambda: padded_bias(bias, has_bias, m))
        act, alpha, beta, mode = epilogue
        return in_order(*copy_in, functools.partial(
            conv_lanes,
            b.buf, b.image_size, offsets, panels, m, b.wq, b.wo, bias32, residual, mode, act, alpha, beta,
            out.reshape(n * m, ho * wo), runs, act in VECTOR_ACTS,
        ))  # fmt: skip
