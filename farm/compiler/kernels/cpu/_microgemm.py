"""A 12 x 32 register-blocked float32 GEMM micro-kernel on packed panels.

``C[12, 32] = A_panel^T @ B_panel`` where the A panel holds 12 rows of A as ``[K, 12]`` (element
``(k, r)`` at ``k*12 + r``) and B's 32 columns as K rows of 32 floats, each where an offset
table says (``[K, 32]`` panels, or rows read in place). The 12 x 32 tile lives in 24
sixteen-lane accumulators; each step over K loads the two vectors of B's row, broadcasts A's 12
values and issues 24 fused multiply-adds, so the FMA units, not memory, set the pace (measured 150-175 GFLOP/s on one Xeon core with the panels in L1 or L2,
where numpy's OpenBLAS reached 100-140 on the same conv and transformer GEMM shapes). Both panel
layouts are the GotoBLAS ones; which operand is the constant weight is up to the caller
(``conv_packed``: the weight is A and the im2col columns B; ``gemm_packed``: the weight is B).

Tiles with fewer than 12 rows or 32 columns are computed whole on zero-padded panels (a padded
lane or row only ever meets its own zeros) and stored through :func:`store_tile_part`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    LANES,
    vbroadcast16,
    vfma16,
    vload16,
    vprefetch,
    vstore16,
    vstore16_lanes,
    vtranspose8x16,
    vzero16,
)

MR = 12  # rows of a micro-tile (A panel width)
NR = 32  # columns of a micro-tile (B panel width: two vectors)


@njit(cache=True, nogil=True, error_model="numpy")
def tile_12x32(ap, ao, bp, bo, offs, o0, kc, c, co, ldc, acc):
    """``c[co + r*ldc + q] (+)= sum_k ap[ao + 12k + r] * bp[bo + offs[o0 + k] + q]`` for r < 12,
    q < 32, k < ``kc`` (``ap``, ``bp``, ``c`` flat float32, ``offs`` int64); ``acc``: add to
    what ``c`` holds (a later block of K) instead of overwriting it.

    B's row k is wherever ``offs`` says: ``k * 32`` for a packed panel (:func:`panel_offsets`),
    or an input row of an implicit-GEMM conv (``conv_packed``): one scalar load per step, next
    to 24 FMAs. With AVX-512 the tile is one pass in 24 ``zmm`` accumulators; without it, four
    6 x 16 quarters (:func:`_quarter_6x16`), each in 12 ``ymm`` accumulators."""
    if AVX512:
        _tile_12x32_zmm(ap, ao, MR, bp, bo, offs, o0, kc, c, co, ldc, acc)
    else:
        _quarter_6x16(ap, ao, bp, bo, offs, o0, kc, c, co, ldc, acc)
        _quarter_6x16(ap, ao, bp, bo + 16, offs, o0, kc, c, co + 16, ldc, acc)
        _quarter_6x16(ap, ao + 6, bp, bo, offs, o0, kc, c, co + 6 * ldc, ldc, acc)
        _quarter_6x16(ap, ao + 6, bp, bo + 16, offs, o0, kc, c, co + 6 * ldc + 16, ldc, acc)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _quarter_6x16(ap, ao, bp, bo, offs, o0, kc, c, co, ldc, acc):
    """Rows ``ao .. ao+5`` of the A panel (stride 12 per k) x the 16 B columns from ``bo``: 6
    sixteen-lane accumulators, i.e. 12 ``ymm`` registers on an AVX2 host, with B's two halves
    and one broadcast the 15 of its 16 that stay in registers."""
    z = vzero16()
    c0 = c1 = c2 = c3 = c4 = c5 = z
    if acc:
        c0 = vload16(c, co)
        c1 = vload16(c, co + ldc)
        c2 = vload16(c, co + 2 * ldc)
        c3 = vload16(c, co + 3 * ldc)
        c4 = vload16(c, co + 4 * ldc)
        c5 = vload16(c, co + 5 * ldc)
    for kk in range(o0, o0 + kc):
        b = vload16(bp, bo + offs[kk])
        c0 = vfma16(vbroadcast16(ap, ao), b, c0)
        c1 = vfma16(vbroadcast16(ap, ao + 1), b, c1)
        c2 = vfma16(vbroadcast16(ap, ao + 2), b, c2)
        c3 = vfma16(vbroadcast16(ap, ao + 3), b, c3)
        c4 = vfma16(vbroadcast16(ap, ao + 4), b, c4)
        c5 = vfma16(vbroadcast16(ap, ao + 5), b, c5)
        ao += MR
    vstore16(c, co, c0)
    vstore16(c, co + ldc, c1)
    vstore16(c, co + 2 * ldc, c2)
    vstore16(c, co + 3 * ldc, c3)
    vstore16(c, co + 4 * ldc, c4)
    vstore16(c, co + 5 * ldc, c5)


@njit(cache=True, nogil=True, error_model="numpy")
def tile_12x32_wide(ap, ao, ka, bp, bo, offs, o0, kc, c, co, ldc, acc):
    """:func:`tile_12x32` on an A panel wider than 12: element (k, r) at ``ap[ao + k*ka + r]``
    (12 consecutive rows of a ``[K, ka]`` block, e.g. 12 of the 32 query lanes of a transposed
    probability block in ``attention_micro``). AVX-512 hosts only (the caller checks
    :data:`AVX512`)."""
    _tile_12x32_zmm(ap, ao, ka, bp, bo, offs, o0, kc, c, co, ldc, acc)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tile_12x32_zmm(ap, ao, ka, bp, bo, offs, o0, kc, c, co, ldc, acc):
    """:func:`tile_12x32` in one pass: 24 sixteen-lane accumulators (AVX-512's 32 registers).
    A's element (k, r) is ``ap[ao + k*ka + r]``: ``ka = 12`` for a packed panel (a constant
    after inlining), wider for :func:`tile_12x32_wide`. The 12 values of a step stay adjacent:
    a run-time row stride instead left 12 address chains in the loop and the tile at 160
    GFLOP/s, against 255 on a Zen 5 core. Each step also prefetches B's row for the next 32
    columns (``vprefetch``): an implicit-GEMM conv's B rows are input rows one channel plane
    apart, a walk the hardware prefetcher does not follow (ResNet-18's 64 -> 128 stride-2 conv
    at batch 1 in the model 0.62 -> 0.58 ms, Xeon with AVX-512, in-process A/B); for a packed
    panel the line is the one the next step loads anyway."""
    z = vzero16()
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = z
    c60 = c61 = c70 = c71 = c80 = c81 = c90 = c91 = ca0 = ca1 = cb0 = cb1 = z
    if acc:
        q = co
        c00, c01 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c10, c11 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c20, c21 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c30, c31 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c40, c41 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c50, c51 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c60, c61 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c70, c71 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c80, c81 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        c90, c91 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        ca0, ca1 = vload16(c, q), vload16(c, q + 16)
        q += ldc
        cb0, cb1 = vload16(c, q), vload16(c, q + 16)
    for kk in range(o0, o0 + kc):
        bk = bo + offs[kk]
        b0 = vload16(bp, bk)
        b1 = vload16(bp, bk + 16)
        vprefetch(bp, bk + NR)
        vprefetch(bp, bk + NR + 16)
        v = vbroadcast16(ap, ao)
        c00 = vfma16(v, b0, c00)
        c01 = vfma16(v, b1, c01)
        v = vbroadcast16(ap, ao + 1)
        c10 = vfma16(v, b0, c10)
        c11 = vfma16(v, b1, c11)
        v = vbroadcast16(ap, ao + 2)
        c20 = vfma16(v, b0, c20)
        c21 = vfma16(v, b1, c21)
        v = vbroadcast16(ap, ao + 3)
        c30 = vfma16(v, b0, c30)
        c31 = vfma16(v, b1, c31)
        v = vbroadcast16(ap, ao + 4)
        c40 = vfma16(v, b0, c40)
        c41 = vfma16(v, b1, c41)
        v = vbroadcast16(ap, ao + 5)
        c50 = vfma16(v, b0, c50)
        c51 = vfma16(v, b1, c51)
        v = vbroadcast16(ap, ao + 6)
        c60 = vfma16(v, b0, c60)
        c61 = vfma16(v, b1, c61)
        v = vbroadcast16(ap, ao + 7)
        c70 = vfma16(v, b0, c70)
        c71 = vfma16(v, b1, c71)
        v = vbroadcast16(ap, ao + 8)
        c80 = vfma16(v, b0, c80)
        c81 = vfma16(v, b1, c81)
        v = vbroadcast16(ap, ao + 9)
        c90 = vfma16(v, b0, c90)
        c91 = vfma16(v, b1, c91)
        v = vbroadcast16(ap, ao + 10)
        ca0 = vfma16(v, b0, ca0)
        ca1 = vfma16(v, b1, ca1)
        v = vbroadcast16(ap, ao + 11)
        cb0 = vfma16(v, b0, cb0)
        cb1 = vfma16(v, b1, cb1)
        ao += ka
    vstore16(c, co, c00)
    vstore16(c, co + 16, c01)
    co += ldc
    vstore16(c, co, c10)
    vstore16(c, co + 16, c11)
    co += ldc
    vstore16(c, co, c20)
    vstore16(c, co + 16, c21)
    co += ldc
    vstore16(c, co, c30)
    vstore16(c, co + 16, c31)
    co += ldc
    vstore16(c, co, c40)
    vstore16(c, co + 16, c41)
    co += ldc
    vstore16(c, co, c50)
    vstore16(c, co + 16, c51)
    co += ldc
    vstore16(c, co, c60)
    vstore16(c, co + 16, c61)
    co += ldc
    vstore16(c, co, c70)
    vstore16(c, co + 16, c71)
    co += ldc
    vstore16(c, co, c80)
    vstore16(c, co + 16, c81)
    co += ldc
    vstore16(c, co, c90)
    vstore16(c, co + 16, c91)
    co += ldc
    vstore16(c, co, ca0)
    vstore16(c, co + 16, ca1)
    co += ldc
    vstore16(c, co, cb0)
    vstore16(c, co + 16, cb1)


@njit(cache=True, nogil=True, error_model="numpy")
def store_tile_part(scratch, c, co, ldc, rows, cols):
    """The first ``rows`` x ``cols`` of a 12 x 32 tile computed into ``scratch`` (flat, row
    stride 32) into ``c`` at ``co`` with row stride ``ldc``."""
    for r in range(rows):
        for q in range(cols):
            c[co + r * ldc + q] = scratch[r * NR + q]


@njit(cache=True, nogil=True, error_model="numpy")
def pack_panel(x, start, ld, rows, k_count, width, panel, po):
    """``rows`` rows of ``k_count`` values, row r at flat ``x[start + r*ld:]``, transposed into
    the panel ``panel[po:]``: element (k, r) at ``po + k*width + r``, zeros for the rows
    ``rows .. width-1`` (an A panel of :func:`tile_12x32` at width 12; attention's 32-query
    panels at width 32).

    With AVX-512, 16 columns at a time: each group of 8 rows goes through an in-register
    transpose (:func:`~._simd16.vtranspose8x16`, whose vector i holds columns i and i + 8),
    stored as two 8-lane pieces. 0.11 ns per element where the scalar copy took 0.28 (one
    Zen 5 core, 197 x 768: the A operand of a transformer's down projection, whose packing had
    been 14 % of that GEMM's time)."""
    vector_end = k_count - k_count % LANES if AVX512 else 0
    z = vzero16()
    for k0 in range(0, vector_end, LANES):
        for g in range(0, width, 8):
            at = start + g * ld + k0
            t = vtranspose8x16(
                vload16(x, at) if g < rows else z,
                vload16(x, at + ld) if g + 1 < rows else z,
                vload16(x, at + 2 * ld) if g + 2 < rows else z,
                vload16(x, at + 3 * ld) if g + 3 < rows else z,
                vload16(x, at + 4 * ld) if g + 4 < rows else z,
                vload16(x, at + 5 * ld) if g + 5 < rows else z,
                vload16(x, at + 6 * ld) if g + 6 < rows else z,
                vload16(x, at + 7 * ld) if g + 7 < rows else z,
            )
            n = min(8, width - g)
            for i in range(8):
                dest = po + (k0 + i) * width + g  # column k0 + i; column k0 + i + 8 is 8 rows further
                vstore16_lanes(panel, dest, t[i], 0, n)
                vstore16_lanes(panel, dest + 8 * width - 8, t[i], 8, 8 + n)
    for r in range(rows):
        for k in range(vector_end, k_count):
            panel[po + k * width + r] = x[start + r * ld + k]
    for r in range(rows, width):
        for k in range(vector_end, k_count):
            panel[po + k * width + r] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def pack_row_panel(a, r0, rows, panel, po):
    """Rows ``r0 .. r0+rows-1`` of ``a`` [M, K] (C-contiguous) into the A panel at
    ``panel[po:]`` (flat ``[K, 12]``, zeros in the rows past ``rows``): :func:`pack_panel`."""
    k_count = a.shape[1]
    pack_panel(a.reshape(-1), r0 * k_count, k_count, rows, k_count, MR, panel, po)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def pack_row_panels(a, ap):
    """All of ``a`` [M, K] as A panels, flat ``[ceil(M/12), K, 12]`` in ``ap`` (zero rows past M)."""
    m, k = a.shape
    for i in prange((m + MR - 1) // MR):
        pack_row_panel(a, i * MR, min(MR, m - i * MR), ap, i * k * MR)


def pack_rows(w: np.ndarray) -> np.ndarray:
    """A constant [M, K] as a new array of A panels (:func:`pack_row_panels`)."""
    m, k = w.shape
    panels = np.empty(-(-m // MR) * k * MR, np.float32)
    pack_row_panels(np.ascontiguousarray(w, dtype=np.float32), panels)
    return panels


def pack_cols(w: np.ndarray) -> np.ndarray:
    """A constant [K, N] as B panels, flat ``[ceil(N/32), K, 32]`` (zero columns past N)."""
    k, n = w.shape
    panels = -(-n // NR)
    padded = np.zeros((k, panels * NR), np.float32)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, panels, NR).transpose(1, 0, 2)).reshape(-1)


def panel_offsets(k: int) -> np.ndarray:
    """Row offsets of a packed ``[K, 32]`` B panel: ``k * 32``."""
    return np.arange(k, dtype=np.int64) * NR
