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
transforms work on whole channels with the tile index innermost, so every arithmetic loop is a
long unit-stride loop: the input transform applies B^T down the padded rows first (vectors as
wide as the row), gathers the m-strided tile columns once into ``slots``, then applies B along
them; the output transform applies A^T twice over vectors of all tiles of the channel, then
scatters the m x m tiles into the NCHW output rows and runs the fused epilogue on each row while
it is in L1.

Two tactics, so the tuner picks per layer: ``cpu.conv.winograd`` is F(4x4, 3x3) (points 0, +-1,
+-2, infinity), ``cpu.conv.winograd_f2`` is F(2x2, 3x3) (points 0, +-1, infinity; more accurate,
fewer wasted pixels on small planes). Pools: numba (input transform), then BLAS (the stacked GEMM),
then numba (output transform + epilogue), one after the other, as the im2col tactics.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numba
import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    epilogue_params,
    finish_row,
    residual_rows,
    vector_or_dummy,
)
from farm.compiler.kernels.cpu._operands import workspace
from farm.compiler.kernels.cpu._threads import SingleThreadBlas, threads_for
from farm.compiler.kernels.cpu._windows import copy_window, valid_columns
from farm.compiler.kernels.cpu.conv import CONV_OPS, ConvGeometry, _conv_node_ok
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# Interpolation points of F(m x m, 3 x 3) (the point at infinity is implied).
POINTS: dict[int, tuple[float, ...]] = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 2.0, -2.0)}
# Tiles per GEMM: images are grouped until the stacked GEMMs are at least this wide.
TARGET_TILES = 256


