"""Depthwise convolution tactics (groups == input channels), one output plane at a time.

``cpu.conv.depthwise_plane`` computes each (image, output channel) plane on the *wide grid* of
its phase planes (see ``_windows``): the input plane is copied once into zero-padded phase
planes (stride s splits it into sh*sw planes, so every tap of every stride and dilation reads a
contiguous run), and each tap is then one long multiply-add over a block of whole output rows,
``cols = Wo + (kw-1)*dw // sw`` floats per row (the extra columns are computed and dropped).
What made it fast where the earlier ``cpu.conv.depthwise_direct`` (same idea, since removed) was not:

* taps go several to a pass (a whole 3x3 kernel in one 9-window multiply-add loop, a 5-wide
  kernel row per loop, other widths 3 + 1 + ... taps per loop; FMA-contracted, unsigned indices
  so LLVM vectorizes without wrap-around checks, run lengths rounded up to 32 floats so no pass
  ends in a scalar remainder): the accumulator is loaded and stored once per pass, not per tap;
* no allocation in the parallel loop: each thread owns a slice of workspaces kept in
  ``prepared.scratch``, zeroed once; a plane's copy writes only the image's pixels, so the
  padding stays zero from one plane (and one run) to the next;
* the output rows are processed in blocks of about :data:`BLOCK_FLOATS` floats that stay in L1;
  the bias is folded into the first tap pass, and identity/Relu/Clip/HardSigmoid/HardSwish (with
  a residual before or after) into the copy out of the wide grid (``_epilogue.finish16``); other
  activations run ``_epilogue.finish_row``
  over the block's contiguous output rows;
* stride-2 columns are split into their two phases 16 at a time (two masked loads, ``vevens16`` /
  ``vodds16``, two masked stores), stride-1 rows copied by masked 16-float moves, and the copy out
  of the wide grid (with its clamp and residual) runs on masked vectors too, so a 14-float row is
  one step, not a scalar remainder loop; narrow images (7x7, 14x14 at stride 2) are copied by a
  precomputed gather map instead of short row copies.

Measured on the 2-core AMD EPYC dev VM under load (bench_kernels_vs_ort.py --only depthwise,
ours/ORT): MobileNet layers 0.56-1.19 at batch 1 and 0.17-0.86 at batch 8, against 2.3-4.7 for
the older tactics. Weak spot: many-channel 7x7 planes (960@7: ~1.5x ORT), where the per-plane
set-up outweighs 49 outputs; an 8-channel-lane layout would suit those better.

``cpu.conv.depthwise_plane_1t`` is the same on the calling thread only: a small layer does not
pay for waking numba's second thread (the tuner times both).

Pool: numba's (``prange`` over one contiguous run of planes per thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numba import njit, prange, uint64

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
from farm.compiler.kernels.cpu._operands import RunsBound, dense
from farm.compiler.kernels.cpu._simd16 import (
    LANES,
    vevens16,
    vload16_masked,
    vodds16,
    vstore16_masked,
)
from farm.compiler.kernels.cpu._threads import bound_call, numba_thread_count, threads_for
from farm.compiler.kernels.cpu._windows import valid_columns
from farm.compiler.kernels.cpu.conv import (
    CONV_OPS,
    ConvGeometry,
    _as_4d,
    _conv_node_ok,
    _out_4d,
    _weight_4d,
    _weight_shape,
)
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# Floats of one block of wide output rows (8 KiB): the accumulator of a block stays in L1.
BLOCK_FLOATS = 2048
# The tap loops run over a multiple of this many floats (LLVM's vectorized body: 4 x 8 lanes),
# so no pass ends in a scalar remainder loop; the workspaces carry this much slack at the end.
RUN = 32
# Images whose rows give fewer floats than this per column phase are copied into their phase
# planes by a precomputed gather (``_fill_gathered``) instead of row by row.
GATHER_BELOW = 12


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _fill_phases(xf, x0, h, wi, ph, sh, sw, pt, pl, rows, cols):
    """Copy the [h, wi] plane at flat offset ``x0`` of ``xf`` into its flattened phase planes
    ``ph``: ``ph[(a*sw + b)*rows*cols + r*cols + q] = plane[r*sh + a - pt, q*sw + b - pl]``,
    writing only the positions inside the image (the rest is padding, zero from allocation).
    Flat unsigned indices throughout: no per-row slice objects, no wrap-around checks."""
    size = rows * cols
    for a in range(sh):
        r_lo = max(0, (pt - a + sh - 1) // sh)
        r_hi = min(rows, (h - 1 + pt - a) // sh + 1) if h - 1 + pt - a >= 0 else 0
        if sw == 2:
            lo0, hi0 = valid_columns(-pl, 2, wi, cols)
            lo1, hi1 = valid_columns(1 - pl, 2, wi, cols)
            q_lo = max(lo0, lo1)
            q_hi = max(q_lo, min(hi0, hi1))
            count = q_hi - q_lo
            for r in range(r_lo, r_hi):
                row = x0 + (r * sh + a - pt) * wi
                d0 = (2 * a) * size + r * cols
                d1 = d0 + size
                src = row + 2 * q_lo - pl
                for t in range(0, count, LANES):  # both column phases, 16 columns a step
                    n = min(LANES, count - t)
                    v0 = vload16_masked(xf, src + 2 * t, min(LANES, 2 * n))
                    v1 = vload16_masked(xf, src + 2 * t + LANES, max(0, 2 * n - LANES))
                    vstore16_masked(ph, d0 + q_lo + t, vevens16(v0, v1), n)
                    vstore16_masked(ph, d1 + q_lo + t, vodds16(v0, v1), n)
                for q in range(lo0, q_lo):
                    ph[d0 + q] = xf[row + 2 * q - pl]
                for q in range(q_hi, hi0):
                    ph[d0 + q] = xf[row + 2 * q - pl]
                for q in range(lo1, q_lo):
                    ph[d1 + q] = xf[row + 2 * q + 1 - pl]
                for q in range(q_hi, hi1):
                    ph[d1 + q] = xf[row + 2 * q + 1 - pl]
            continue
        for b in range(sw):
            lo, hi = valid_columns(b - pl, sw, wi, cols)
            step = uint64(sw)
            for r in range(r_lo, r_hi):
                src = uint64(x0 + (r * sh + a - pt) * wi + lo * sw + b - pl)
                dst = uint64((a * sw + b) * size + r * cols + lo)
                if sw == 1:
                    for q in range(0, hi - lo, LANES):
                        n = min(LANES, hi - lo - q)
                        vstore16_masked(ph, dst + q, vload16_masked(xf, src + q, n), n)
                else:
                    for q in range(hi - lo):
                        uq = uint64(q)
                        ph[dst + uq] = xf[src + uq * step]


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _fill_gathered(xf, x0, ph, gather):
    """ph[gather[0, k]] = xf[x0 + gather[1, k]]: the phase planes of a narrow image in one flat
    loop over its pixels (a row copy of a few floats costs more in loop set-up than in copying)."""
    dst = gather[0]
    src = gather[1]
    base = uint64(x0)
    for k in range(dst.shape[0]):
        ph[uint64(dst[k])] = xf[base + uint64(src[k])]


def _gather_map(geo: ConvGeometry, h: int, wi: int, rows: int, cols: int) -> np.ndarray:
    """[2, K] int32: (flat phase-plane position, flat offset in the image) of every image pixel
    that ``_fill_phases`` would copy, in phase-plane order."""
    a, b, r, q = np.meshgrid(
        np.arange(geo.sh), np.arange(geo.sw), np.arange(rows), np.arange(cols), indexing="ij"
    )
    iy = r * geo.sh + a - geo.pad_top
    ix = q * geo.sw + b - geo.pad_left
    dst = ((a * geo.sw + b) * rows + r) * cols + q
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wi)
    order = np.argsort(dst[inside], kind="stable")
    return np.ascontiguousarray(np.stack([dst[inside][order], (iy * wi + ix)[inside][order]]), np.int32)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _tap_start(i, j, sh, sw, dh, dw, rows, cols, oy0):
    """Flat offset in the phase planes of tap (i, j)'s window for output rows from ``oy0``."""
    phase = ((i * dh) % sh) * sw + (j * dw) % sw
    return phase * rows * cols + ((i * dh) // sh + oy0) * cols + (j * dw) // sw


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _taps1(acc, n, ph, s0, w0, init, bias):
    """acc[:n] (= bias if init else +=) w0 * ph[s0:]."""
    u0 = uint64(s0)
    if init:
        for q in range(n):
            uq = uint64(q)
            acc[uq] = bias + w0 * ph[u0 + uq]
    else:
        for q in range(n):
            uq = uint64(q)
            acc[uq] += w0 * ph[u0 + uq]


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _taps3(acc, n, ph, s0, s1, s2, w0, w1, w2, init, bias):
    """Three taps (one kernel row of a 3-wide kernel) in one pass over acc[:n]."""
    u0, u1, u2 = uint64(s0), uint64(s1), uint64(s2)
    if init:
        for q in range(n):
            uq = uint64(q)
            acc[uq] = bias + w0 * ph[u0 + uq] + w1 * ph[u1 + uq] + w2 * ph[u2 + uq]
    else:
        for q in range(n):
            uq = uint64(q)
            acc[uq] += w0 * ph[u0 + uq] + w1 * ph[u1 + uq] + w2 * ph[u2 + uq]


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _taps9(acc, n, ph, wm, bias, sh, sw, dh, dw, rows, cols, oy0):
    """acc[:n] = bias + a whole 3x3 kernel in one pass: each accumulator element is stored once
    instead of once per kernel row."""
    u0 = uint64(_tap_start(0, 0, sh, sw, dh, dw, rows, cols, oy0))
    u1 = uint64(_tap_start(0, 1, sh, sw, dh, dw, rows, cols, oy0))
    u2 = uint64(_tap_start(0, 2, sh, sw, dh, dw, rows, cols, oy0))
    u3 = uint64(_tap_start(1, 0, sh, sw, dh, dw, rows, cols, oy0))
    u4 = uint64(_tap_start(1, 1, sh, sw, dh, dw, rows, cols, oy0))
    u5 = uint64(_tap_start(1, 2, sh, sw, dh, dw, rows, cols, oy0))
    u6 = uint64(_tap_start(2, 0, sh, sw, dh, dw, rows, cols, oy0))
    u7 = uint64(_tap_start(2, 1, sh, sw, dh, dw, rows, cols, oy0))
    u8 = uint64(_tap_start(2, 2, sh, sw, dh, dw, rows, cols, oy0))
    w0, w1, w2 = wm[0, 0], wm[0, 1], wm[0, 2]
    w3, w4, w5 = wm[1, 0], wm[1, 1], wm[1, 2]
    w6, w7, w8 = wm[2, 0], wm[2, 1], wm[2, 2]
    for q in range(n):
        uq = uint64(q)
        acc[uq] = (
            bias + w0 * ph[u0 + uq] + w1 * ph[u1 + uq] + w2 * ph[u2 + uq]
            + w3 * ph[u3 + uq] + w4 * ph[u4 + uq] + w5 * ph[u5 + uq]
            + w6 * ph[u6 + uq] + w7 * ph[u7 + uq] + w8 * ph[u8 + uq]
        )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _taps5(acc, n, ph, s0, s1, s2, s3, s4, w0, w1, w2, w3, w4, init, bias):
    """Five taps (one kernel row of a 5-wide kernel) in one pass over acc[:n]."""
    u0, u1, u2, u3, u4 = uint64(s0), uint64(s1), uint64(s2), uint64(s3), uint64(s4)
    if init:
        for q in range(n):
            uq = uint64(q)
            acc[uq] = (
                bias + w0 * ph[u0 + uq] + w1 * ph[u1 + uq] + w2 * ph[u2 + uq]
                + w3 * ph[u3 + uq] + w4 * ph[u4 + uq]
            )  # fmt: skip
    else:
        for q in range(n):
            uq = uint64(q)
            acc[uq] += (
                w0 * ph[u0 + uq] + w1 * ph[u1 + uq] + w2 * ph[u2 + uq]
                + w3 * ph[u3 + uq] + w4 * ph[u4 + uq]
            )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _accumulate(acc, ph, wm, bias, oy0, nr, sh, sw, dh, dw, rows, cols):
    """acc[:nr*cols] = bias + the conv of output rows oy0 .. oy0+nr on the wide grid; ``wm`` is
    the channel's [kh, kw] kernel."""
    kh, kw = wm.shape
    n = (nr * cols + RUN - 1) // RUN * RUN  # the extra floats are junk columns, never read
    if kh == 3 and kw == 3:
        _taps9(acc, n, ph, wm, bias, sh, sw, dh, dw, rows, cols, oy0)
        return
    for i in range(kh):
        init = i == 0
        if kw == 3:
            _taps3(
                acc, n, ph,
                _tap_start(i, 0, sh, sw, dh, dw, rows, cols, oy0),
                _tap_start(i, 1, sh, sw, dh, dw, rows, cols, oy0),
                _tap_start(i, 2, sh, sw, dh, dw, rows, cols, oy0),
                wm[i, 0], wm[i, 1], wm[i, 2], init, bias,
            )  # fmt: skip
        elif kw == 5:
            _taps5(
                acc, n, ph,
                _tap_start(i, 0, sh, sw, dh, dw, rows, cols, oy0),
                _tap_start(i, 1, sh, sw, dh, dw, rows, cols, oy0),
                _tap_start(i, 2, sh, sw, dh, dw, rows, cols, oy0),
                _tap_start(i, 3, sh, sw, dh, dw, rows, cols, oy0),
                _tap_start(i, 4, sh, sw, dh, dw, rows, cols, oy0),
                wm[i, 0], wm[i, 1], wm[i, 2], wm[i, 3], wm[i, 4], init, bias,
            )  # fmt: skip
        else:
            j = 0
            while j + 3 <= kw:
                _taps3(
                    acc, n, ph,
                    _tap_start(i, j, sh, sw, dh, dw, rows, cols, oy0),
                    _tap_start(i, j + 1, sh, sw, dh, dw, rows, cols, oy0),
                    _tap_start(i, j + 2, sh, sw, dh, dw, rows, cols, oy0),
                    wm[i, j], wm[i, j + 1], wm[i, j + 2], init and j == 0, bias,
                )  # fmt: skip
                j += 3
            while j < kw:
                _taps1(
                    acc,
                    n,
                    ph,
                    _tap_start(i, j, sh, sw, dh, dw, rows, cols, oy0),
                    wm[i, j],
                    init and j == 0,
                    bias,
                )
                j += 1


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _store_block(acc, block, nr, wo, cols, res, ep):
    """block[r*wo + q] = the wide accumulator's acc[r*cols + q] through the vector epilogue ``ep``
    (``_epilogue.finish16``: here a clamp, with the residual added before or after it): the copy
    out of the wide grid and a Relu/Clip epilogue in one pass, 16 columns a step (the last step
    of a row masked)."""
    for r in range(nr):
        for q in range(0, wo, LANES):
            n = min(LANES, wo - q)
            finish16(vload16_masked(acc, r * cols + q, n), block, r * wo + q, n, res, ep)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def depthwise_planes(
    x,
    w,
    bias,
    residual,
    res_mode,
    act,
    alpha,
    beta,
    out,
    ho,
    wo,
    mult,
    sh,
    sw,
    pt,
    pl,
    dh,
    dw,
    ph,
    acc,
    gather,
):
    """Depthwise conv of ``x`` [N*C, H, W] into ``out`` [N*M, Ho*Wo] (plane t = n*M + m reads
    input plane n*C + m // mult).

    ``w`` [M, kh, kw] and ``bias`` [M] float32; ``residual`` [N*M, Ho*Wo] or a dummy.
    ``ph`` [T, sh*sw*rows*cols] (zero where no pixel is ever written) and ``acc`` [T, block] are
    the workspaces of the T threads; plane range k*P//T .. (k+1)*P//T goes to thread k.
    ``gather`` [2, K] (see ``_gather_map``) fills the phase planes of narrow images; [2, 0]
    selects the row copies of ``_fill_phases``.
    """
    planes = out.shape[0]
    h, wi = x.shape[1], x.shape[2]
    xf = x.reshape(-1)
    m_count = w.shape[0]
    c_count = m_count // mult
    kh, kw = w.shape[1], w.shape[2]
    chunks = ph.shape[0]
    # the vector activations (a clamp, HardSigmoid, HardSwish) run in the copy out of the
    # accumulator; the others afterwards, over the block's rows
    vector = act in VECTOR_ACTS
    ep = vector_epilogue(res_mode, act, alpha, beta)
    rows = ho + ((kh - 1) * dh) // sh + 1
    cols = wo + ((kw - 1) * dw) // sw
    rb = max(1, min(ho, (acc.shape[1] - RUN) // cols))
    for k in prange(chunks):
        buf = ph[k]
        ac = acc[k]
        last = -1
        for t in range(k * planes // chunks, (k + 1) * planes // chunks):
            n = t // m_count
            m = t % m_count
            src = n * c_count + m // mult
            if src != last:
                if gather.shape[1] > 0:
                    _fill_gathered(xf, src * h * wi, buf, gather)
                else:
                    _fill_phases(xf, src * h * wi, h, wi, buf, sh, sw, pt, pl, rows, cols)
                last = src
            oplane = out[t]  # [Ho*Wo]
            res = residual[t] if res_mode != 0 else residual[0]
            for oy0 in range(0, ho, rb):
                nr = min(rb, ho - oy0)
                _accumulate(ac, buf, w[m], bias[m], oy0, nr, sh, sw, dh, dw, rows, cols)
                block = oplane[oy0 * wo : (oy0 + nr) * wo]
                rblock = res[oy0 * wo : (oy0 + nr) * wo] if res_mode != RES_NONE else res
                _store_block(ac, block, nr, wo, cols, rblock, ep)
                if not vector:
                    finish_row(block, np.float32(0.0), bias, 0, rblock, res_mode, act, alpha, beta)


def _kernel_3d(w: np.ndarray) -> np.ndarray:
    """[M, 1, (kh,) kw] -> C-contiguous float32 [M, kh, kw]."""
    w4 = _weight_4d(w)
    return np.ascontiguousarray(w4.reshape(w4.shape[0], w4.shape[2], w4.shape[3]), np.float32)


@register_tactic
class DepthwisePlaneConv(RunsBound, Tactic):
    """Depthwise conv per output plane on phase planes, kernel rows in one vectorized pass,
    thread-owned workspaces, epilogue per block of rows (see the module docstring)."""

    name = "cpu.conv.depthwise_plane"
    op_types = CONV_OPS
    priority = 34

    def supports(self, node: Node, graph: Graph) -> bool:
        """FP32 1-D/2-D conv with group == C_in (one input channel per group, any multiplier)."""
        if not _conv_node_ok(node, graph):
            return False
        w = graph.values[node.input(1)]
        x = graph.values[node.input(0)]
        if w.shape is None or x.shape is None or not isinstance(x.shape[1], int):
            return False
        group = int(node.attr("group", 1))
        return group > 1 and group == x.shape[1] and w.shape[1] == 1

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """A constant weight packed as [M, kh, kw] float32, and a constant bias."""
        prepared = Prepared(params={"weight_shape": _weight_shape(node, graph)})
        w = graph.const(node.input(1))
        if w is not None:
            prepared.tensors["weight"] = _kernel_3d(w)
            prepared.replaces = frozenset({1})
        b = graph.const(node.input(2)) if node.input(2) else None
        if b is not None:
            prepared.tensors["bias"] = np.ascontiguousarray(b, np.float32).reshape(-1)
            prepared.replaces = prepared.replaces | {2}
        return prepared

    def _operands(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared, m: int
    ) -> tuple[ConvGeometry, np.ndarray, np.ndarray, tuple[int, float, float, int]]:
        """(geometry, weight [M, kh, kw], bias [M], epilogue params); cached when constant."""
        cached = prepared.scratch.get("operands")
        if cached is not None:
            return cached
        geo = ConvGeometry.of(node, prepared.params["weight_shape"])
        w = prepared.tensors.get("weight")
        w = _kernel_3d(inputs[1]) if w is None else np.ascontiguousarray(w, np.float32)  # type: ignore[arg-type]
        b = prepared.tensors.get("bias")
        if b is None:
            raw_b = inputs[2] if len(inputs) > 2 else None
            b = np.zeros(m, np.float32) if raw_b is None else raw_b
        b = np.ascontiguousarray(b, np.float32).reshape(-1)
        result = (geo, w, b, epilogue_params(node))
        if "weight" in prepared.tensors and (not node.input(2) or "bias" in prepared.tensors):
            prepared.scratch["operands"] = result
        return result

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays. Without ``copies`` (the runtime's binding), None when an
        operand would have to be copied first: a non-contiguous input, a broadcast residual, or
        weights and bias that are run-time inputs."""
        out4 = _out_4d(outputs[0])
        n, m, ho, wo = out4.shape
        geo, w, bias, (act, alpha, beta, mode) = self._operands(node, inputs, prepared, m)
        x4 = _as_4d(inputs[0])  # type: ignore[arg-type]
        residual_in = inputs[3] if len(inputs) > 3 else None
        if not copies and (
            "operands" not in prepared.scratch
            or not dense(x4)
            or (residual_in is not None and not dense(residual_in, outputs[0].shape))
        ):
            return None
        c, h, wi = x4.shape[1], x4.shape[2], x4.shape[3]
        x = np.ascontiguousarray(x4, np.float32).reshape(n * c, h, wi)
        out = out4.reshape(n * m, ho * wo)
        residual = residual_rows(residual_in, outputs[0].shape, n * m)
        elements = self._elements(out.size, geo)
        with threads_for(elements):
            chunks = max(1, min(numba_thread_count(), n * m))  # 1 inside a single-threaded region
            kernel, args = self._kernel(
                prepared, geo, x, w, bias, residual, (mode, act, alpha, beta), out, (ho, wo), m // c, chunks
            )
            return bound_call(kernel, args, elements)

    def _kernel(
        self,
        prepared: Prepared,
        geo: ConvGeometry,
        x: np.ndarray,
        w: np.ndarray,
        bias: np.ndarray,
        residual: np.ndarray,
        epilogue: tuple[int, int, float, float],
        out: np.ndarray,
        out_hw: tuple[int, int],
        mult: int,
        chunks: int,
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The numba kernel and its arguments over ``x`` [N*C, H, W] into ``out`` [N*M, Ho*Wo]
        in ``chunks`` runs of planes; ``epilogue`` = (residual mode, activation, alpha, beta)."""
        mode, act, alpha, beta = epilogue
        ho, wo = out_hw
        ph, acc, gather = self._workspaces(prepared, geo, x.shape, ho, wo, chunks)
        return depthwise_planes, (
            x, w, bias, residual, mode, act, alpha, beta, out, ho, wo, mult,
            geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw, ph, acc, gather,
        )  # fmt: skip

    def _elements(self, out_size: int, geo: ConvGeometry) -> int:
        return out_size * geo.kh * geo.kw

    @staticmethod
    def _workspaces(
        prepared: Prepared, geo: ConvGeometry, x_shape: tuple[int, ...], ho: int, wo: int, chunks: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-thread phase planes (zeroed once: only image pixels are ever written there, the
        same ones for every plane of this input shape), accumulators, and the gather map of a
        narrow image (rows of fewer than :data:`GATHER_BELOW` floats per column phase)."""
        key: Any = (tuple(x_shape), ho, wo, chunks)
        cached = prepared.scratch.get("workspaces")
        if cached is not None and cached[0] == key:
            return cached[1], cached[2], cached[3]
        rows = ho + ((geo.kh - 1) * geo.dh) // geo.sh + 1
        cols = wo + ((geo.kw - 1) * geo.dw) // geo.sw
        ph = np.zeros((chunks, geo.sh * geo.sw * rows * cols + RUN), np.float32)
        block = max(1, min(ho, BLOCK_FLOATS // cols)) * cols
        acc = np.zeros((chunks, block + RUN), np.float32)
        h, wi = x_shape[1], x_shape[2]
        if wi // geo.sw < GATHER_BELOW:
            gather = _gather_map(geo, h, wi, rows, cols)
        else:
            gather = np.zeros((2, 0), np.int32)
        prepared.scratch["workspaces"] = (key, ph, acc, gather)
        return ph, acc, gather


@register_tactic
class SingleThreadDepthwisePlaneConv(DepthwisePlaneConv):
    """``cpu.conv.depthwise_plane`` on the calling thread only (small layers, busy hosts)."""

    name = "cpu.conv.depthwise_plane_1t"
    priority = 33

    def _elements(self, out_size: int, geo: ConvGeometry) -> int:
        return 0  # threads_for(0): numba's loops run on the calling thread
