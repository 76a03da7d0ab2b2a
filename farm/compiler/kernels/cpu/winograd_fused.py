"""Winograd conv with every stage of a tile group in one task: ``cpu.conv.winograd_fused``.

``cpu.conv.winograd`` runs its three stages over the whole batch one after the other: the
input transform writes V ``[a*a, C, tiles]``, BLAS multiplies it into M ``[a*a, K, tiles]``,
the output transform reads M back. For ResNet's 64 @56 layer at batch 8 V and M are 14 MB
each, so every stage streams memory, and the GEMMs (K = C = 64) run at ~100 GFLOP/s in
OpenBLAS. Two threads took 5.1 ms where one took 9.9 (Xeon, 2 cores).

Here the output tiles are cut into *groups* of at most a few hundred tiles: a band of tile
rows of one image, or several whole images where a plane has few tiles. One task is one group
x one run of 12-channel output panels, and does all three stages for it on its own thread:

1. the input transform of the group's tiles (:func:`input_tiles16`, per channel, 16 tiles in
   the vector lanes), into a task workspace V, channel-major ``[C, a*a, cols]`` (``cols``: the
   group's tiles rounded up to 32; channels :func:`channel_stride` apart);
2. for each of the a*a points and each output panel, ``M = U[xi] V[xi]`` on ``_microgemm``'s
   12 x 32 register tile: U is packed once at build time into 12-channel A panels, V's rows
   are the B panel read in place (row offsets ``c * channel_stride``);
3. the output transform (:func:`output_tiles16`) and the fused epilogue, channel by
   channel, into the NCHW output.

V and M stay in the core's L2 where the plan (:func:`plan_groups`) can keep them there, nothing
crosses between threads, and the GEMMs run on the register tile. A group is transformed once
per panel run, so the plan cuts the panels into runs only where that pays.
F(4x4, 3x3) (``cpu.conv.winograd_fused``) and F(2x2, 3x3) (``cpu.conv.winograd_fused_f2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Node
from farm.compiler.kernels.cpu._epilogue import epilogue_params, finish_row, residual_rows, vector_or_dummy
from farm.compiler.kernels.cpu._microgemm import MR, NR, pack_rows, tile_12x32
from farm.compiler.kernels.cpu._operands import memo, workspace
from farm.compiler.kernels.cpu._simd16 import (
    LANES,
    vadd16,
    vevens16,
    vload16,
    vload16_lanes,
    vmul16,
    vodds16,
    vsplat16,
    vstore16,
    vstore16_masked,
    vsub16,
    vziphi16,
    vziplo16,
)
from farm.compiler.kernels.cpu._threads import numba_thread_count
from farm.compiler.kernels.cpu.conv import ConvGeometry
from farm.compiler.kernels.cpu.winograd import _FAST, WinogradConv, transform_filter
from farm.compiler.kernels.registry import Prepared, register_tactic

SLAB_BUDGET = 256 << 10  # bytes of one point's V slab (C x cols) at most: it stays in L2
MAX_COLS = 256  # tiles per group at most


class Grouping(NamedTuple):
    """How the output tiles are cut into groups: ``band`` tile rows of one image per group
    (``band`` > 0), else ``images`` whole images per group; ``cols`` is the widest group's
    tile count rounded up to 32 (V's and M's row stride); ``runs`` the output-panel runs."""

    band: int
    images: int
    groups: int
    cols: int
    runs: int


# The plan's cost model, per thread, in ns (2-core Xeon and Zen 5 figures, rounded):
GEMM_NS_PER_FLOP = 1 / 145  # the 12 x 32 register tile on one core
U_NS_PER_BYTE = 0.1  # U streamed from memory (~10 GB/s a core): in a model it is never cached
INPUT_NS_PER_VALUE = 0.35  # input_tiles16, per V value
OUTPUT_NS_PER_VALUE = 0.5  # output_tiles16 + epilogue, per output value
L2_BYTES = 1 << 21  # a task's V and M beyond this spill to L3 ...
SPILL_NS_PER_BYTE = 0.3  # ... and are written and read back from there (measured: 4 GB/s)
REMOTE_NS_PER_BYTE = 0.4  # input or output that crosses to another core's cache, in a model


def plan_groups(n: int, th: int, tw: int, c: int, a: int, panels: int, threads: int) -> Grouping:
    """The grouping and panel runs with the least modelled time on ``threads`` threads.

    Candidates: bands of 1 .. th tile rows, and 1 .. n whole images per group, each group's
    columns rounded up to 32, one point's V slab (C x cols floats, what the GEMMs of a point
    reuse across the output panels) within :data:`SLAB_BUDGET` where 32 columns allow; and
    1 .. panels runs of output panels. A task's time (constants above) is its GEMMs
    (padding included), its run's share of U, read once per task (so fewer, wider groups read
    U fewer times: 512 channels at 7 x 7 is 16.7 MB of U for F(2x2)), its group's input
    transform (repeated by every run; a band of b tile rows gathers b + 1), its output
    transform, and the part of its V and M that does not fit in L2, written to L3 and read
    back. The whole takes as long as the busiest worker, which takes every ``threads``-th task
    (:func:`winograd_fused`'s static schedule).

    Runs cost more than their arithmetic in a model: with runs every worker transforms the
    group's whole input and writes only its own output channels, so each layer reads most of its
    input from, and leaves most of its output for, another core's cache (``REMOTE_NS_PER_BYTE``,
    fitted to the next measurements); one run per group reads and writes its own band of rows,
    where the next Winograd layer's band reads it. Timed on layers alone, the model without that
    term chose two runs over two bands for ResNet-18's 3x3 layers at batch 1 (half of U per
    worker); in the whole model, two bands ran the 64 @56 layers 15-20 % and the 128 @28 ones
    about 5 % faster (Xeon with AVX-512, in-process A/B). Where U is large (512 channels at 7 x 7,
    batch 8: 38 MB), runs still win: there two runs per group were 2 % faster on the whole model."""
    tpi = th * tw
    aa = a * a
    m = a - 2
    limit = max(NR, min(MAX_COLS, (SLAB_BUDGET // (4 * c)) // NR * NR))
    u_bytes = aa * panels * MR * c * 4
    best: tuple[float, Grouping] | None = None
    candidates: list[tuple[int, int]] = [(b, 1) for b in range(1, th + 1)]
    candidates += [(0, i) for i in range(2, n + 1)]
    for band, images in candidates:
        if band:
            per_image = -(-th // band)
            sizes = [min(band, th - i * band) * tw for i in range(per_image)] * n
            gathered = n * (th + per_image) * tw  # tiles gathered: each band's own rows plus one
        else:
            count = -(-n // images)
            sizes = [min(images, n - g * images) * tpi for g in range(count)]
            gathered = n * (th + 1) * tw
        cols = -(-max(sizes) // NR) * NR
        if cols > limit and not (band == 1 and images == 1):
            continue
        groups = len(sizes)
        padded = [-(-z // NR) * NR for z in sizes]
        gathered_per_group = gathered / groups
        for runs in range(1, panels + 1):
            per_run = -(-panels // runs)
            if runs > 1 and -(-panels // (runs - 1)) == per_run:
                continue  # the same runs as one fewer
            spill = max(0, aa * (c + per_run * MR) * cols * 4 - L2_BYTES) * SPILL_NS_PER_BYTE
            fixed = (
                u_bytes * per_run / panels * U_NS_PER_BYTE + gathered_per_group * c * aa * INPUT_NS_PER_VALUE
            )
            per_col = (
                aa * per_run * MR * c * 2 * GEMM_NS_PER_FLOP + per_run * MR * m * m * OUTPUT_NS_PER_VALUE
            )
            # With runs, a task reads its group's whole input and writes only its run's
            # channels: in a model all but 1/threads of both lie in (or go to) another core's
            # cache. One run per group reads and writes its own band (see the docstring).
            remote = REMOTE_NS_PER_BYTE * (threads - 1) / threads if runs > 1 else 0.0
            across = remote * gathered_per_group * m * m * c * 4
            per_col_across = per_col + remote * m * m * per_run * MR * 4
            tasks = [fixed + spill + across + z * per_col_across for z in padded for _ in range(runs)]
            cost = max(sum(tasks[w::threads]) for w in range(min(threads, len(tasks))))
            if best is None or cost < best[0]:
                best = (cost, Grouping(band, images if not band else 1, groups, cols, runs))
            if len(tasks) >= 4 * threads:
                break
    assert best is not None
    return best[1]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _at4v(m0, m1, m2, m3, m4, m5):
    """A^T m for F(4, 3) on six vectors, lane by lane."""
    two, four, eight = vsplat16(2.0), vsplat16(4.0), vsplat16(8.0)
    s12, d12 = vadd16(m1, m2), vsub16(m1, m2)
    s34, d34 = vadd16(m3, m4), vsub16(m3, m4)
    return (
        vadd16(vadd16(m0, s12), s34),
        vadd16(d12, vmul16(two, d34)),
        vadd16(s12, vmul16(four, s34)),
        vadd16(vadd16(d12, vmul16(eight, d34)), m5),
    )


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _store4(plane, at, y0, y1, y2, y3, count):
    """Four vectors of 16 tiles' outputs p = 0 .. 3 (tile-major: y_p lane l is pixel 4l + p of
    the row) interleaved into 64 consecutive floats at ``plane[at:]``, the first ``count``."""
    u0, u1 = vziplo16(y0, y2), vziphi16(y0, y2)
    v0, v1 = vziplo16(y1, y3), vziphi16(y1, y3)
    vstore16_masked(plane, at, vziplo16(u0, v0), max(0, min(LANES, count)))
    vstore16_masked(plane, at + 16, vziphi16(u0, v0), max(0, min(LANES, count - 16)))
    vstore16_masked(plane, at + 32, vziplo16(u1, v1), max(0, min(LANES, count - 32)))
    vstore16_masked(plane, at + 48, vziphi16(u1, v1), max(0, min(LANES, count - 48)))


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _column4(mf, t, step):
    """A^T down column j of 16 F(4x4) tiles: the vectors of points j, 6 + j, .., 30 + j, which
    are ``mf[t + 6*i*step]`` (t at point j)."""
    return _at4v(
        vload16(mf, t), vload16(mf, t + 6 * step), vload16(mf, t + 12 * step),
        vload16(mf, t + 18 * step), vload16(mf, t + 24 * step), vload16(mf, t + 30 * step),
    )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _column2(mf, t, step):
    """A^T down column j of 16 F(2x2) tiles: points j, 4 + j, 8 + j, 12 + j."""
    return _at2v(
        vload16(mf, t), vload16(mf, t + 4 * step), vload16(mf, t + 8 * step), vload16(mf, t + 12 * step)
    )


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST)
def output_tiles16(mf, at, step, m, th, tw, plane, ho, wo):
    """:func:`~.winograd.output_plane` with 16 tiles of a tile row in the vector lanes: the th x
    tw output tiles of one channel into ``plane`` (flat, ``ho`` x ``wo``, clipped there), from
    ``M[xi, tile t]`` at ``mf[at + xi*step + t]`` (tile t = ty*tw + tx). For 16 tiles, the a*a
    vectors of M go through ``A^T`` down the tile rows and across them in registers, and each
    output row's m vectors (pixel p of 16 tiles) are interleaved (``vziplo16`` / ``vziphi16``)
    into 16*m consecutive floats, stored masked at the plane's right edge."""
    chunks = (tw + LANES - 1) // LANES
    for ty in range(th):
        rows = min(m, ho - ty * m)
        for k in range(chunks):
            t = at + ty * tw + k * LANES
            x0 = k * LANES * m
            count = wo - x0
            if m == 4:
                z0 = _column4(mf, t, step)
                z1 = _column4(mf, t + step, step)
                z2 = _column4(mf, t + 2 * step, step)
                z3 = _column4(mf, t + 3 * step, step)
                z4 = _column4(mf, t + 4 * step, step)
                z5 = _column4(mf, t + 5 * step, step)
                # z_j[o]: output row o, column j of the tiles' A^T M; now across the columns
                r0 = ty * 4 * wo + x0
                y = _at4v(z0[0], z1[0], z2[0], z3[0], z4[0], z5[0])
                _store4(plane, r0, y[0], y[1], y[2], y[3], count)
                if rows > 1:
                    y = _at4v(z0[1], z1[1], z2[1], z3[1], z4[1], z5[1])
                    _store4(plane, r0 + wo, y[0], y[1], y[2], y[3], count)
                if rows > 2:
                    y = _at4v(z0[2], z1[2], z2[2], z3[2], z4[2], z5[2])
                    _store4(plane, r0 + 2 * wo, y[0], y[1], y[2], y[3], count)
                if rows > 3:
                    y = _at4v(z0[3], z1[3], z2[3], z3[3], z4[3], z5[3])
                    _store4(plane, r0 + 3 * wo, y[0], y[1], y[2], y[3], count)
            else:
                c0 = _column2(mf, t, step)
                c1 = _column2(mf, t + step, step)
                c2 = _column2(mf, t + 2 * step, step)
                c3 = _column2(mf, t + 3 * step, step)
                r0 = ty * 2 * wo + x0
                y2 = _at2v(c0[0], c1[0], c2[0], c3[0])
                vstore16_masked(plane, r0, vziplo16(y2[0], y2[1]), max(0, min(LANES, count)))
                vstore16_masked(plane, r0 + 16, vziphi16(y2[0], y2[1]), max(0, min(LANES, count - 16)))
                if rows > 1:
                    y2 = _at2v(c0[1], c1[1], c2[1], c3[1])
                    vstore16_masked(plane, r0 + wo, vziplo16(y2[0], y2[1]), max(0, min(LANES, count)))
                    vstore16_masked(
                        plane, r0 + wo + 16, vziphi16(y2[0], y2[1]), max(0, min(LANES, count - 16))
                    )


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _at2v(m0, m1, m2, m3):
    """A^T m for F(2, 3) on four vectors."""
    return vadd16(vadd16(m0, m1), m2), vadd16(vsub16(m1, m2), m3)


