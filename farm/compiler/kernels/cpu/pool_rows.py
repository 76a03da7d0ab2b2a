"""MaxPool / AveragePool on sixteen-lane vectors, one output row at a time.

``cpu.pool.rows`` computes each (image, channel) plane output row by output row, in two vector
passes over a padded scratch row (``_simd16``):

* **down the window** (rows), for every output row of the plane first: the ``kh`` input rows the
  output row reads reduce into that row's scratch row (16 columns per vector: one ``vmaxps`` or
  ``vaddps`` per vector and row); the scratch rows' padding holds the pool's fill (``-inf`` for
  max, ``0`` for average) and is written once per run of planes;
* **across the window** (columns): sixteen adjacent outputs per vector, the maximum (sum) of the
  ``kw`` taps, each tap one unaligned load of the scratch row at stride 1, or at stride 2 the even
  lanes of 32 consecutive floats (one ``vpermt2ps``); AveragePool divides by the separable count
  of taps inside the counted region, as ``cpu.pool.window`` does; the last block's store is masked.

So the input is read once, every step is a whole-vector operation, and the scratch rows (one
plane's worth) live in L1 or L2.
The rule for which inputs a window sees is ``cpu.pool.window``'s: the output size comes from the
output buffer (``ceil_mode`` is already in it), padded positions never win a max and count for an
average only with ``count_include_pad``. Width strides other than 1 and 2 are left to the other
pool tactics (``supports`` declines them).

Pool: numba's (``prange`` over the planes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._simd16 import (
    LANES,
    vadd16,
    vdiv16,
    vevens16,
    vload16,
    vload16_masked,
    vmax16,
    vmul16,
    vsplat16,
    vstore16,
    vstore16_masked,
)
from farm.compiler.kernels.cpu._threads import numba_thread_count
from farm.compiler.kernels.cpu.pool import WindowPool, _divisors, _window_geometry
from farm.compiler.kernels.registry import register_tactic


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _combine(a, b, is_max):
    """``b if b > a else a`` (max: a NaN already held stays, as in ``cpu.pool.window``) or ``a + b``."""
    if is_max:
        return vmax16(b, a)
    return vadd16(a, b)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _tap(row, u, sw):
    """Scratch-row columns u, u+sw, .., u+15*sw (``sw`` 1 or 2)."""
    if sw == 1:
        return vload16(row, u)
    return vevens16(vload16(row, u), vload16(row, u + LANES))


@njit(error_model="numpy", cache=True, nogil=True)
def scratch_length(w, wo, kw, sw, dw, pl):
    """Floats in the padded scratch row: the input's columns at offset ``pl`` and every column a
    whole 16-lane block of outputs (and its stride-2 partner load) can touch."""
    blocks = (wo + LANES - 1) // LANES
    reach = (blocks * LANES - 1) * sw + (kw - 1) * dw + 1 + (LANES if sw == 2 else 0)
    return max(pl + w, reach) + LANES


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def pool_rows(x, out, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, is_max, count_include_pad, chunks):
    """Max or average pooling of x [N, C, H, W] into out [N, C, Ho, Wo] (``sw`` 1 or 2), the
    planes in ``chunks`` runs, each with one scratch of ``Ho`` padded rows (one per plane cost
    20 % of ResNet's MaxPool)."""
    n_count, c_count, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    count_y, count_x = _divisors(h, w, ho, wo, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad)
    blocks = (wo + LANES - 1) // LANES
    counts_x = np.ones(blocks * LANES, np.float32)  # padded with ones: lanes past wo are not stored
    counts_x[:wo] = count_x
    length = scratch_length(w, wo, kw, sw, dw, pl)
    fill = np.float32(-np.inf) if is_max else np.float32(0.0)
    whole = w // LANES * LANES
    xf = x.reshape(-1)
    of = out.reshape(-1)
    planes = n_count * c_count
    chunks = max(1, min(planes, chunks))
    for ch in prange(chunks):
        rows = np.full(ho * length, fill)  # the padding keeps the fill: only data columns are written
        for t in range(ch * planes // chunks, (ch + 1) * planes // chunks):
            _pool_plane(xf, of, rows, length, t, fill, h, w, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw, is_max, whole,
                        blocks, count_y, counts_x)  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True)
def _pool_plane(xf, of, rows, length, t, fill, h, w, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw, is_max, whole, blocks,
                count_y, counts_x):  # fmt: skip
    """Plane t (image x channel) of :func:`pool_rows`: every output row's reduction down the
    window into its own scratch row first, then the taps across. With one scratch row reused
    row by row, each tap loaded, at another offset, a vector stored moments before, which
    waits for the store instead of being forwarded; the two passes apart took 0.87-0.95 of
    that time (one node, interleaved with ORT: ResNet's stem pool 0.080 -> 0.070 ms, YOLO's
    SPPF 5x5 on 128 @10x10 22 -> 21 us).

    Down the window, the whole 16-column vectors go row after row through the scratch row (a
    vector stored and reloaded a block later is forwarded). The ragged last ``w % 16`` columns
    are reduced in a register instead: through the scratch row, each tap reloaded the *masked*
    store of the tap just before, which the store buffer does not forward, and a 10 x 10 plane
    (all of it ragged) took ~1,000 cycles. In-process A/B against the previous kernel (Zen 5,
    2 threads, interleaved): the SPPF 5x5 on 128 @10x10 0.53-0.62 of its time at batch 1 and
    8, 2x2 stride 2 on 256 @20x20 0.89-0.94; 5x5 on 32 @80x80 (no ragged columns) 0.96; the
    stem pool 64 @112x112 (none either, the same instructions) 1.0 at batch 1, 1.04-1.09 at
    batch 8 (code layout: a register-only variant of the whole vectors, tried too, lost up to
    2x on the large planes)."""
    base_in = t * h * w
    base_out = t * ho * wo
    tail = w - whole
    for oy in range(ho):
        at = oy * length + pl
        first = True
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            if iy < 0 or iy >= h:
                continue
            src = base_in + iy * w
            for c in range(0, whole, LANES):
                v = vload16(xf, src + c)
                vstore16(rows, at + c, v if first else _combine(vload16(rows, at + c), v, is_max))
            first = False
        if first:  # no input row inside this window (pads as large as the kernel)
            for c in range(w):
                rows[at + c] = fill
        elif tail:  # the ragged last columns: reduced in a register, stored once
            acc = vsplat16(fill)
            first = True
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                if 0 <= iy < h:
                    v = vload16_masked(xf, base_in + iy * w + whole, tail)
                    acc = v if first else _combine(acc, v, is_max)
                    first = False
            vstore16_masked(rows, at + whole, acc, tail)
    for oy in range(ho):
        scale = vsplat16(count_y[oy])
        dst = base_out + oy * wo
        row0 = oy * length
        for b in range(blocks):
            q = row0 + b * LANES * sw
            acc = _tap(rows, q, sw)
            for j in range(1, kw):
                acc = _combine(acc, _tap(rows, q + j * dw, sw), is_max)
            if not is_max:
                acc = vdiv16(acc, vmul16(scale, vload16(counts_x, b * LANES)))
            vstore16_masked(of, dst + b * LANES, acc, wo - b * LANES)


@register_tactic
class RowVectorPool(WindowPool):
    """MaxPool / AveragePool with width stride 1 or 2 on 16-lane vectors (:func:`pool_rows`):
    rows reduced into a padded scratch row, then 16 outputs per vector across the window. Same
    attributes as ``cpu.pool.window``."""

    name = "cpu.pool.rows"
    priority = 22

    def supports(self, node: Node, graph: Graph) -> bool:
        if not super().supports(node, graph):
            return False
        x = graph.values[node.input(0)]
        _, strides, _, _ = _window_geometry(node, x.rank or 4)
        return strides[1] in (1, 2)

    def _kernel(
        self, x: np.ndarray, out: np.ndarray, kernel: list[int], strides: list[int], pads: list[int],
        dilations: list[int], is_max: bool, include_pad: bool,
    ) -> tuple[Callable[..., None], tuple]:  # fmt: skip
        return pool_rows, (
            x, out, kernel[0], kernel[1], strides[0], strides[1],
            pads[0], pads[1], pads[2], pads[3], dilations[0], dilations[1], is_max, include_pad,
            4 * numba_thread_count(),
        )  # fmt: skip


__all__: Sequence[str] = ("RowVectorPool", "pool_rows", "scratch_length")
