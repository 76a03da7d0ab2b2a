"""ConvTranspose as output bands in one thread pool: a GEMM to columns, then col2im, per band.

Two tactics compute ConvTranspose (the decoder upsampling of segmentation and text-detection
heads, U-Nets, GAN generators, vocoders) of x [N, C, H, W] with a constant weight
[C, M/group, kh, kw] into y [N, M, Ho, Wo]. A task owns one band of output rows of a block of
output channels of one image and group, so no two tasks write the same element:

1. it fills its rows with the bias (0 without one);
2. for the input rows that reach its band (``iy*sh + ky*dh - pad_top`` inside it), a few rows at
   a time, it multiplies the group's transposed weight [Mb*kh*kw, C/group] by those input rows
   [C/group, rows*W], read in place (the channel stride is the plane), into a small column
   buffer that stays in L2:
   - ``cpu.conv_transpose.tiles`` in 12-row x 32-pixel register tiles (``pointwise_tiles``'
     tile, the weight packed once into 12-row panels, so a channel block holds whole panels);
   - ``cpu.conv_transpose.bands`` with single-threaded BLAS called from numba
     (``_blas.sgemm_at``), OpenBLAS on small panels: 1.3-1.9x the tiles' time on decoder
     shapes (Zen 5), kept for the tuner to weigh;
3. it adds each column row into the output row and columns it lands on (col2im): output pixel
   ``(iy*sh + ky*dh - pad_top, ix*sw + kx*dw - pad_left)`` of tap (ky, kx), skipping the
   positions the pads crop. At stride 1 a tap's row is one shifted vector add; at stride 2 an
   even-column tap and an odd-column one are added as one interleave, sixteen column pairs a
   step (the k2, k3 and k4 stride-2 upsamplers); other strides go column by column;
4. FusedConvTranspose (``epilogue_fusion``: ConvTranspose -> bias Add -> activation) applies its
   activation to each output row once no later input row reaches it, chunk by chunk, while the
   row is still in cache; rows no input row reaches get act(bias).

Bands overlap in the input rows they read when ``(kh-1)*dh >= sh``; those few rows' products are
computed once per band (a band is tens of rows). Any stride, dilation, group, asymmetric or
negative (``output_shape`` larger than the full output) pads and ``output_padding`` (the rows and
columns no tap reaches hold the bias); 1-D as height-1 2-D. 3-D and a weight read at run time go
to the reference tactic. Pool: numba's (BLAS held to one thread).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu import _blas
from farm.compiler.kernels.cpu._epilogue import (
    ACT_NONE,
    RES_NONE,
    activate_row,
    epilogue_params,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._microgemm import MR, pack_rows
from farm.compiler.kernels.cpu._operands import RunsBound, constant_input, dense, float32_io, memo
from farm.compiler.kernels.cpu._simd16 import LANES, vadd16, vload16, vstore16, vziphi16, vziplo16
from farm.compiler.kernels.cpu._threads import blas_single_thread_call, numba_thread_count
from farm.compiler.kernels.cpu.pointwise_tiles import PIXELS, _tile
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.reference.nn_conv import conv_transpose_geometry

# A task's column buffer ([channels*kh*kw, rows*W] floats) is kept under this many bytes.
COLUMN_BYTES = 256 * 1024


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _ceil_div(a, b):
    return -((-a) // b)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def conv_transpose_bands(
    x, wt, bias, out, kh, kw, sh, sw, pt, pl, dh, dw, band, block, chunk, act, alpha, beta
):
    """ConvTranspose of x [N, C, H, W] with wt [G, Mg*kh*kw, Cg] (row ``(m*kh + ky)*kw + kx`` is
    output channel m's tap (ky, kx)) plus ``bias`` [M] into out [N, M, Ho, Wo]: tasks of ``band``
    output rows x ``block`` output channels, input rows ``chunk`` at a time; the activation
    ``act`` (an ``_epilogue`` code with ``alpha``/``beta``) on each output row once no later
    input row reaches it, while the task's last chunk left it in cache."""
    n_count, c_count, h, w = x.shape
    groups, _, cg = wt.shape
    m_count, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    mg = m_count // groups
    taps = kh * kw
    bands = _ceil_div(ho, band)
    blocks = _ceil_div(mg, block)
    xf = x.reshape(-1)
    wf = wt.reshape(-1)
    of = out.reshape(-1)
    ldc = chunk * w
    ranges, phases = _column_plan(w, wo, kw, sw, dw, pl)
    for t in prange(n_count * groups * blocks * bands):
        n, g, m0, mn, o_plane, oy0, oy1, iy_lo, iy_hi = _task(
            t, out, bias, h, groups, blocks, bands, band, block, kh, sh, dh, pt
        )
        if iy_hi < iy_lo:  # rows no input row reaches: the bias, activated
            _activate_rows(of, o_plane, ho, wo, mn, oy0, oy1, act, alpha, beta)
            continue
        done = oy0  # output rows before this one are final and activated
        cf = _column_buffer(mn * taps, ldc)
        for r0 in range(iy_lo, iy_hi + 1, chunk):
            rn = min(chunk, iy_hi + 1 - r0)
            _blas.sgemm_at(
                False, mn * taps, rn * w, cg, 1.0,
                wf, (g * mg + m0) * taps * cg, cg,
                xf, ((n * c_count + g * cg) * h + r0) * w, h * w,
                0.0, cf, 0, ldc,
            )  # fmt: skip
            done = _add_chunk(of, o_plane, ho, wo, cf, ldc, mn, kh, kw, sh, sw, dh, dw, pt, pl, oy0, oy1,
                              r0, rn, w, ranges, phases, iy_hi, done, act, alpha, beta)  # fmt: skip


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def conv_transpose_tiles(
    x, wp, zeros, bias, out, kh, kw, sh, sw, pt, pl, dh, dw, band, block, chunk, act, alpha, beta
):
    """:func:`conv_transpose_bands` with the GEMM to columns in register tiles instead of BLAS:
    ``wp`` holds each group's [Mg*kh*kw, Cg] weight as 12-row A panels (flat [G, P, Cg, 12]), a
    tile is 12 column rows x 32 pixels of the chunk's input rows (``pointwise_tiles._tile``, the
    input read in place, one plane between channels). ``block * kh * kw`` must be a multiple of
    12 unless ``block`` is the whole group (a block's first panel would start before its column
    buffer): :func:`band_plan` with ``align=12``; ``zeros`` [P*12] is the tiles' (zero) bias."""
    n_count, c_count, h, w = x.shape
    m_count, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    groups = wp.shape[0]
    cg = c_count // groups
    mg = m_count // groups
    taps = kh * kw
    bands = _ceil_div(ho, band)
    blocks = _ceil_div(mg, block)
    xf = x.reshape(-1)
    wf = wp.reshape(-1)
    group_panels = wp.shape[1]
    ep = vector_epilogue(RES_NONE, ACT_NONE, 0.0, 0.0)
    of = out.reshape(-1)
    plane = h * w
    ldc = chunk * w
    ranges, phases = _column_plan(w, wo, kw, sw, dw, pl)
    for t in prange(n_count * groups * blocks * bands):
        n, g, m0, mn, o_plane, oy0, oy1, iy_lo, iy_hi = _task(
            t, out, bias, h, groups, blocks, bands, band, block, kh, sh, dh, pt
        )
        if iy_hi < iy_lo:  # rows no input row reaches: the bias, activated
            _activate_rows(of, o_plane, ho, wo, mn, oy0, oy1, act, alpha, beta)
            continue
        done = oy0  # output rows before this one are final and activated
        cf = _column_buffer(mn * taps, ldc)
        row_lo = m0 * taps
        row_hi = row_lo + mn * taps
        for r0 in range(iy_lo, iy_hi + 1, chunk):
            rn = min(chunk, iy_hi + 1 - r0)
            span = rn * w
            x_at = ((n * c_count + g * cg) * h + r0) * w
            for p in range(row_lo // MR, _ceil_div(row_hi, MR)):
                w_at = (g * group_panels + p) * cg * MR
                o_row = (p * MR - row_lo) * ldc
                for p0 in range(0, span, PIXELS):
                    left = span - p0
                    n0 = min(left, LANES)
                    n1 = min(max(left - LANES, 0), LANES)
                    _tile(xf, x_at + p0, plane, cg, wf, w_at, zeros, p * MR, min(row_hi, p * MR + MR),
                          cf, o_row + p0, ldc, n0, n1, zeros, ep)  # fmt: skip
            done = _add_chunk(of, o_plane, ho, wo, cf, ldc, mn, kh, kw, sh, sw, dh, dw, pt, pl, oy0, oy1,
                              r0, rn, w, ranges, phases, iy_hi, done, act, alpha, beta)  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _add_chunk(
    of, o_plane, ho, wo, cf, ldc, mn, kh, kw, sh, sw, dh, dw, pt, pl, oy0, oy1, r0, rn, w, ranges, phases,
    iy_hi, done, act, alpha, beta,
):  # fmt: skip
    """The chunk of input rows ``r0 .. r0+rn-1`` into the output (:func:`_col2im`), then the
    activation on the rows it made final: those below the next input row's first output row
    (all of the band after its last input row ``iy_hi``), from ``done`` on. Returns the new
    ``done``."""
    _col2im(
        of, o_plane, ho, wo, cf, ldc, mn, kh, kw, sh, sw, dh, dw, pt, pl, oy0, oy1, r0, rn, w, ranges, phases
    )
    final = oy1 if r0 + rn > iy_hi else max(done, min(oy1, (r0 + rn) * sh - pt))
    _activate_rows(of, o_plane, ho, wo, mn, done, final, act, alpha, beta)
    return final


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _activate_rows(of, o_plane, ho, wo, mn, lo, hi, act, alpha, beta):
    """The activation on output rows ``lo .. hi-1`` of the ``mn`` channel planes from flat
    ``of[o_plane:]`` ([ho, wo] each); nothing for ``ACT_NONE``."""
    if act == ACT_NONE or hi <= lo:
        return
    for m in range(mn):
        at = o_plane + m * ho * wo
        activate_row(of[at + lo * wo : at + hi * wo], act, alpha, beta)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _column_buffer(rows, ldc):
    """A task's column buffer, flat: ``rows`` rows of ``ldc`` and a row of zeros after them."""
    cf = np.empty((rows + 1) * ldc, np.float32)
    cf[rows * ldc :] = 0.0
    return cf


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _task(t, out, bias, h, groups, blocks, bands, band, block, kh, sh, dh, pt):
    """Task t's (image, group, first channel in the group, channels, the flat offset of its
    first channel's output plane, output rows oy0 .. oy1-1, input rows iy_lo .. iy_hi that
    reach them), its output rows filled with the bias."""
    m_count, ho = out.shape[1], out.shape[2]
    mg = m_count // groups
    b = t % bands
    rest = t // bands
    mb = rest % blocks
    rest //= blocks
    g = rest % groups
    n = rest // groups
    oy0 = b * band
    oy1 = min(ho, oy0 + band)
    m0 = mb * block
    mn = min(block, mg - m0)
    for m in range(mn):
        out[n, g * mg + m0 + m, oy0:oy1, :] = bias[g * mg + m0 + m]
    iy_lo = max(0, _ceil_div(oy0 + pt - (kh - 1) * dh, sh))
    iy_hi = min(h - 1, (oy1 - 1 + pt) // sh)  # floor division: oy1 - 1 + pt may be negative
    o_plane = (n * m_count + g * mg + m0) * ho * out.shape[3]
    return n, g, m0, mn, o_plane, oy0, oy1, iy_lo, iy_hi


@njit(error_model="numpy", cache=True, nogil=True)
def _column_plan(w, wo, kw, sw, dw, pl):
    """(ranges, phases): tap kx's input columns ``ranges[kx, 0] .. ranges[kx, 1] - 1`` land inside
    the output. At stride 2, dilation 1, ``phases`` pairs the taps for :func:`_add_phases`, a
    row (a, b, qa, qb, alo, ahi, blo, bhi, j0, jv) per pair (none at other strides): tap kx lands
    on output column ``2*ix + kx - pl``, an even one when ``kx - pl`` is even, and the t-th even
    tap ``a`` goes with the t-th odd tap ``b`` (``kw`` where one parity runs out). Output columns
    (2j, 2j+1) get ``cols[a][j - qa]`` and ``cols[b][j - qb]`` for j in [alo, ahi) and [blo, bhi);
    [j0, jv) is where both reach (or the lone tap's whole range with its column pair inside the
    row), a multiple of 16 long."""
    ranges = np.empty((kw, 2), np.int64)
    for kx in range(kw):
        ranges[kx, 0] = max(0, _ceil_div(pl - kx * dw, sw))
        ranges[kx, 1] = min(w - 1, (wo - 1 + pl - kx * dw) // sw) + 1
    count = (kw + 1) // 2 if sw == 2 and dw == 1 else 0
    phases = np.zeros((count, 10), np.int64)
    for t in range(count):
        a = pl % 2 + 2 * t
        b = 1 - pl % 2 + 2 * t
        qa = (a - pl) // 2
        qb = (b - pl - 1) // 2
        alo, ahi = (ranges[a, 0] + qa, ranges[a, 1] + qa) if a < kw else (0, 0)
        blo, bhi = (ranges[b, 0] + qb, ranges[b, 1] + qb) if b < kw else (0, 0)
        if a < kw and b < kw:
            j0, j1 = max(alo, blo), min(ahi, bhi)
        elif a < kw:  # a zero partner: its column 2j + 1 must exist too
            j0, j1 = alo, min(ahi, wo // 2)
        else:
            j0, j1 = blo, bhi
        jv = j0 + max(0, j1 - j0) // LANES * LANES
        phases[t] = (min(a, kw), min(b, kw), qa, qb, alo, ahi, blo, bhi, j0, jv)
    return ranges, phases


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _col2im(
    of, o_plane, ho, wo, cf, ldc, mn, kh, kw, sh, sw, dh, dw, pt, pl, oy0, oy1, r0, rn, w, ranges, phases
):
    """Add the column rows of input rows ``r0 .. r0+rn-1`` into output rows ``oy0 .. oy1-1``:
    ``cf`` row ``(m*kh + ky)*kw + kx`` (``ldc`` long; row ``mn*kh*kw`` zeros) is tap (ky, kx)
    of output channel m < mn, whose [ho, wo] plane starts at flat ``of[o_plane + m*ho*wo]``.
    Input pixel (iy, ix) of tap (ky, kx) lands on ``(iy*sh + ky*dh - pt, ix*sw + kx*dw - pl)``
    (:func:`_column_plan` says which columns land inside). A row's taps are added sixteen
    columns a step at strides 1 and 2 (:func:`_add_shifted`, :func:`_add_phases`), one by one
    at other strides."""
    zero_at = mn * kh * kw * ldc
    for m in range(mn):
        for ky in range(kh):
            for iy in range(r0, r0 + rn):
                oy = iy * sh + ky * dh - pt
                if oy < oy0 or oy >= oy1:
                    continue
                dst = o_plane + (m * ho + oy) * wo
                src = ((m * kh + ky) * kw) * ldc + (iy - r0) * w
                if phases.shape[0] > 0:
                    _add_phases(of, dst, cf, src, ldc, zero_at, phases)
                    continue
                for kx in range(kw):
                    shift = dst + kx * dw - pl
                    at = src + kx * ldc
                    lo, hi = ranges[kx, 0], ranges[kx, 1]
                    if sw == 1:
                        _add_shifted(of, shift, cf, at, lo, hi)
                        continue
                    for ix in range(lo, hi):
                        of[ix * sw + shift] += cf[at + ix]


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _add_shifted(of, o_at, cf, c_at, lo, hi):
    """``of[o_at + ix] += cf[c_at + ix]`` for lo <= ix < hi, sixteen at a time."""
    ix = lo
    while ix + LANES <= hi:
        vstore16(of, o_at + ix, vadd16(vload16(of, o_at + ix), vload16(cf, c_at + ix)))
        ix += LANES
    for i in range(ix, hi):
        of[o_at + i] += cf[c_at + i]


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _add_phases(of, dst, cf, src, ldc, zero_at, phases):
    """One output row (flat ``of[dst:]``) of stride-2 taps whose column rows start at
    ``cf[src + kx*ldc]``, pair by pair as :func:`_column_plan` planned them: sixteen column
    pairs a step, two taps interleaved (``vziplo16``/``vziphi16``; a lone tap's partner is the
    zero row at ``cf[zero_at:]``), one by one at the row's ends."""
    for t in range(phases.shape[0]):
        a, b, qa, qb = phases[t, 0], phases[t, 1], phases[t, 2], phases[t, 3]
        alo, ahi, blo, bhi = phases[t, 4], phases[t, 5], phases[t, 6], phases[t, 7]
        j0, jv = phases[t, 8], phases[t, 9]
        ea = src + a * ldc - qa
        ob = src + b * ldc - qb
        e_at = ea if ahi > alo else zero_at - j0  # an absent (or empty) tap reads zeros
        o_at = ob if bhi > blo else zero_at - j0
        for j in range(j0, jv, LANES):
            va = vload16(cf, e_at + j)
            vb = vload16(cf, o_at + j)
            o = dst + 2 * j
            vstore16(of, o, vadd16(vload16(of, o), vziplo16(va, vb)))
            vstore16(of, o + LANES, vadd16(vload16(of, o + LANES), vziphi16(va, vb)))
        for j in range(alo, min(j0, ahi)):
            of[dst + 2 * j] += cf[ea + j]
        for j in range(max(jv, alo), ahi):
            of[dst + 2 * j] += cf[ea + j]
        for j in range(blo, min(j0, bhi)):
            of[dst + 2 * j + 1] += cf[ob + j]
        for j in range(max(jv, blo), bhi):
            of[dst + 2 * j + 1] += cf[ob + j]


def band_plan(
    n: int, groups: int, mg: int, ho: int, taps: int, w: int, threads: int, align: int = 1
) -> tuple[int, int, int]:
    """(band, block, chunk): all of a group's output channels in one task and whole images when
    that gives two tasks per thread, else bands of output rows (at least 8 rows each), then
    channel blocks (``block * taps`` a multiple of ``align`` unless one block holds the group);
    ``chunk`` input rows make a column buffer under :data:`COLUMN_BYTES`."""
    want = 2 * max(threads, 1)
    tasks = n * groups
    bands = 1
    if tasks < want:
        bands = max(1, min(-(-want // tasks), ho // 8))
    band = -(-ho // bands)
    bands = -(-ho // band)
    block = mg
    if tasks * bands < want and mg > 1:
        blocks = min(mg, -(-want // (tasks * bands)))
        step = align // math.gcd(align, taps)  # channels per aligned row count
        per = -(-mg // blocks)
        block = min(mg, -(-per // step) * step)
    chunk = max(1, COLUMN_BYTES // (4 * block * taps * max(w, 1)))
    return band, block, chunk


class _BandsTactic(RunsBound, Tactic):
    """What the two ConvTranspose tactics share: the node they take, the bias, the plan and the
    binding; :meth:`_weight` and :meth:`_kernel` are the GEMM's own."""

    op_types = ("ConvTranspose", "FusedConvTranspose")
    align = 1  # rows of the GEMM a channel block must come to a multiple of
    uses_blas = False  # BLAS is held to one thread around the call

    def supports(self, node: Node, graph: Graph) -> bool:
        """Float32, 1-D or 2-D, a constant weight and a constant bias or none (FusedConvTranspose:
        any epilogue activation, no residual input)."""
        if not float32_io(node, graph) or node.input(3):
            return False
        x = graph.values[node.input(0)]
        w = graph.const(node.input(1))
        bias_known, _ = constant_input(node, graph, 2)
        if w is None or not bias_known or x.rank not in (3, 4) or w.ndim != x.rank:
            return False
        channels = x.shape[1] if x.shape else None
        group = int(node.attr("group", 1))
        return isinstance(channels, int) and group >= 1 and channels == w.shape[0] and channels % group == 0

    def _weight(self, wt: np.ndarray) -> dict[str, np.ndarray]:
        """The prepared tensors of the group GEMMs' A matrices ``wt`` [G, Mg*kh*kw, Cg]."""
        raise NotImplementedError

    def _kernel(self, prepared: Prepared) -> tuple[Callable[..., None], tuple[np.ndarray, ...]]:
        """The numba kernel and its weight arguments (those before the bias)."""
        raise NotImplementedError

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Each group's A matrix [Mg*kh*kw, Cg] (:meth:`_weight`) and the bias as a float32
        vector over the output channels (zeros without one)."""
        w = graph.const(node.input(1))
        assert w is not None
        group = int(node.attr("group", 1))
        cg, mg = w.shape[0] // group, w.shape[1]
        kernel = [int(k) for k in w.shape[2:]]
        wt = w.astype(np.float32).reshape(group, cg, mg * int(np.prod(kernel))).transpose(0, 2, 1)
        _, b = constant_input(node, graph, 2)
        bias = np.zeros(group * mg, np.float32) if b is None else np.asarray(b, np.float32).reshape(-1).copy()
        return Prepared(
            tensors={**self._weight(wt), "bias": bias},
            params={"kernel": kernel},
            replaces=frozenset({1, 2}),
        )

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The band kernel on these arrays; without ``copies``, None when the input is not a
        dense float32 array the kernel can read in place."""
        x = inputs[0]
        assert x is not None
        if not copies and not dense(x):
            return None
        x = np.ascontiguousarray(x, dtype=np.float32)
        x4 = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if x.ndim == 3 else x
        out = outputs[0]
        out4 = out.reshape(out.shape[0], out.shape[1], 1, out.shape[2]) if out.ndim == 3 else out
        kernel = prepared.params["kernel"]
        fn, weights = self._kernel(prepared)
        groups = weights[0].shape[0]  # both weights lead with the group
        threads = numba_thread_count()

        def plan() -> tuple[int, ...]:
            strides, dilations, pads, _ = conv_transpose_geometry(node, x.shape[2:], kernel)
            if x.ndim == 3:  # height 1: no vertical taps, stride or pads
                kh, kw, sh, sw, pt, pl, dh, dw = 1, kernel[0], 1, strides[0], 0, pads[0], 1, dilations[0]
            else:
                kh, kw = kernel
                (sh, sw), (pt, pl), (dh, dw) = strides, pads[:2], dilations
            n, m, ho, _ = out4.shape
            band, block, chunk = band_plan(
                n, groups, m // groups, ho, kh * kw, x4.shape[3], threads, self.align
            )
            return kh, kw, sh, sw, pt, pl, dh, dw, band, block, chunk

        geometry = memo(prepared, ("convt_plan", x.shape, out.shape, threads), plan)
        act, alpha, beta, _ = epilogue_params(node)
        call = functools.partial(
            fn, x4, *weights, prepared.tensors["bias"], out4, *geometry, act, alpha, beta
        )
        return blas_single_thread_call(call) if self.uses_blas else call


@register_tactic
class BandConvTranspose(_BandsTactic):
    """ConvTranspose as output bands: GEMM to columns with single-threaded BLAS, then col2im,
    in numba's pool (module docstring)."""

    name = "cpu.conv_transpose.bands"
    priority = 10
    uses_blas = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """The shared conditions, and numpy's BLAS found (:data:`~._blas.AVAILABLE`)."""
        return _blas.AVAILABLE and super().supports(node, graph)

    def _weight(self, wt: np.ndarray) -> dict[str, np.ndarray]:
        """``wt`` row-major, as BLAS reads it."""
        return {"wt": np.ascontiguousarray(wt)}

    def _kernel(self, prepared: Prepared) -> tuple[Callable[..., None], tuple[np.ndarray, ...]]:
        return conv_transpose_bands, (prepared.tensors["wt"],)


@register_tactic
class TileConvTranspose(_BandsTactic):
    """ConvTranspose as output bands with the GEMM to columns in 12 x 32 register tiles
    (:func:`conv_transpose_tiles`): no BLAS, the weight packed once."""

    name = "cpu.conv_transpose.tiles"
    priority = 11
    align = MR

    def _weight(self, wt: np.ndarray) -> dict[str, np.ndarray]:
        """Each group's rows as 12-row A panels, flat [G, P, Cg, 12], and the tiles' zero bias."""
        panels = np.stack([pack_rows(a).reshape(-1, a.shape[1], MR) for a in wt])
        return {"wp": panels, "zeros": np.zeros(panels.shape[1] * MR, np.float32)}

    def _kernel(self, prepared: Prepared) -> tuple[Callable[..., None], tuple[np.ndarray, ...]]:
        return conv_transpose_tiles, (prepared.tensors["wp"], prepared.tensors["zeros"])


__all__: Sequence[str] = (
    "BandConvTranspose",
    "TileConvTranspose",
    "band_plan",
    "conv_transpose_bands",
    "conv_transpose_tiles",
)