def channel_stride(a: int, cols: int) -> int:
    """Floats between two channels of V (``[C, a*a, cols]`` plus 16 floats): the GEMMs read one
    row of each channel, and ``a*a*cols`` alone is a multiple of 4 KiB for F(2x2) at 64 columns,
    which put every row of a B panel in the same L1 set (512 channels at 7 x 7: 9.1 ms against
    5.4 at 32 columns)."""
    return a * a * cols + LANES


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _bt4v(d0, d1, d2, d3, d4, d5):
    """B^T d for F(4, 3) on six vectors (one per d row), lane by lane."""
    four, five, two = vsplat16(4.0), vsplat16(5.0), vsplat16(2.0)
    s12 = vadd16(d1, d2)
    m12 = vsub16(d1, d2)
    m13 = vsub16(d1, d3)
    e42 = vsub16(d4, d2)
    return (
        vadd16(vsub16(vmul16(four, d0), vmul16(five, d2)), d4),
        vsub16(vadd16(d3, d4), vmul16(four, s12)),
        vadd16(vsub16(d4, d3), vmul16(four, m12)),
        vsub16(e42, vmul16(two, m13)),
        vadd16(e42, vmul16(two, m13)),
        vadd16(vsub16(vmul16(four, d1), vmul16(five, d3)), d5),
    )


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _bt2v(d0, d1, d2, d3):
    """B^T d for F(2, 3) on four vectors."""
    return vsub16(d0, d2), vadd16(d1, d2), vsub16(d2, d1), vsub16(d3, d1)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _padded16(flat, row, p, pl, w, inside, z):
    """Padded columns p .. p+15 of one input row (``flat[row + p + j]`` where the column
    ``p + j - pl`` is inside the plane's ``w``, else 0; ``z`` where the row is outside): a
    masked load straight from the plane, no copy of the row."""
    if not inside:
        return z
    return vload16_lanes(flat, row + p, pl - p, w + pl - p)


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST)
def input_tiles16(plane, m, pt, pl, th, tw, vf, cols, cstride, c, b, hbuf):
    """:func:`~.winograd.input_plane` with 16 tiles of a tile row in the vector lanes: the same
    values ``V[xi, c, b + t]``, stored channel-major into ``vf`` (channel c from ``c * cstride``
    on, then ``[a*a, cols]``): one channel's a*a rows are adjacent, so a plane's stores fill a
    few KiB in order instead of a*a rows a whole V apart, which had cost an L2 write miss per
    store.

    Each padded input row's ``d B`` for 16 tiles at a time comes from vector loads straight from
    the plane, masked at its left and right edges (:func:`_padded16`): tile tx's column s is
    padded column ``tx*m + s``, a stride-m de-interleave of 16*m consecutive floats (``vevens16`` /
    ``vodds16``, twice for m = 4; columns m and m+1 from a second load m floats on). The rows'
    ``d B`` go to ``hbuf`` ``[rows, chunks, a, 16]``, then ``B^T (d B)`` of each tile row
    combines its a rows and stores the a*a results, masked to the row's tiles. Replaces the
    scalar per-tile gather, whose 15-tile loops never reached LLVM's vector body."""
    h, w = plane.shape
    a = m + 2
    chunks = (tw + LANES - 1) // LANES
    n_rows = th * m + 2
    flat = plane.reshape(h * w)
    z = vsplat16(0.0)
    for r in range(n_rows):
        iy = r - pt
        inside = 0 <= iy < h
        row = iy * w - pl  # flat index of padded column 0 of this row
        for k in range(chunks):
            base = k * LANES * m
            at = (r * chunks + k) * a * LANES
            if m == 4:
                l0 = _padded16(flat, row, base, pl, w, inside, z)
                l1 = _padded16(flat, row, base + 16, pl, w, inside, z)
                l2 = _padded16(flat, row, base + 32, pl, w, inside, z)
                l3 = _padded16(flat, row, base + 48, pl, w, inside, z)
                e0, o0, e1, o1 = vevens16(l0, l1), vodds16(l0, l1), vevens16(l2, l3), vodds16(l2, l3)
                l0 = _padded16(flat, row, base + 4, pl, w, inside, z)
                l1 = _padded16(flat, row, base + 20, pl, w, inside, z)
                l2 = _padded16(flat, row, base + 36, pl, w, inside, z)
                l3 = _padded16(flat, row, base + 52, pl, w, inside, z)
                f0, g0, f1, g1 = vevens16(l0, l1), vodds16(l0, l1), vevens16(l2, l3), vodds16(l2, l3)
                t = _bt4v(
                    vevens16(e0, e1), vevens16(o0, o1), vodds16(e0, e1), vodds16(o0, o1),
                    vevens16(f0, f1), vevens16(g0, g1),
                )  # fmt: skip
                vstore16(hbuf, at, t[0])
                vstore16(hbuf, at + LANES, t[1])
                vstore16(hbuf, at + 2 * LANES, t[2])
                vstore16(hbuf, at + 3 * LANES, t[3])
                vstore16(hbuf, at + 4 * LANES, t[4])
                vstore16(hbuf, at + 5 * LANES, t[5])
            else:
                l0 = _padded16(flat, row, base, pl, w, inside, z)
                l1 = _padded16(flat, row, base + 16, pl, w, inside, z)
                l2 = _padded16(flat, row, base + 2, pl, w, inside, z)
                l3 = _padded16(flat, row, base + 18, pl, w, inside, z)
                t2 = _bt2v(vevens16(l0, l1), vodds16(l0, l1), vevens16(l2, l3), vodds16(l2, l3))
                vstore16(hbuf, at, t2[0])
                vstore16(hbuf, at + LANES, t2[1])
                vstore16(hbuf, at + 2 * LANES, t2[2])
                vstore16(hbuf, at + 3 * LANES, t2[3])
    xi_stride = cols
    for ty in range(th):
        for k in range(chunks):
            count = min(LANES, tw - k * LANES)
            dst = c * cstride + b + ty * tw + k * LANES
            row0 = ty * m * chunks + k  # (row ty*m, chunk k) in hbuf's [rows, chunks] order
            step = chunks * a * LANES  # one padded row on
            for j in range(a):
                at = row0 * a * LANES + j * LANES
                if m == 4:
                    t = _bt4v(
                        vload16(hbuf, at), vload16(hbuf, at + step), vload16(hbuf, at + 2 * step),
                        vload16(hbuf, at + 3 * step), vload16(hbuf, at + 4 * step), vload16(hbuf, at + 5 * step),
                    )  # fmt: skip
                    o = dst + j * xi_stride
                    s6 = 6 * xi_stride
                    vstore16_masked(vf, o, t[0], count)
                    vstore16_masked(vf, o + s6, t[1], count)
                    vstore16_masked(vf, o + 2 * s6, t[2], count)
                    vstore16_masked(vf, o + 3 * s6, t[3], count)
                    vstore16_masked(vf, o + 4 * s6, t[4], count)
                    vstore16_masked(vf, o + 5 * s6, t[5], count)
                else:
                    t2 = _bt2v(
                        vload16(hbuf, at), vload16(hbuf, at + step), vload16(hbuf, at + 2 * step),
                        vload16(hbuf, at + 3 * step),
                    )  # fmt: skip
                    o = dst + j * xi_stride
                    s4 = 4 * xi_stride
                    vstore16_masked(vf, o, t2[0], count)
                    vstore16_masked(vf, o + s4, t2[1], count)
                    vstore16_masked(vf, o + 2 * s4, t2[2], count)
                    vstore16_masked(vf, o + 3 * s4, t2[3], count)


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, parallel=True)
def winograd_fused(
    x, up, panels, offs, cols, m, pt, pl, th, tw, band, images, runs, out, k_count, ho, wo, bias, has_bias,
    residual, res_mode, act, alpha, beta, v_ws, m_ws, h_ws,
):  # fmt: skip
    """``out`` [N*K, Ho*Wo] (NCHW rows) = the F(m x m, 3 x 3) conv of ``x`` [N, C, H, W] with
    the transformed filter packed as A panels ``up`` (flat ``[a*a, panels, C, 12]``), one task
    per (tile group, run of output panels) (see :class:`Grouping`), worker w taking the tasks w,
    w + workers, ... Per-worker workspaces: ``v_ws`` [workers, C * cstride] (V channel-major,
    :func:`input_tiles16`; ``offs[c] = c * cstride``, :func:`channel_stride`), ``m_ws``
    [workers, a*a*(panels per run)*12*cols + 16] (16 floats of slack: :func:`output_tiles16`
    reads whole vectors) and ``h_ws`` (:func:`input_tiles16`)."""
    n, c_count = x.shape[0], x.shape[1]
    a = m + 2
    aa = a * a
    cstride = aa * cols + LANES  # channel_stride
    per_image = -(-th // band) if band else 0
    groups = n * per_image if band else -(-n // images)
    tasks = groups * runs
    workers = v_ws.shape[0]
    per_run = -(-panels // runs)
    for wk in prange(workers):
        vf = v_ws[wk]
        mf = m_ws[wk]
        hb = h_ws[wk]
        for task in range(wk, tasks, workers):
            g = task // runs
            p0 = (task % runs) * per_run
            p1 = min(panels, p0 + per_run)
            if p0 >= p1:
                continue
            if band:
                img0 = g // per_image
                count = 1
                ty0 = (g % per_image) * band
                rows = min(band, th - ty0)
            else:
                img0 = g * images
                count = min(images, n - img0)
                ty0 = 0
                rows = th
            tiles = rows * tw  # per image of the group
            used = count * tiles
            for i in range(count):
                for c in range(c_count):
                    input_tiles16(
                        x[img0 + i, c], m, pt - ty0 * m, pl, rows, tw, vf, cols, cstride, c, i * tiles, hb
                    )
            # the GEMMs: M[xi, channel, tile] for the run's panels, 12 x 32 register tiles
            kr = (p1 - p0) * MR
            for xi in range(aa):
                for p in range(p0, p1):
                    ao = (xi * panels + p) * c_count * MR
                    co = (xi * kr + (p - p0) * MR) * cols
                    for q in range(0, used, NR):
                        tile_12x32(up, ao, vf, xi * cols + q, offs, 0, c_count, mf, co + q, cols, False)
            o0 = ty0 * m * wo
            o1 = min(ho, (ty0 + rows) * m) * wo
            for kk in range(p0 * MR, min(k_count, p1 * MR)):
                b = bias[kk] if has_bias else np.float32(0.0)
                for i in range(count):
                    r = (img0 + i) * k_count + kk
                    plane = out[r, o0:o1]
                    output_tiles16(
                        mf,
                        (kk - p0 * MR) * cols + i * tiles,
                        kr * cols,
                        m,
                        rows,
                        tw,
                        plane,
                        (o1 - o0) // wo,
                        wo,
                    )
                    res = residual[r, o0:o1] if res_mode != 0 else residual[0]
                    finish_row(plane, b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


def pack_filter(u: np.ndarray) -> np.ndarray:
    """The transformed filter U ``[a*a, K, C]`` as A panels, flat ``[a*a, ceil(K/12), C, 12]``."""
    return np.concatenate([pack_rows(u[xi]) for xi in range(u.shape[0])])


class FusedWinogradConv(WinogradConv):
    """F(4x4, 3x3) Winograd conv, one task per (tile group, output-panel run): input transform,
    register-tile GEMMs and output transform + epilogue on one thread, in its L2. The rule and
    the bias handling are :class:`~.winograd.WinogradConv`'s; U is stored as A panels."""

    name = "cpu.conv.winograd_fused"
    priority = 23
    tile = 4
    filter_key = "up"

    def transformed_filter(self, w: np.ndarray) -> np.ndarray:
        return pack_filter(transform_filter(w, self.tile))

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        m = int(prepared.params.get("m", self.tile))
        a = m + 2
        up = prepared.tensors["up"]
        bias, has_bias = vector_or_dummy(prepared.tensors.get("bias", inputs[2] if len(inputs) > 2 else None))
        x = np.ascontiguousarray(inputs[0], dtype=np.float32)
        out = outputs[0]
        n, k_count, ho, wo = out.shape
        c_count = x.shape[1]
        if n == 0 or ho == 0 or wo == 0:
            return
        geo = memo(prepared, "geo", lambda: ConvGeometry.of(node, (k_count, c_count, 3, 3)))
        act, alpha, beta, mode = memo(prepared, "epilogue", lambda: epilogue_params(node))
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, n * k_count)
        th, tw = -(-ho // m), -(-wo // m)
        panels = -(-k_count // MR)
        threads = numba_thread_count()
        plan = memo(
            prepared,
            ("plan", n, ho, wo, threads),
            lambda: plan_groups(n, th, tw, c_count, a, panels, threads),
        )
        workers = max(1, min(threads, plan.groups * plan.runs))
        cols = plan.cols
        rows = plan.band if plan.band else th
        offs = memo(
            prepared, ("offs", cols), lambda: np.arange(c_count, dtype=np.int64) * channel_stride(a, cols)
        )
        per_run = -(-panels // plan.runs)
        # zeros: the columns past a group's tiles are computed and dropped; keep them finite
        v_ws = workspace(prepared, "v_ws", (workers, c_count * channel_stride(a, cols)), zeroed=True)
        m_ws = workspace(prepared, "m_ws", (workers, a * a * per_run * MR * cols + LANES))
        h_ws = workspace(prepared, "h_ws", (workers, (rows * m + 2) * -(-tw // LANES) * a * LANES))
        winograd_fused(
            x, up, panels, offs, cols, m, geo.pad_top, geo.pad_left, th, tw, plan.band, plan.images, plan.runs,
            out.reshape(n * k_count, ho * wo), k_count, ho, wo, bias, has_bias, residual, mode, act, alpha, beta,
            v_ws, m_ws, h_ws,
        )  # fmt: skip


register_tactic(FusedWinogradConv)


@register_tactic
class FusedWinogradF2Conv(FusedWinogradConv):
    """:class:`FusedWinogradConv` on F(2x2, 3x3) tiles (smaller planes, more accurate)."""

    name = "cpu.conv.winograd_fused_f2"
    priority = 24
    tile = 2