@cache
def winograd_matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, r], B^T [a, a]) of F(m, r) in float64 (Toom-Cook, points ``POINTS[m]``).

    A^T and G are the Vandermonde matrices of the points (G's rows divided by
    prod_{l != j} (p_j - p_l)), with the point at infinity as the last row/column; B^T is solved
    from the defining identity sum_j A^T[i, j] G[j, q] B^T[j, s] = [s == i + q], exactly in
    float64 for these small integer points (checked)."""
    points = np.array(POINTS[m], np.float64)
    a = m + r - 1
    assert len(points) == a - 1
    at = np.zeros((m, a))
    g = np.zeros((a, r))
    for j, p in enumerate(points):
        at[:, j] = p ** np.arange(m)
        f = np.prod([p - q for q in points if q != p])
        g[j] = p ** np.arange(r) / f
    at[m - 1, a - 1] = 1.0
    g[a - 1, r - 1] = 1.0
    # Equations (i, q) for every column s of B^T: sum_j at[i, j] g[j, q] bt[j, s].
    coeff = np.einsum("ij,jq->iqj", at, g).reshape(m * r, a)
    target = np.zeros((m * r, a))
    for i in range(m):
        for q in range(r):
            target[i * r + q, i + q] = 1.0
    bt, *_ = np.linalg.lstsq(coeff, target, rcond=None)
    bt = np.round(bt * 2**20) / 2**20  # the exact values are dyadic; drop lstsq's round-off
    assert np.allclose(coeff @ bt, target, atol=1e-12), "Winograd B^T does not solve the identity"
    return at, g, bt


def transform_filter(w: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every (k, c): [K, C, 3, 3] -> C-contiguous float32 [a*a, K, C]
    (computed in float64)."""
    _, g, _ = winograd_matrices(m)
    a = g.shape[0]
    u = np.einsum("ix,kcxy,jy->ijkc", g, w.astype(np.float64), g)
    return np.ascontiguousarray(u.reshape(a * a, w.shape[0], w.shape[1]), dtype=np.float32)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _term(dst, cf, src, first):
    """dst = cf * src (``first``) or dst += cf * src: one unit-stride pass of a linear combination."""
    if first:
        for t in range(dst.shape[0]):
            dst[t] = cf * src[t]
    else:
        for t in range(dst.shape[0]):
            dst[t] += cf * src[t]


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def winograd_input(x, n0, nb, bt, m, pt, pl, th, tw, v, phase_ws, col_ws, wide_ws):
    """V[xi, c, img*th*tw + t] = (B^T d_t B)[xi] for the input tiles of images n0 .. n0+nb-1.

    Per (image, channel), on a grid of th x g tiles (g = tw + 1: one junk tile column per tile
    row, so that every step is one long unit-stride loop over the flattened grid):

    1. phase planes ``ph[qr*m + qc, ty*g + u] = x[ty*m + qr - pt, u*m + qc - pl]`` (0 outside):
       pixel (r, s) of tile (ty, tx) is ``ph[(r%m)*m + s%m, (ty + r//m)*g + tx + s//m]``;
    2. ``col[j*m + qr] = sum_s B^T[j, s] ph[qr*m + s%m, . + s//m]`` (d B, each row phase);
    3. ``wide[i*a + j] = sum_r B^T[i, r] col[j*m + r%m, . + (r//m)*g]`` (B^T d B);
    4. V gets ``wide`` without the junk tile column.

    ``phase_ws`` [workers, m*m, (th+1)*g + 1], ``col_ws`` [workers, a*m, (th+1)*g] and
    ``wide_ws`` [workers, a*a, th*g] are per-worker workspaces; worker w takes the jobs
    (image, channel) w, w + workers, ...
    """
    c_count, h, w = x.shape[1], x.shape[2], x.shape[3]
    a = bt.shape[0]
    tpi = th * tw
    g = tw + 1
    n2 = (th + 1) * g
    n3 = th * g
    workers = phase_ws.shape[0]
    jobs = nb * c_count
    for wk in prange(workers):
        ph = phase_ws[wk]
        col = col_ws[wk]
        wide = wide_ws[wk]
        for job in range(wk, jobs, workers):
            img = job // c_count
            c = job % c_count
            plane = x[n0 + img, c]
            for qr in range(m):
                for qc in range(m):
                    phase = ph[qr * m + qc]
                    off = qc - pl
                    lo, hi = valid_columns(off, m, w, g)
                    for ty in range(th + 1):
                        dst = phase[ty * g : (ty + 1) * g]
                        iy = ty * m + qr - pt
                        if iy < 0 or iy >= h:
                            dst[:] = 0.0
                            continue
                        dst[:lo] = 0.0
                        copy_window(dst[lo:hi], plane[iy], lo * m + off, m)
                        dst[hi:] = 0.0
                    phase[n2:] = 0.0
            for j in range(a):
                for qr in range(m):
                    first = True
                    for s in range(a):
                        if bt[j, s] != 0.0:
                            _term(col[j * m + qr], bt[j, s], ph[qr * m + s % m, s // m : s // m + n2], first)
                            first = False
            for i in range(a):
                for j in range(a):
                    first = True
                    for r in range(a):
                        if bt[i, r] != 0.0:
                            shift = (r // m) * g
                            _term(wide[i * a + j], bt[i, r], col[j * m + r % m, shift : shift + n3], first)
                            first = False
            base = img * tpi
            for xi in range(a * a):
                dst = v[xi, c, base : base + tpi]
                src = wide[xi]
                for ty in range(th):
                    d_row = dst[ty * tw : (ty + 1) * tw]
                    s_row = src[ty * g : ty * g + tw]
                    for tx in range(tw):
                        d_row[tx] = s_row[tx]


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def winograd_output(
    mm, n0, nb, at, th, tw, out, bias, has_bias, residual, res_mode, act, alpha, beta, z_ws, y_ws
):
    """out[n0 + img, k] = epilogue(A^T M[:, k, tiles of img] A) for images n0 .. n0+nb-1.

    Per (image, output channel): ``z[o*a + j] = sum_i A^T[o, i] M[i*a + j]`` and
    ``y[o*m + p] = sum_j A^T[p, j] z[o*a + j]`` over all tiles at once (unit-stride loops), then
    the m x m tiles are scattered into the output rows, each row getting the epilogue while it
    is in L1. ``z_ws`` [workers, m*a, th*tw] and ``y_ws`` [workers, m*m, th*tw] are per-worker
    workspaces; ``residual`` is [N*K*Ho, Wo] (or the dummy).
    """
    m, a = at.shape
    k_count, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    tpi = th * tw
    workers = z_ws.shape[0]
    jobs = nb * k_count
    for wk in prange(workers):
        z = z_ws[wk]
        y = y_ws[wk]
        for job in range(wk, jobs, workers):
            img = job // k_count
            k = job % k_count
            base = img * tpi
            for o in range(m):
                for j in range(a):
                    first = True
                    for i in range(a):
                        if at[o, i] != 0.0:
                            _term(z[o * a + j], at[o, i], mm[i * a + j, k, base : base + tpi], first)
                            first = False
            for o in range(m):
                for p in range(m):
                    first = True
                    for j in range(a):
                        if at[p, j] != 0.0:
                            _term(y[o * m + p], at[p, j], z[o * a + j], first)
                            first = False
            plane = out[n0 + img, k]
            b = bias[k] if has_bias else np.float32(0.0)
            row0 = ((n0 + img) * k_count + k) * ho
            for ty in range(th):
                for o in range(m):
                    oy = ty * m + o
                    if oy >= ho:
                        break
                    orow = plane[oy]
                    for p in range(m):
                        count = min(tw, (wo - p + m - 1) // m)
                        src = y[o * m + p, ty * tw : ty * tw + count]
                        dst = orow[p:]
                        for tx in range(count):
                            dst[tx * m] = src[tx]
                    res = residual[row0 + oy] if res_mode != 0 else residual[0]
                    finish_row(orow, b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


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


class WinogradConv(Tactic):
    """F(m x m, 3 x 3) Winograd conv: input transform (numba), a^2 stacked GEMMs (BLAS), output
    transform with the fused epilogue (numba)."""

    name = "cpu.conv.winograd"
    op_types = CONV_OPS
    priority = 25
    tile = 4

    def supports(self, node: Node, graph: Graph) -> bool:
        return winograd_geometry_ok(node, graph)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        w = graph.const(node.input(1))
        assert w is not None
        prepared = Prepared(params={"m": self.tile})
        prepared.tensors["u"] = transform_filter(np.asarray(w), self.tile)
        b = graph.const(node.input(2))
        if b is not None:
            prepared.tensors["bias"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        prepared.replaces = frozenset(i for i, k in ((1, "u"), (2, "bias")) if k in prepared.tensors)
        return prepared

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        m = int(prepared.params.get("m", self.tile))
        at32, bt32 = _matrices32(m)
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
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, n * k_count * ho)
        th, tw = -(-ho // m), -(-wo // m)
        tpi = th * tw
        if n == 0 or tpi == 0:
            return
        nb = max(1, min(n, -(-TARGET_TILES // tpi)))
        v = workspace(prepared, "v", (a * a * c_count * nb * tpi,))
        mm = workspace(prepared, "m", (a * a * k_count * nb * tpi,))
        for n0 in range(0, n, nb):
            count = min(nb, n - n0)  # the last group may be partial: a contiguous prefix
            vv = v[: a * a * c_count * count * tpi].reshape(a * a, c_count, count * tpi)
            mv = mm[: a * a * k_count * count * tpi].reshape(a * a, k_count, count * tpi)
            with threads_for(c_count * count * tpi * a * a):
                workers = numba.get_num_threads()
                g = tw + 1
                phase_ws = workspace(prepared, "phase", (workers, m * m, (th + 1) * g + 1))
                col_ws = workspace(prepared, "col", (workers, a * m, (th + 1) * g))
                wide_ws = workspace(prepared, "wide", (workers, a * a, th * g))
                winograd_input(
                    x, n0, count, bt32, m, geo.pad_top, geo.pad_left, th, tw, vv, phase_ws, col_ws, wide_ws
                )
            np.matmul(u, vv, out=mv)
            with threads_for(k_count * count * tpi * m * m):
                workers = numba.get_num_threads()
                z_ws = workspace(prepared, "z", (workers, m * a, tpi))
                y_ws = workspace(prepared, "y", (workers, m * m, tpi))
                winograd_output(
                    mv, n0, count, at32, th, tw, out, bias, has_bias, residual, mode, act, alpha, beta,
                    z_ws, y_ws,
                )  # fmt: skip


@cache
def _matrices32(m: int) -> tuple[np.ndarray, np.ndarray]:
    """(A^T, B^T) of F(m x m, 3 x 3) as C-contiguous float32 (exact: their entries are small
    integers)."""
    at, _, bt = winograd_matrices(m)
    return np.ascontiguousarray(at, np.float32), np.ascontiguousarray(bt, np.float32)


register_tactic(WinogradConv)


@register_tactic
class WinogradF2Conv(WinogradConv):
    """F(2x2, 3x3): 2.25x fewer multiplies than direct, smaller tiles (less overhang on 7x7 and
    14x14 planes), about 2x more accurate than F(4x4, 3x3)."""

    name = "cpu.conv.winograd_f2"
    priority = 22
    tile = 2


@register_tactic
class SingleThreadWinogradConv(SingleThreadBlas, WinogradConv):
    """``cpu.conv.winograd`` with BLAS on the calling thread only (busy hosts, small layers)."""

    name = "cpu.conv.winograd_1t"
    priority = 21
