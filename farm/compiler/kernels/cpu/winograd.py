"""Winograd convolution tactics: 3x3, stride 1, dilation 1, group 1 (FusedConv and Conv, FP32).

F(m x m, 3 x 3) computes each m x m output tile from an (m+2) x (m+2) input tile with
(m+2)^2 multiplies per input/output channel pair instead of 9 m^2: 2.25x fewer for F(2x2, 3x3),
4x fewer for F(4x4, 3x3). With ``a = m + 2`` and the matrices of :func:`winograd_matrices`::

    U[xi, k, c] = (G g[k, c] G^T)[i, j]          xi = i*a + j       (filter, in ``prepare``)
    V[xi, c, t] = (B^T d[c, t] B)[i, j]          d: input tile t    (numba, parallel over channels)
    M[xi]       = U[xi] @ V[xi]                  a^2 GEMMs [K, C] x [C, tiles] (BLAS)
    y[k, t]     = A^T M[:, k, t] A               + bias, residual, activation (numba, per channel)

Tiles are numbered image by image, row by row; the last tile row and column may overhang the
output (their extra input is read as zero padding and their extra outputs are dropped). Both
transforms work on a whole channel with the tile index innermost, so the arithmetic runs as long
unit-stride loops: the input transform gathers every padded input row once into the a tile-column
*slots* of its tiles, then applies B along them and B^T down them (a row shift of the flattened
tile index); the output transform applies A^T twice and writes the m x m tiles into the flattened
output plane, which then gets the fused epilogue. B^T and A^T are hard-coded (small integers);
G is solved from them.

Two tile sizes, so the tuner picks per layer: ``cpu.conv.winograd`` is F(4x4, 3x3) (points 0,
+-1, +-2, infinity), ``cpu.conv.winograd_f2`` is F(2x2, 3x3) (points 0, +-1, infinity; as accurate
as im2col, less overhang and a smaller U on small planes; the heuristic default at tuning level 0,
because it is never much slower than im2col, while F(4x4) is 2x slower on 7x7 planes at batch 1).
Pools: numba (input transform), then the GEMMs split between threads with BLAS held to one
thread each (:func:`gemm_stack`), then numba (output transform + epilogue), one after the other.
The ``_1t`` forms run every GEMM on the calling thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from numba import njit, prange, uint64

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu import _blas
from farm.compiler.kernels.cpu._epilogue import (
    epilogue_params,
    finish_row,
    residual_rows,
    vector_or_dummy,
)
from farm.compiler.kernels.cpu._operands import workspace
from farm.compiler.kernels.cpu._threads import blas_single_thread, numba_thread_count, threads_for
from farm.compiler.kernels.cpu.conv import CONV_OPS, ConvGeometry, _conv_node_ok
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# The transforms of F(m x m, 3 x 3) (Lavin & Gray 2016; points 0, +-1 for m = 2 and 0, +-1, +-2
# for m = 4, plus infinity). The kernels below hard-code B^T and A^T (``_bt*``/``_at*``); G is
# solved from them in float64 by :func:`winograd_matrices`.
A_T = {
    2: np.array([[1, 1, 1, 0], [0, 1, -1, 1]], np.float64),
    4: np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64
    ),
}
B_T = {
    2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], np.float64),
    4: np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        np.float64,
    ),
}
# Tiles per GEMM: images are grouped until the stacked GEMMs are at least this wide.
TARGET_TILES = 256


@cache
def winograd_matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, r], B^T [a, a]) of F(m, r) in float64, a = m + r - 1.

    G is solved from the defining identity sum_j A^T[i, j] G[j, q] B^T[j, s] = [s == i + q]
    (the 1-D correlation y_i = sum_q d_{i+q} g_q); exact up to float64 round-off."""
    at, bt = A_T[m], B_T[m]
    a = m + r - 1
    g = np.zeros((a, r))
    for q in range(r):
        # unknowns G[:, q]; one equation per (i, s): sum_j at[i, j] bt[j, s] G[j, q]
        coeff = np.einsum("ij,js->isj", at, bt).reshape(m * a, a)
        target = np.zeros((m, a))
        for i in range(m):
            target[i, i + q] = 1.0
        g[:, q] = np.linalg.lstsq(coeff, target.reshape(-1), rcond=None)[0]
    check = np.einsum("ij,jq,js->iqs", at, g, bt)
    want = np.zeros((m, r, a))
    for i in range(m):
        for q in range(r):
            want[i, q, i + q] = 1.0
    assert np.allclose(check, want, atol=1e-12), "Winograd G does not solve the identity"
    return at, g, bt


