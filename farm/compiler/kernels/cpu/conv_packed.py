"""Conv on our own 12 x 32 micro-kernel as an implicit GEMM: no im2col, weight packed once.

``cpu.conv.packed16`` computes a group-1 conv as ``out[n, M, P] = W[M, K] @ cols[K, P]`` per
image with the 12 x 32 micro-kernel of ``_microgemm``, without building ``cols``:

1. the input is copied once per run, zero-padded and split into its stride phases
   (:func:`build_phases`; one phase at stride 1, up to four at stride 2), each phase a grid
   ``wq`` columns wide. On that grid output pixel (oy, ox) is the *wide* pixel
   ``v = oy*wq + ox``, and the input value kernel row k = (c, i, j) needs for it sits at a fixed
   offset from ``v`` (:func:`phase_plan`), so the K values of 32 consecutive wide pixels are K
   runs of 32 consecutive floats: the micro-kernel reads B's rows in place through that offset
   table. The ``wq - Wo`` extra columns per row (2 of 58 at 56 x 56 with a 3 x 3 kernel) are
   computed and dropped.
2. The weight is packed once (first run of an execution context) into 12-channel A panels
   ``[ceil(M/12), K, 12]``. A task is (image, group of :data:`GROUP` 32-pixel panels, run of
   weight panels); K goes in blocks of :data:`KC`, each weight block loaded once for the
   group's panels, so a late layer (7 x 7 maps at batch 1: one group, its 9.4 MB weight split
   into runs) reads its weight once.
3. Finished tiles go to their output pixels (each panel's lanes are a few runs of consecutive
   pixels) with bias, residual and the activation applied on the way, 16 lanes at a time
   (:func:`_store_vectors`; LeakyRelu by a scalar loop).

Measured on a 2-core AVX-512 Xeon (``bench_kernels_vs_ort.py``, interleaved with ORT): ResNet's
512-channel 3 x 3 convs at batch 1 1.30 x ORT where Winograd F(2,3) took 1.63 x, its stride-2
128 -> 256 conv at batch 8 1.49 x where im2col + BLAS took 1.74 x; Winograd stays ahead on the
early 3 x 3 layers. On a 2-core AVX2 EPYC (the micro-kernel as four 6 x 16 quarters, 94
GFLOP/s on one core from L1) it is the fastest tactic for ResNet's 7 x 7 stem (1.59 x ORT where
im2col + BLAS took 1.81 x) and stride-2 3 x 3 conv (1.61 x against 1.86 x). Pool: numba's only,
no BLAS. Offered where the weight is a constant and the kernel larger than 1 x 1.

``cpu.conv.pointwise16`` is the same GEMM for a 1 x 1, stride-1, unpadded conv with no copy at
all: the NCHW input already is B (channel c's pixels j*32 .. j*32+31 are consecutive), so the
tiles read it in place; only an image's ragged last panel is copied (zero-padded), since
reading 32 floats there would run past the input. Measured per layer (AMD EPYC, AVX-512,
interleaved with ORT): 0.44 x ORT on MobileNetV2's 144 -> 24 projection with its residual at
batch 1, where the next best tactic took 0.82 x; far slower than ``pointwise_direct`` with few
input channels (16 -> 96: 3 x), so the tuner decides per layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    VECTOR_ACTS,
    finish16,
    finish_value,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._microgemm import MR, NR, pack_rows, panel_offsets, tile_12x32
from farm.compiler.kernels.cpu._operands import in_order, memo, workspace
from farm.compiler.kernels.cpu._simd16 import LANES, called_tile, vadd16, vload16_masked, vsplat16
from farm.compiler.kernels.cpu._threads import numba_thread_count
from farm.compiler.kernels.cpu._windows import copy_window, valid_columns
from farm.compiler.kernels.cpu.conv import ConvGeometry
from farm.compiler.kernels.cpu.conv_tiled import TiledGemmConv
from farm.compiler.kernels.registry import Prepared, register_tactic

KC = 128  # K per block: a weight panel's block (6 KiB) stays in L1 across the group's pixel panels
GROUP = 4  # 32-pixel panels per task, each weight block loaded once for all of them


def address_order(prepared: Prepared, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets[order]): the implicit GEMM's K rows sorted by where they read.

    Rule: the sum over K is the same in any order, so the kernel walks K in the order of the
    rows' offsets into the phase buffer (the weight's columns permuted alike at build time). For
    a stride-1 conv that is the (channel, ky, kx) order it had; for a strided one the taps of a
    channel lie in different phases, and in (channel, ky, kx) order each step jumped between
    phase planes: sorted, a block of K reads one phase plane after another, the taps of a
    channel's row next to each other. ResNet's stride-2 3x3 convs alone at batch 1 (AVX-512
    Xeon, ``bench_kernels_vs_ort.py``): ``channel_lanes`` 64 -> 128 @56 0.52 -> 0.47 ms and
    128 -> 256 @28 0.37 -> 0.32, ``packed16`` 1.44 -> 1.38x ORT, the 7x7 stem 1.13 -> 1.06x.
    Inside whole ResNet-18 runs the same layers did not move (0.996-0.997 at batch 1 and 8):
    there they wait on an input the layer before left in the other core's cache."""
    def sort() -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(offsets, kind="stable")
        return order, offsets[order]

    return memo(prepared, ("address_order", offsets.tobytes()), sort)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def build_phases(x, buf, image_size, phase_a, phase_b, sh, sw, pt, pl, hq, wq):
    """Each image of x [N, C, H, W], zero-padded and split into its stride phases: phase (a, b)
    of channel c is ``buf[n*image_size + ((ph*C + c)*hq + y)*wq + u] = x[n, c, y*sh + a - pt,
    u*sw + b - pl]`` (0 outside the image), for the phases listed in ``phase_a``/``phase_b``;
    the rest of the image's ``image_size`` floats (the tail the last panel's rows read into)
    is zeroed."""
    n_count, c_count, h, w = x.shape
    phases = phase_a.shape[0]
    for t in prange(n_count * phases * c_count):
        n = t // (phases * c_count)
        ph = (t // c_count) % phases
        c = t % c_count
        a = phase_a[ph]
        b = phase_b[ph]
        dst = n * image_size + (ph * c_count + c) * hq * wq
        lo, hi = valid_columns(b - pl, sw, w, wq)
        start = lo * sw + b - pl
        for y in range(hq):
            iy = y * sh + a - pt
            row = buf[dst + y * wq : dst + (y + 1) * wq]
            # Element loops, not slice assignments: the rows are short (15 floats for a
            # stride-2 layer on a 28 x 28 map) and numba's slice setitem cost ~10 ns a row.
            if iy < 0 or iy >= h:
                for u in range(wq):
                    row[u] = 0.0
                continue
            for u in range(lo):
                row[u] = 0.0
            copy_window(row[lo:hi], x[n, c, iy], start, sw)
            for u in range(hi, wq):
                row[u] = 0.0
        if ph == phases - 1 and c == c_count - 1:
            for u in range(n * image_size + phases * c_count * hq * wq, (n + 1) * image_size):
                buf[u] = 0.0


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def conv_panels(
    buf, image_size, offs, wp, m, wq, wo, bias, has_bias, residual, res_mode, act, alpha, beta, out, group, runs,
    full, tail_offs,
):  # fmt: skip
    """The conv as an implicit GEMM over the phases in ``buf`` (:func:`build_phases`): output
    pixel (oy, ox) is wide pixel ``v = oy*wq + ox`` and kernel row k of it reads
    ``buf[image + offs[k] + v]``, so 32 consecutive wide pixels are 32 consecutive floats. out
    [N*M, Ho*Wo] (NCHW rows) gets the pixels with ``ox < wo``; ``residual`` is [N*M, Ho*Wo] or a
    dummy; the weight is packed by ``pack_rows`` (flat ``wp``, M channels).

    A task is one image's ``group`` consecutive 32-pixel panels x one of ``runs`` runs of weight
    panels. K goes in blocks of :data:`KC`: each weight panel's block is loaded once for the
    group's panels (a late layer's weight is read from memory once, not once per panel), whose
    input rows stay in cache across the run. Tiles accumulate in a task scratch, then go to
    their output pixels with the epilogue.

    Panels from ``full`` on are not read in place (an input read where it lies, as a 1 x 1 conv
    does, has no slack after its last pixel): a task copies the K rows of its ragged panel,
    zero-padded, into a [K, 32] panel read through ``tail_offs`` (``k * 32``)."""
    k = offs.shape[0]
    n_count = out.shape[0] // m
    ho = out.shape[1] // wo
    wide = ho * wq
    col_tiles = (wide + NR - 1) // NR
    groups = (col_tiles + group - 1) // group
    row_tiles = (m + MR - 1) // MR
    per_run = (row_tiles + runs - 1) // runs
    per_image = groups * runs
    for t in prange(n_count * per_image):
        n = t // per_image
        # groups vary fastest: a thread's contiguous share of the tasks spans every group, the
        # ragged last one too (runs first gave one thread all of a 4-panel group, the other all
        # of a 3-panel one)
        j0 = ((t % per_image) % groups) * group
        j1 = min(col_tiles, j0 + group)
        i0 = ((t % per_image) // groups) * per_run
        i1 = min(row_tiles, i0 + per_run)
        if i0 >= i1:
            continue
        panels = j1 - j0
        image = n * image_size
        tail = np.zeros(k * NR if j1 > full else 1, np.float32)
        if j1 > full:
            for kr in range(k):
                src = image + offs[kr] + full * NR
                for q in range(wide - full * NR):
                    tail[kr * NR + q] = buf[src + q]
        tiles = np.empty((i1 - i0) * panels * MR * NR, np.float32)  # tens of KiB: a thread arena's
        for k0 in range(0, k, KC):
            kk = min(KC, k - k0)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    to = ((i - i0) * panels + j - j0) * MR * NR
                    if j < full:
                        tile_12x32(
                            wp, (i * k + k0) * MR, buf, image + j * NR, offs, k0, kk, tiles, to, NR, k0 > 0
                        )
                    else:
                        tile_12x32(wp, (i * k + k0) * MR, tail, 0, tail_offs, k0, kk, tiles, to, NR, k0 > 0)
        for j in range(j0, j1):
            _store_panel(tiles, (j - j0) * MR * NR, panels * MR * NR, i0, i1, j * NR, min(j * NR + NR, wide), wq,
                         wo, m, n, out, bias, has_bias, residual, res_mode, act, alpha, beta)  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True)
def _store_panel(
    tiles, first, stride, i0, i1, v0, v1, wq, wo, m, n, out, bias, has_bias, residual, res_mode, act, alpha, beta,
):  # fmt: skip
    """Weight tiles i0 .. i1-1 of one pixel panel (wide pixels v0 .. v1-1; tile i at
    ``tiles[first + (i - i0)*stride]``) into their output pixels: the panel's lanes fall into
    runs of consecutive output pixels (one run when ``wq == wo``), each copied as a block, with
    bias, residual and the activation applied on the way."""
    starts = np.empty(NR, np.int64)  # run r: lanes starts[r] .. starts[r]+sizes[r]-1 -> pixels[r]..
    sizes = np.empty(NR, np.int64)
    pixels = np.empty(NR, np.int64)
    runs = 0
    oy = v0 // wq
    ox = v0 - oy * wq
    q = 0
    while q < v1 - v0:
        if ox >= wo:  # the extra columns of a wide row
            q += min(wq - ox, v1 - v0 - q)
            oy += 1
            ox = 0
            continue
        size = min(wo - ox, v1 - v0 - q)
        starts[runs] = q
        sizes[runs] = size
        pixels[runs] = oy * wo + ox
        runs += 1
        q += size
        ox += size
    if act in VECTOR_ACTS:  # 16 lanes at a time: bias, residual and activation on the vector
        ep = vector_epilogue(res_mode, act, alpha, beta)
        _store_vectors(tiles, first, stride, i0, i1, m, n, out.shape[1], out.reshape(-1), residual.reshape(-1),
                       bias, has_bias, starts, sizes, pixels, runs, ep)  # fmt: skip
        return
    a = np.float32(alpha)
    c = np.float32(beta)
    zero = np.float32(0.0)
    for i in range(i0, i1):
        base = first + (i - i0) * stride
        for mm in range(i * MR, min(m, i * MR + MR)):
            row = n * m + mm
            dst = out[row]
            src = base + (mm - i * MR) * NR
            res = residual[row] if res_mode != RES_NONE else residual[0]
            b = bias[mm] if has_bias else zero
            for r in range(runs):  # LeakyRelu: the scalar epilogue
                d = pixels[r]
                s0 = src + starts[r]
                for e in range(sizes[r]):
                    rv = res[d + e] if res_mode != RES_NONE else zero
                    dst[d + e] = finish_value(tiles[s0 + e], b, rv, res_mode, act, a, c)


@called_tile
def _store_vectors(tiles, first, stride, i0, i1, m, n, p, of, rf, bias, use_bias, starts, sizes, pixels, runs, ep):
    """The vector form of :func:`_store_panel`'s stores: tile row mm's run r of lanes into the
    flat output ``of`` (rows of ``p`` pixels) at its row's offset plus ``pixels[r]``, with the
    bias and ``finish16``'s epilogue (the residual ``rf`` has the output's layout). Compiled
    without reference counting: in ``_store_panel`` each vector's store took an incref and a
    decref of the row views, external calls that spilled the vectors, and a SiLU epilogue
    there cost 2 ns an element where the same arithmetic alone takes 0.2."""
    for i in range(i0, i1):
        base = first + (i - i0) * stride
        for mm in range(i * MR, min(m, i * MR + MR)):
            row = (n * m + mm) * p
            src = base + (mm - i * MR) * NR
            bv = vsplat16(bias[mm] if use_bias else np.float32(0.0))
            for r in range(runs):
                d = row + pixels[r]
                s0 = src + starts[r]
                for e in range(0, sizes[r], LANES):
                    count = sizes[r] - e
                    finish16(vadd16(vload16_masked(tiles, s0 + e, count), bv), of, d + e, count, rf, ep)


class PhasePlan(NamedTuple):
    """How a conv reads its input as an implicit GEMM (see :func:`phase_plan`)."""

    phase_a: np.ndarray
    phase_b: np.ndarray
    hq: int
    wq: int
    image_size: int
    offsets: np.ndarray


class BOperand(NamedTuple):
    """Where :func:`conv_panels` reads the GEMM's B: image n's kernel row k of wide pixel v at
    ``buf[n*image_size + offsets[k] + v]``; ``wq`` wide pixels per row of ``wo`` output pixels;
    panels from ``full`` on copied into a task panel read through ``tail_offsets``."""

    buf: np.ndarray
    image_size: int
    offsets: np.ndarray
    wq: int
    wo: int
    full: int
    tail_offsets: np.ndarray


def phase_plan(c: int, ho: int, wo: int, geo: ConvGeometry) -> PhasePlan:
    """The stride phases a conv reads (``((i*dh) % sh, (j*dw) % sw)`` over its taps), their
    size (``hq = ho + (kh-1)*dh // sh`` rows of ``wq = wo + (kw-1)*dw // sw``), and the offset
    of kernel row k = (c*kh + i)*kw + j, the weight's own order, from a wide pixel's index."""
    kh, kw, sh, sw, dh, dw = geo.kh, geo.kw, geo.sh, geo.sw, geo.dh, geo.dw
    hq = ho + (kh - 1) * dh // sh
    wq = wo + (kw - 1) * dw // sw
    phases = sorted({((i * dh) % sh, (j * dw) % sw) for i in range(kh) for j in range(kw)})
    index = {p: n for n, p in enumerate(phases)}
    plane = hq * wq
    offsets = np.empty(c * kh * kw, np.int64)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                ph = index[((i * dh) % sh, (j * dw) % sw)]
                offsets[(ci * kh + i) * kw + j] = (ph * c + ci) * plane + (i * dh // sh) * wq + j * dw // sw
    return PhasePlan(
        np.asarray([a for a, _ in phases], np.int64),
        np.asarray([b for _, b in phases], np.int64),
        hq,
        wq,
        len(phases) * c * plane + 2 * NR + (kw - 1) * dw // sw,  # + the last panel's overreach
        offsets,
    )


def task_split(n: int, m: int, wide: int, threads: int) -> tuple[int, int]:
    """(panels per group, weight runs): groups of up to :data:`GROUP` 32-pixel panels (of an
    image's ``wide`` pixels), split into runs of weight panels while that leaves fewer than
    four tasks per thread (a 7 x 7 map at batch 1 is one group of two panels and 8 runs of its
    43 weight panels: the weight is read once), smaller groups only if runs cannot."""
    want = 4 * max(threads, 1)
    col_tiles = -(-wide // NR)
    row_tiles = -(-m // MR)
    group = min(GROUP, col_tiles)
    while True:
        tasks = n * -(-col_tiles // group)
        runs = min(row_tiles, -(-want // tasks))
        if tasks * runs >= want or group == 1:
            return group, runs
        group -= 1


@register_tactic
class PackedConv(TiledGemmConv):
    """Own 12 x 32 micro-kernel conv: an implicit GEMM over the input's stride phases, weight
    packed once, epilogue in the tile stores (group 1, constant weight, kernel > 1 x 1)."""

    name = "cpu.conv.packed16"
    needs_blas = False
    priority = 10  # below tiled_gemm and im2col_tiles: the tuner times it, level 0 keeps BLAS

    def supports(self, node: Node, graph: Graph) -> bool:
        w = graph.const(node.input(1))
        if w is None or not super().supports(node, graph):
            return False
        return self.geometry_ok(w.shape, ConvGeometry.of(node, w.shape))

    def geometry_ok(self, w_shape: tuple[int, ...], geo: ConvGeometry) -> bool:
        """A kernel larger than 1 x 1, or a strided 1 x 1 one. A stride-1 1 x 1 kernel's K (its
        input channels) is too short for the phase copy to pay off (2-3 x ORT on MobileNet's);
        ``pointwise16`` reads those in place. A strided one (ResNet's downsample) needs a copy
        anyway, and its one phase is a quarter of the input at stride 2: ``channel_lanes`` ran
        ResNet-18's three at 0.046-0.057 ms against 0.049-0.074 for ``pointwise_tiles`` (one
        Zen 5 core pair, batch 1, alone)."""
        return int(np.prod(w_shape[2:])) > 1 or (geo.sh, geo.sw) != (1, 1)

    def _conv(
        self, prepared: Prepared, geo: ConvGeometry, x: np.ndarray, w2: np.ndarray, bias: np.ndarray,
        has_bias: bool, residual: np.ndarray, epilogue: tuple[int, float, float, int], out: np.ndarray,
    ) -> Callable[[], None]:  # fmt: skip
        n, m, ho, wo = out.shape
        b, copy_in = self.b_operand(prepared, geo, x, ho, wo)
        threads = numba_thread_count()
        wide = ho * wo // b.wo * b.wq  # the grid's pixels: output rows of b.wo pixels, b.wq wide
        group, runs = memo(prepared, ("split", n, wide, threads), lambda: task_split(n, m, wide, threads))
        order, offsets = address_order(prepared, b.offsets)
        tail_key = ("tail_in_order", b.tail_offsets.tobytes(), order.tobytes())
        tail = memo(prepared, tail_key, lambda: b.tail_offsets[order].copy())
        panels = memo(prepared, ("weight_panels", order.tobytes()), lambda: pack_rows(w2[:, order].copy()))
        act, alpha, beta, mode = epilogue
        return in_order(*copy_in, functools.partial(
            conv_panels,
            b.buf, b.image_size, offsets, panels, m, b.wq, b.wo, bias, has_bias, residual, mode, act, alpha,
            beta, out.reshape(n * m, ho * wo), group, runs, b.full, tail,
        ))  # fmt: skip

    def b_operand(
        self, prepared: Prepared, geo: ConvGeometry, x: np.ndarray, ho: int, wo: int
    ) -> tuple[BOperand, list[Callable[[], None]]]:
        """The input copied into its zero-padded stride phases (:func:`build_phases`), every panel
        read in place (the phase buffer has slack after its last one), and the copy to make
        each run before the product."""
        c = x.shape[1]
        plan = memo(prepared, ("phases", x.shape[1:], ho, wo), lambda: phase_plan(c, ho, wo, geo))
        buf = workspace(prepared, "phases", (x.shape[0] * plan.image_size,))
        copy_in = functools.partial(
            build_phases, x, buf, plan.image_size, plan.phase_a, plan.phase_b, geo.sh, geo.sw, geo.pad_top,
            geo.pad_left, plan.hq, plan.wq,
        )  # fmt: skip
        every_panel = -(-ho * plan.wq // NR)
        return BOperand(buf, plan.image_size, plan.offsets, plan.wq, wo, every_panel, plan.offsets), [copy_in]


@register_tactic
class PackedPointwiseConv(PackedConv):
    """Own 12 x 32 micro-kernel for a 1 x 1, stride-1, unpadded conv: :func:`conv_panels` with
    the input read in place as the GEMM's B (pixel panel j of channel c of image n is the 32
    floats at ``x[n, c].flat[j*32:]``; no phase copy, no im2col; only each image's ragged last
    panel is copied), the weight packed once, the epilogue in the tile stores."""

    name = "cpu.conv.pointwise16"

    def geometry_ok(self, w_shape: tuple[int, ...], geo: ConvGeometry) -> bool:
        """A 2-D 1 x 1 kernel, stride 1, no padding: the input is the GEMM's B as it lies."""
        pads = (geo.pad_top, geo.pad_left, geo.pad_bottom, geo.pad_right)
        return len(w_shape) == 4 and w_shape[2:] == (1, 1) and (geo.sh, geo.sw) == (1, 1) and not any(pads)

    def b_operand(
        self, prepared: Prepared, geo: ConvGeometry, x: np.ndarray, ho: int, wo: int
    ) -> tuple[BOperand, list[Callable[[], None]]]:
        """The input itself: channel c of image n is B's row c, its map one row of H*W pixels;
        only the ragged last panel is copied, inside the kernel (reading 32 floats there runs
        past the input). Nothing to do before the product."""
        c = x.shape[1]
        hw = ho * wo
        offsets = memo(prepared, ("offsets", c, hw), lambda: np.arange(c, dtype=np.int64) * hw)
        tail = memo(prepared, ("tail_offsets", c), lambda: panel_offsets(c))
        return BOperand(x.reshape(-1), c * hw, offsets, hw, hw, hw // NR, tail), []
