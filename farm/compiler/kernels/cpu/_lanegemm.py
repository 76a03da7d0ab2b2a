"""A 14 x 32 float32 conv micro-kernel: output channels across the lanes, pixels broadcast.

The transpose of ``_microgemm``'s roles. A tile is 32 output channels (two sixteen-lane vectors:
the lanes) by 14 output pixels (two *segments* of 7 consecutive pixels of an output row: the
register rows), over K = input channels x taps:

    ``c[co + r*32 + q] (+)= sum_k x[xo_s + offs[k] + j] * w[wo + 32k + q]``

for pixel r = 7s + j (segment s, its j-th pixel, ``xo_0 = xo`` and ``xo_1 = xo + gap``) and
channel q < 32. ``x`` is the input already zero-padded (and split into its stride phases, see
``conv_packed.build_phases``), so a segment's 7 pixels read 7 consecutive floats at every k, a
fixed offset ``offs[k]`` from the segment's first; ``w`` is the weight packed as ``[K, 32]``
channel panels (:func:`pack_lanes`). Each step over K loads the two weight vectors and
broadcasts the 14 input values into 28 fused multiply-adds: 28 ``zmm`` accumulators + 2 weight
vectors + 1 broadcast = 31 of AVX-512's 32 registers (a 7 x 64 tile needs 33 and spills; 6 x 64,
8 x 48 and 14 x 32 all ran at 262 GFLOP/s on one Zen 5 core in L1, where 7 x 64 fell to 96).

Why: an output row of a late layer is 7 or 14 pixels wide. ``conv_packed`` puts pixels in the
lanes, 32 at a time over a *wide* row (the 2 padding columns per row computed and dropped): a
7 x 7 map is 63 wide pixels in 64 lanes, 49 of them kept (77 %). Here a row splits into whole
segments of 7 (every ResNet/VGG map size is a multiple of 7) and channels fill the lanes whole
(32 divides 64 .. 2048), so nothing is computed to be dropped. The price is the store: the tile
is pixel-major, the output NCHW, so ``conv_lanes`` transposes it in registers on the way out.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from farm.compiler.engine.runtime import aligned_weight
from farm.compiler.kernels.cpu._microgemm import pack_cols
from farm.compiler.kernels.cpu._simd16 import vbroadcast16, vfma16, vload16, vprefetch_l2, vstore16, vzero16

SEG = 7  # pixels per segment (one output-row piece)
ROWS = 2 * SEG  # pixels per tile
LANES32 = 32  # output channels per tile (two vectors)
TILE = ROWS * LANES32  # floats of a tile in scratch (pixel-major, row stride 32)


@njit(cache=True, nogil=True, error_model="numpy")
def tile_14x32(x, xo, gap, offs, o0, kc, w, wo, c, co, acc, pf):
    """Two segments: pixels 0..6 read ``x[xo + offs[k] + j]``, pixels 7..13 ``x[xo + gap +
    offs[k] + j]``; K steps ``o0 .. o0+kc-1`` against weight rows from ``w[wo:]`` (32 floats
    each); the 14 x 32 tile to ``c[co:]`` (row stride 32), added to what it holds when ``acc``."""
    z = vzero16()
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = a40 = a41 = a50 = a51 = a60 = a61 = z
    b00 = b01 = b10 = b11 = b20 = b21 = b30 = b31 = b40 = b41 = b50 = b51 = b60 = b61 = z
    if acc:
        a00, a01, a10, a11 = vload16(c, co), vload16(c, co + 16), vload16(c, co + 32), vload16(c, co + 48)
        a20, a21, a30, a31 = (
            vload16(c, co + 64),
            vload16(c, co + 80),
            vload16(c, co + 96),
            vload16(c, co + 112),
        )
        a40, a41, a50, a51 = (
            vload16(c, co + 128),
            vload16(c, co + 144),
            vload16(c, co + 160),
            vload16(c, co + 176),
        )
        a60, a61 = vload16(c, co + 192), vload16(c, co + 208)
        e = co + 224
        b00, b01, b10, b11 = vload16(c, e), vload16(c, e + 16), vload16(c, e + 32), vload16(c, e + 48)
        b20, b21, b30, b31 = vload16(c, e + 64), vload16(c, e + 80), vload16(c, e + 96), vload16(c, e + 112)
        b40, b41, b50, b51 = (
            vload16(c, e + 128),
            vload16(c, e + 144),
            vload16(c, e + 160),
            vload16(c, e + 176),
        )
        b60, b61 = vload16(c, e + 192), vload16(c, e + 208)
    for kk in range(o0, o0 + kc):
        p = xo + offs[kk]
        q = p + gap
        w0 = vload16(w, wo)
        w1 = vload16(w, wo + 16)
        if pf:
            vprefetch_l2(w, wo + pf)
            vprefetch_l2(w, wo + pf + 16)
        wo += LANES32
        v = vbroadcast16(x, p)
        a00 = vfma16(v, w0, a00)
        a01 = vfma16(v, w1, a01)
        v = vbroadcast16(x, p + 1)
        a10 = vfma16(v, w0, a10)
        a11 = vfma16(v, w1, a11)
        v = vbroadcast16(x, p + 2)
        a20 = vfma16(v, w0, a20)
        a21 = vfma16(v, w1, a21)
        v = vbroadcast16(x, p + 3)
        a30 = vfma16(v, w0, a30)
        a31 = vfma16(v, w1, a31)
        v = vbroadcast16(x, p + 4)
        a40 = vfma16(v, w0, a40)
        a41 = vfma16(v, w1, a41)
        v = vbroadcast16(x, p + 5)
        a50 = vfma16(v, w0, a50)
        a51 = vfma16(v, w1, a51)
        v = vbroadcast16(x, p + 6)
        a60 = vfma16(v, w0, a60)
        a61 = vfma16(v, w1, a61)
        v = vbroadcast16(x, q)
        b00 = vfma16(v, w0, b00)
        b01 = vfma16(v, w1, b01)
        v = vbroadcast16(x, q + 1)
        b10 = vfma16(v, w0, b10)
        b11 = vfma16(v, w1, b11)
        v = vbroadcast16(x, q + 2)
        b20 = vfma16(v, w0, b20)
        b21 = vfma16(v, w1, b21)
        v = vbroadcast16(x, q + 3)
        b30 = vfma16(v, w0, b30)
        b31 = vfma16(v, w1, b31)
        v = vbroadcast16(x, q + 4)
        b40 = vfma16(v, w0, b40)
        b41 = vfma16(v, w1, b41)
        v = vbroadcast16(x, q + 5)
        b50 = vfma16(v, w0, b50)
        b51 = vfma16(v, w1, b51)
        v = vbroadcast16(x, q + 6)
        b60 = vfma16(v, w0, b60)
        b61 = vfma16(v, w1, b61)
    vstore16(c, co, a00)
    vstore16(c, co + 16, a01)
    vstore16(c, co + 32, a10)
    vstore16(c, co + 48, a11)
    vstore16(c, co + 64, a20)
    vstore16(c, co + 80, a21)
    vstore16(c, co + 96, a30)
    vstore16(c, co + 112, a31)
    vstore16(c, co + 128, a40)
    vstore16(c, co + 144, a41)
    vstore16(c, co + 160, a50)
    vstore16(c, co + 176, a51)
    vstore16(c, co + 192, a60)
    vstore16(c, co + 208, a61)
    co += 224
    vstore16(c, co, b00)
    vstore16(c, co + 16, b01)
    vstore16(c, co + 32, b10)
    vstore16(c, co + 48, b11)
    vstore16(c, co + 64, b20)
    vstore16(c, co + 80, b21)
    vstore16(c, co + 96, b30)
    vstore16(c, co + 112, b31)
    vstore16(c, co + 128, b40)
    vstore16(c, co + 144, b41)
    vstore16(c, co + 160, b50)
    vstore16(c, co + 176, b51)
    vstore16(c, co + 192, b60)
    vstore16(c, co + 208, b61)


@njit(cache=True, nogil=True, error_model="numpy")
def tile_7x32(x, xo, offs, o0, kc, w, wo, c, co, acc, pf):
    """One segment (a tile's first 7 rows): :func:`tile_14x32` without the second."""
    z = vzero16()
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = a40 = a41 = a50 = a51 = a60 = a61 = z
    if acc:
        a00, a01, a10, a11 = vload16(c, co), vload16(c, co + 16), vload16(c, co + 32), vload16(c, co + 48)
        a20, a21, a30, a31 = (
            vload16(c, co + 64),
            vload16(c, co + 80),
            vload16(c, co + 96),
            vload16(c, co + 112),
        )
        a40, a41, a50, a51 = (
            vload16(c, co + 128),
            vload16(c, co + 144),
            vload16(c, co + 160),
            vload16(c, co + 176),
        )
        a60, a61 = vload16(c, co + 192), vload16(c, co + 208)
    for kk in range(o0, o0 + kc):
        p = xo + offs[kk]
        w0 = vload16(w, wo)
        w1 = vload16(w, wo + 16)
        if pf:
            vprefetch_l2(w, wo + pf)
            vprefetch_l2(w, wo + pf + 16)
        wo += LANES32
        v = vbroadcast16(x, p)
        a00 = vfma16(v, w0, a00)
        a01 = vfma16(v, w1, a01)
        v = vbroadcast16(x, p + 1)
        a10 = vfma16(v, w0, a10)
        a11 = vfma16(v, w1, a11)
        v = vbroadcast16(x, p + 2)
        a20 = vfma16(v, w0, a20)
        a21 = vfma16(v, w1, a21)
        v = vbroadcast16(x, p + 3)
        a30 = vfma16(v, w0, a30)
        a31 = vfma16(v, w1, a31)
        v = vbroadcast16(x, p + 4)
        a40 = vfma16(v, w0, a40)
        a41 = vfma16(v, w1, a41)
        v = vbroadcast16(x, p + 5)
        a50 = vfma16(v, w0, a50)
        a51 = vfma16(v, w1, a51)
        v = vbroadcast16(x, p + 6)
        a60 = vfma16(v, w0, a60)
        a61 = vfma16(v, w1, a61)
    vstore16(c, co, a00)
    vstore16(c, co + 16, a01)
    vstore16(c, co + 32, a10)
    vstore16(c, co + 48, a11)
    vstore16(c, co + 64, a20)
    vstore16(c, co + 80, a21)
    vstore16(c, co + 96, a30)
    vstore16(c, co + 112, a31)
    vstore16(c, co + 128, a40)
    vstore16(c, co + 144, a41)
    vstore16(c, co + 160, a50)
    vstore16(c, co + 176, a51)
    vstore16(c, co + 192, a60)
    vstore16(c, co + 208, a61)


def pack_lanes(w: np.ndarray) -> np.ndarray:
    """A constant [M, K] as channel panels, flat ``[ceil(M/32), K, 32]``: panel i's row k holds
    ``w[32i .. 32i+31, k]`` (zeros past M), i.e. ``pack_cols`` of the transpose, on a 64-byte
    boundary so each row is two aligned vector loads."""
    return aligned_weight(pack_cols(np.asarray(w, dtype=np.float32).T))