def transform_filter(w: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every (k, c): [K, C, 3, 3] -> C-contiguous float32 [a*a, K, C]
    (computed in float64)."""
    _, g, _ = winograd_matrices(m)
    a = g.shape[0]
    u = np.einsum("ix,kcxy,jy->ijkc", g, w.astype(np.float64), g)
    return np.ascontiguousarray(u.reshape(a * a, w.shape[0], w.shape[1]), dtype=np.float32)


_FAST = {"contract"}  # FMA contraction: fewer roundings, not fewer checks


# One output row per loop: a loop that stores to several rows needs more runtime overlap checks
# than LLVM's vectorizer allows (it stayed scalar); reading an input row again costs an L1 load.
@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _bt4(o0, o1, o2, o3, o4, o5, d0, d1, d2, d3, d4, d5):
    """o = B^T d for F(4, 3), elementwise over the 1-D arrays (unit-stride loops)."""
    four, five, two = np.float32(4.0), np.float32(5.0), np.float32(2.0)
    for t in range(o0.shape[0]):
        o0[t] = four * d0[t] - five * d2[t] + d4[t]
    for t in range(o1.shape[0]):
        o1[t] = d3[t] + d4[t] - four * (d1[t] + d2[t])
    for t in range(o2.shape[0]):
        o2[t] = d4[t] - d3[t] + four * (d1[t] - d2[t])
    for t in range(o3.shape[0]):
        o3[t] = d4[t] - d2[t] - two * (d1[t] - d3[t])
    for t in range(o4.shape[0]):
        o4[t] = d4[t] - d2[t] + two * (d1[t] - d3[t])
    for t in range(o5.shape[0]):
        o5[t] = four * d1[t] - five * d3[t] + d5[t]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _bt2(o0, o1, o2, o3, d0, d1, d2, d3):
    """o = B^T d for F(2, 3)."""
    for t in range(o0.shape[0]):
        o0[t] = d0[t] - d2[t]
    for t in range(o1.shape[0]):
        o1[t] = d1[t] + d2[t]
    for t in range(o2.shape[0]):
        o2[t] = d2[t] - d1[t]
    for t in range(o3.shape[0]):
        o3[t] = d3[t] - d1[t]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _at4(o0, o1, o2, o3, m0, m1, m2, m3, m4, m5):
    """o = A^T m for F(4, 3)."""
    two, four, eight = np.float32(2.0), np.float32(4.0), np.float32(8.0)
    for t in range(o0.shape[0]):
        o0[t] = m0[t] + m1[t] + m2[t] + m3[t] + m4[t]
    for t in range(o1.shape[0]):
        o1[t] = m1[t] - m2[t] + two * (m3[t] - m4[t])
    for t in range(o2.shape[0]):
        o2[t] = m1[t] + m2[t] + four * (m3[t] + m4[t])
    for t in range(o3.shape[0]):
        o3[t] = m1[t] - m2[t] + eight * (m3[t] - m4[t]) + m5[t]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _at2(o0, o1, m0, m1, m2, m3):
    """o = A^T m for F(2, 3)."""
    for t in range(o0.shape[0]):
        o0[t] = m0[t] + m1[t] + m2[t]
    for t in range(o1.shape[0]):
        o1[t] = m1[t] - m2[t] + m3[t]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _gather(slots, first, row, grid_row, m, tw):
    """slots[first + s, grid_row*tw + tx] = row[tx*m + s] for s < m + 2 (the m + 2 columns of
    every tile of one padded input row).

    Only the first m slots are de-interleaved from the row, over tw + 1 tiles: a stride-m loop
    that reads all m members of each group is one LLVM interleave group (wide loads and
    shuffles), where reading m + 2 overlapping members kept it scalar (2x slower). The last two
    slots are the first two one tile on (``row[tx*m + m + s] = slot_s[tx + 1]``): contiguous
    copies. The extra (tw+1)-th entry lands on the next grid row's first, which that row's own
    gather overwrites (the slots carry one float of slack for the last); ``row`` holds
    ``(tw + 1)*m`` floats."""
    base = grid_row * tw
    end = base + tw + 1
    s0, s1 = slots[first, base:end], slots[first + 1, base:end]
    if m == 4:
        s2, s3 = slots[first + 2, base:end], slots[first + 3, base:end]
        for tx in range(tw + 1):
            q = uint64(tx) * uint64(4)  # unsigned: no wrap-around select, no slice per tile
            s0[tx], s1[tx] = row[q], row[q + uint64(1)]
            s2[tx], s3[tx] = row[q + uint64(2)], row[q + uint64(3)]
    else:
        for tx in range(tw + 1):
            q = uint64(tx) * uint64(2)
            s0[tx], s1[tx] = row[q], row[q + uint64(1)]
    # slots m and m + 1: slots 0 and 1 one tile on
    next0, next1 = slots[first + m, base:end], slots[first + m + 1, base:end]
    for tx in range(tw):
        next0[tx] = s0[tx + 1]
    for tx in range(tw):
        next1[tx] = s1[tx + 1]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, parallel=True)
def winograd_input(x, n0, nb, m, pt, pl, th, tw, v, row_ws, slot_ws, col_ws):
    """V[xi, c, img*th*tw + t] = (B^T d_t B)[xi] for the input tiles of images n0 .. n0+nb-1.

    Per (image, channel), with a = m + 2 and tiles flattened (ty, tx) -> ty*tw + tx:

    1. every padded input row ``R = ty*m + qr`` (ty <= th, qr < m) is gathered into the a
       *slots* of its tiles: ``slot[qr*a + s, ty*tw + tx] = xpad[R, tx*m + s]``;
    2. ``col[j*m + qr] = sum_s B^T[j, s] slot[qr*a + s]`` (d B) over all tiles at once;
    3. ``V[i*a + j] = sum_r B^T[i, r] col[j*m + r%m, . + (r//m)*tw]`` (B^T d B): tile row r of
       tile row ty is row phase r%m of grid row ty + r//m, a shift of the flattened index.

    ``row_ws`` [workers, (tw+1)*m], ``slot_ws`` [workers, m*a, (th+1)*tw + 1] and ``col_ws``
    [workers, a*m, (th+1)*tw] are per-worker workspaces; worker w takes the jobs (image,
    channel) w, w + workers, ...
    """
    c_count = x.shape[1]
    tpi = th * tw
    workers = row_ws.shape[0]
    jobs = nb * c_count
    for wk in prange(workers):
        prow = row_ws[wk]
        slot = slot_ws[wk]
        col = col_ws[wk]
        for job in range(wk, jobs, workers):
            img = job // c_count
            c = job % c_count
            input_plane(x[n0 + img, c], m, pt, pl, th, tw, v, c, img * tpi, prow, slot, col)


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST)
def input_plane(plane, m, pt, pl, th, tw, v, c, b, prow, slot, col):
    """``V[xi, c, b + t] = (B^T d_t B)[xi]`` for the th x tw tiles of one channel ``plane``
    [H, W] whose padded input starts ``pt`` rows above and ``pl`` columns left of the plane
    (tile (ty, tx) reads padded rows ty*m .. ty*m + m + 1; rows outside the plane are zeros,
    so a band of tile rows is the plane with a smaller ``pt``). Workspaces: ``prow``
    [(tw+1)*m], ``slot`` [m*a, (th+1)*tw + 1], ``col`` [a*m, (th+1)*tw] (a = m + 2)."""
    h, w = plane.shape
    a = m + 2
    tpi = th * tw
    cols = prow.shape[0]
    lo = min(pl, cols)
    hi = max(min(pl + w, cols), lo)
    for ty in range(th + 1):
        for qr in range(m):
            iy = ty * m + qr - pt
            if iy < 0 or iy >= h:
                prow[:] = 0.0
            else:
                prow[:lo] = 0.0
                src = plane[iy, lo - pl : hi - pl]
                dst = prow[lo:hi]
                for q in range(hi - lo):
                    dst[q] = src[q]
                prow[hi:] = 0.0
            _gather(slot, qr * a, prow, ty, m, tw)
    # (1-D slices of C-contiguous rows only: a 2-D slice is typed 'A' (any strides) and
    # its rows' loops become gathers and scatters.)
    e = b + tpi
    if m == 4:
        for qr in range(4):
            s0 = qr * 6
            _bt4(col[qr], col[4 + qr], col[8 + qr], col[12 + qr], col[16 + qr], col[20 + qr],
                 slot[s0], slot[s0 + 1], slot[s0 + 2], slot[s0 + 3], slot[s0 + 4], slot[s0 + 5])  # fmt: skip
        for j in range(6):
            q = j * 4
            _bt4(v[j, c, b:e], v[6 + j, c, b:e], v[12 + j, c, b:e], v[18 + j, c, b:e], v[24 + j, c, b:e],
                 v[30 + j, c, b:e], col[q, :tpi], col[q + 1, :tpi], col[q + 2, :tpi], col[q + 3, :tpi],
                 col[q, tw : tw + tpi], col[q + 1, tw : tw + tpi])  # fmt: skip
    else:
        for qr in range(2):
            s0 = qr * 4
            _bt2(
                col[qr],
                col[2 + qr],
                col[4 + qr],
                col[6 + qr],
                slot[s0],
                slot[s0 + 1],
                slot[s0 + 2],
                slot[s0 + 3],
            )
        for j in range(4):
            q = j * 2
            _bt2(v[j, c, b:e], v[4 + j, c, b:e], v[8 + j, c, b:e], v[12 + j, c, b:e],
                 col[q, :tpi], col[q + 1, :tpi], col[q, tw : tw + tpi], col[q + 1, tw : tw + tpi])  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _at4_store(plane, zs, th, tw, ho, wo):
    """F(4, 3)'s second A^T pass fused with the store: for output row o of every tile,
    ``y[p] = sum_j A^T[p, j] z[o*6 + j]`` goes straight to plane[(ty*4 + o)*wo + tx*4 + p]
    (``zs`` is z flattened). Saves writing and re-reading y (one pass over the plane)."""
    tpi = uint64(th * tw)
    two, four, eight = np.float32(2.0), np.float32(4.0), np.float32(8.0)
    full = min(tw, wo // 4)
    for ty in range(th):
        for o in range(min(4, ho - ty * 4)):
            dst = uint64((ty * 4 + o) * wo)
            src = uint64(o * 6) * tpi + uint64(ty * tw)
            for tx in range(tw):
                t = src + uint64(tx)
                m0, m1, m2 = zs[t], zs[t + tpi], zs[t + uint64(2) * tpi]
                m3, m4, m5 = zs[t + uint64(3) * tpi], zs[t + uint64(4) * tpi], zs[t + uint64(5) * tpi]
                s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                y0 = m0 + s12 + s34
                y1 = d12 + two * d34
                y2 = s12 + four * s34
                y3 = d12 + eight * d34 + m5
                q = dst + uint64(tx) * uint64(4)
                if tx < full:
                    plane[q] = y0
                    plane[q + uint64(1)] = y1
                    plane[q + uint64(2)] = y2
                    plane[q + uint64(3)] = y3
                else:  # the tile that overhangs the right edge
                    left = wo - tx * 4
                    plane[q] = y0
                    if left > 1:
                        plane[q + uint64(1)] = y1
                    if left > 2:
                        plane[q + uint64(2)] = y2
                    if left > 3:
                        plane[q + uint64(3)] = y3


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, inline="always")
def _store_tiles(plane, ys, m, th, tw, ho, wo):
    """plane[(ty*m + o)*wo + tx*m + p] = ys[(o*m + p)*th*tw + ty*tw + tx]: the m x m output
    tiles into one flattened output plane, clipped at ``ho`` x ``wo``. Unsigned flat indices
    (no wrap-around selects, no slice per row); the stride a literal for each m."""
    tpi = uint64(th * tw)
    full = min(tw, wo // m)
    for ty in range(th):
        for o in range(min(m, ho - ty * m)):
            dst = uint64((ty * m + o) * wo)
            src = uint64(o * m) * tpi + uint64(ty * tw)
            if m == 4:
                for tx in range(full):
                    q = dst + uint64(tx) * uint64(4)
                    t = src + uint64(tx)
                    plane[q] = ys[t]
                    plane[q + uint64(1)] = ys[t + tpi]
                    plane[q + uint64(2)] = ys[t + uint64(2) * tpi]
                    plane[q + uint64(3)] = ys[t + uint64(3) * tpi]
            else:
                for tx in range(full):
                    q = dst + uint64(tx) * uint64(2)
                    t = src + uint64(tx)
                    plane[q] = ys[t]
                    plane[q + uint64(1)] = ys[t + tpi]
            for tx in range(full, tw):
                for p in range(min(m, wo - tx * m)):
                    plane[dst + uint64(tx * m + p)] = ys[src + uint64(p) * tpi + uint64(tx)]


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST, parallel=True)
def winograd_output(
    mm,
    n0,
    nb,
    m,
    th,
    tw,
    out,
    k_count,
    ho,
    wo,
    bias,
    has_bias,
    residual,
    res_mode,
    act,
    alpha,
    beta,
    z_ws,
    y_ws,
):
    """out[(n0 + img)*K + k] = epilogue(A^T M[:, k, tiles of img] A) for images n0 .. n0+nb-1
    (``out`` is the NCHW output as [N*K, Ho*Wo]).

    Per (image, output channel): ``z[o*a + j] = sum_i A^T[o, i] M[i*a + j]`` and
    ``y[o*m + p] = sum_j A^T[p, j] z[o*a + j]`` over all tiles at once (unit-stride loops), then
    the m x m tiles go into the output plane, which gets the epilogue while it is in L2.
    ``z_ws`` [workers, m*a, th*tw] and ``y_ws`` [workers, m*m, th*tw] (m = 2 only: F(4x4) fuses
    its second pass into the store) are per-worker workspaces;
    ``residual`` is [N*K, Ho*Wo] (or the dummy).
    """
    tpi = th * tw
    workers = z_ws.shape[0]
    jobs = nb * k_count
    for wk in prange(workers):
        z = z_ws[wk]
        y = y_ws[wk]
        for job in range(wk, jobs, workers):
            img = job // k_count
            k = job % k_count
            row = (n0 + img) * k_count + k
            res = residual[row] if res_mode != 0 else residual[0]
            output_plane(mm, k, img * tpi, m, th, tw, out[row], ho, wo, z, y)
            b = bias[k] if has_bias else np.float32(0.0)
            finish_row(out[row], b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


@njit(error_model="numpy", cache=True, nogil=True, fastmath=_FAST)
def output_plane(mm, k, t0, m, th, tw, plane, ho, wo, z, y):
    """The th x tw output tiles of channel ``k`` (``M[:, k, t0 : t0 + th*tw]``) into ``plane``
    (flat, ``ho`` x ``wo``, clipped there): ``z[o*a + j] = sum_i A^T[o, i] M[i*a + j]`` and
    ``y[o*m + p] = sum_j A^T[p, j] z[o*a + j]`` over all tiles at once (unit-stride loops).
    ``z`` [m*a, th*tw] and ``y`` [m*m, th*tw] (m = 2 only: F(4x4) fuses its second pass into
    the store) are workspaces."""
    t1 = t0 + th * tw
    if m == 4:
        for j in range(6):
            _at4(z[j], z[6 + j], z[12 + j], z[18 + j], mm[j, k, t0:t1], mm[6 + j, k, t0:t1], mm[12 + j, k, t0:t1],
                 mm[18 + j, k, t0:t1], mm[24 + j, k, t0:t1], mm[30 + j, k, t0:t1])  # fmt: skip
        _at4_store(plane, z.reshape(-1), th, tw, ho, wo)
    else:
        for j in range(4):
            _at2(
                z[j],
                z[4 + j],
                mm[j, k, t0:t1],
                mm[4 + j, k, t0:t1],
                mm[8 + j, k, t0:t1],
                mm[12 + j, k, t0:t1],
            )
        for o in range(2):
            q = o * 4
            _at2(y[o * 2], y[o * 2 + 1], z[q], z[q + 1], z[q + 2], z[q + 3])
        _store_tiles(plane, y.reshape(-1), m, th, tw, ho, wo)


def winograd_geometry_ok(node: Node, graph: Graph) -> bool:
    """3x3 kernel, stride 1, dilation 1, group 1, 2-D, constant weight, FP32, explicit pads."""
    if not _conv_node_ok(node, graph) or graph.const(node.input(1)) is None:
        return False
    w = np.asarray(graph.const(node.input(1)))
    x = graph.values[node.input(0)]
    if w.ndim != 4 or x.shape is None or len(x.shape) != 4:
        return False
    geo = ConvGeometry.of(node, w.shape)
    return (geo.kh, geo.kw, geo.sh, geo.sw, geo.dh, geo.dw, geo.group) == (3, 3, 1, 1, 1, 1, 1) and w.shape[
        2:
    ] == (3, 3)


_gemm_pool: dict[int, ThreadPoolExecutor] = {}  # by worker count, created on first use


@njit(cache=True, nogil=True, parallel=True)
def gemm_stack_pool(u, v, out):
    """out[xi] = u[xi] @ v[xi] for C-contiguous float32 stacks, the slices split over numba's
    threads, each slice one single-threaded BLAS call made from numba (``_blas``)."""
    count, m, c = u.shape
    t = v.shape[2]
    for xi in prange(count):
        _blas.sgemm_at(False, m, t, c, 1.0, u, xi * m * c, c, v, xi * c * t, t, 0.0, out, xi * m * t, t)


def gemm_stack(u: np.ndarray, v: np.ndarray, out: np.ndarray, threads: int) -> None:
    """out[xi] = u[xi] @ v[xi] for the whole stack, with BLAS held to one thread per caller.

    With ``threads`` > 1 the stack is split over numba's threads (:func:`gemm_stack_pool`), the
    pool the transforms before and after already run in: the GEMMs are independent, so no thread
    ever waits for another inside a GEMM. OpenBLAS's own threads spin-wait for each other in every
    call, and on a loaded 2-core host one call of these sizes took 30 ms instead of 1 ms; a stack
    of 16-36 such calls made the whole conv 100x slower. Without a BLAS callable from numba the
    parts go to a pool of Python threads (numpy releases the GIL in BLAS).
    """
    count = u.shape[0]
    parts = max(1, min(threads, count))
    with blas_single_thread():
        if parts == 1:
            np.matmul(u, v, out=out)
            return
        if _blas.AVAILABLE and all(a.flags.c_contiguous and a.dtype == np.float32 for a in (u, v, out)):
            gemm_stack_pool(u, v, out)
            return
        bounds = [count * i // parts for i in range(parts + 1)]
        pool = _gemm_pool.get(parts - 1)
        if pool is None:
            pool = _gemm_pool[parts - 1] = ThreadPoolExecutor(
                parts - 1, thread_name_prefix="farm-winograd-gemm"
            )
        futures = [
            pool.submit(np.matmul, u[lo:hi], v[lo:hi], out=out[lo:hi])
            for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True)
        ]
        np.matmul(u[: bounds[1]], v[: bounds[1]], out=out[: bounds[1]])
        for future in futures:
            future.result()


class WinogradConv(Tactic):
    """F(m x m, 3 x 3) Winograd conv: input transform (numba), a^2 stacked GEMMs (BLAS), output
    transform with the fused epilogue (numba)."""

    name = "cpu.conv.winograd"
    op_types = CONV_OPS
    priority = 22
    tile = 4
    split_gemm = True  # False: every GEMM on the calling thread

    def supports(self, node: Node, graph: Graph) -> bool:
        return winograd_geometry_ok(node, graph)

    filter_key = "u"  # the prepared tensor that replaces the weight

    def transformed_filter(self, w: np.ndarray) -> np.ndarray:
        """The weight as this tactic stores it: U ``[a*a, K, C]``."""
        return transform_filter(w, self.tile)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        w = graph.const(node.input(1))
        assert w is not None
        prepared = Prepared(params={"m": self.tile})
        prepared.tensors[self.filter_key] = self.transformed_filter(np.asarray(w))
        b = graph.const(node.input(2))
        if b is not None:
            prepared.tensors["bias"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        prepared.replaces = frozenset(
            i for i, k in ((1, self.filter_key), (2, "bias")) if k in prepared.tensors
        )
        return prepared

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        m = int(prepared.params.get("m", self.tile))
        a = m + 2
        u = prepared.scratch.get("u")
        if u is None:
            u = prepared.scratch["u"] = np.ascontiguousarray(prepared.tensors["u"], dtype=np.float32)
        bias, has_bias = vector_or_dummy(prepared.tensors.get("bias", inputs[2] if len(inputs) > 2 else None))
        x = np.ascontiguousarray(inputs[0], dtype=np.float32)
        out = outputs[0]
        n, k_count, ho, wo = out.shape
        c_count = x.shape[1]
        geo = ConvGeometry.of(node, (k_count, c_count, 3, 3))
        act, alpha, beta, mode = epilogue_params(node)
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, n * k_count)
        th, tw = -(-ho // m), -(-wo // m)
        tpi = th * tw
        if n == 0 or tpi == 0:
            return
        nb = max(1, min(n, -(-TARGET_TILES // tpi)))
        v = workspace(prepared, "v", (a * a * c_count * nb * tpi,))
        mm = workspace(prepared, "m", (a * a * k_count * nb * tpi,))
        planes = out.reshape(n * k_count, ho * wo)
        for n0 in range(0, n, nb):
            count = min(nb, n - n0)  # the last group may be partial: a contiguous prefix
            vv = v[: a * a * c_count * count * tpi].reshape(a * a, c_count, count * tpi)
            mv = mm[: a * a * k_count * count * tpi].reshape(a * a, k_count, count * tpi)
            with threads_for(c_count * count * tpi * a * a):
                workers = numba_thread_count()
                row_ws = workspace(prepared, "row", (workers, (tw + 1) * m))
                slot_ws = workspace(prepared, "slot", (workers, m * a, (th + 1) * tw + 1))
                col_ws = workspace(prepared, "col", (workers, a * m, (th + 1) * tw))
                winograd_input(
                    x, n0, count, m, geo.pad_top, geo.pad_left, th, tw, vv, row_ws, slot_ws, col_ws
                )
            gemm_stack(u, vv, mv, numba_thread_count() if self.split_gemm else 1)
            with threads_for(k_count * count * tpi * m * m):
                workers = numba_thread_count()
                z_ws = workspace(prepared, "z", (workers, m * a, tpi))
                y_ws = workspace(prepared, "y", (workers, m * m, tpi) if m == 2 else (workers, 1, 1))
                winograd_output(
                    mv, n0, count, m, th, tw, planes, k_count, ho, wo, bias, has_bias, residual, mode, act, alpha, beta,
                    z_ws, y_ws,
                )  # fmt: skip


register_tactic(WinogradConv)


@register_tactic
class WinogradF2Conv(WinogradConv):
    """F(2x2, 3x3): 2.25x fewer multiplies than direct, smaller tiles (less overhang on 7x7 and
    14x14 planes, U 1.8x the weight instead of 4x), ~6x more accurate than F(4x4, 3x3)."""

    name = "cpu.conv.winograd_f2"
    priority = 25
    tile = 2


@register_tactic
class SingleThreadWinogradConv(WinogradConv):
    """``cpu.conv.winograd`` with every GEMM on the calling thread (small layers, busy hosts)."""

    name = "cpu.conv.winograd_1t"
    priority = 21
    split_gemm = False


@register_tactic
class SingleThreadWinogradF2Conv(WinogradF2Conv):
    """``cpu.conv.winograd_f2`` with every GEMM on the calling thread."""

    name = "cpu.conv.winograd_f2_1t"
    priority = 20
    split_gemm = False
