"""Attention on our own 12 x 32 micro-kernel: ``cpu.attention.micro`` (FP32, AVX-512 hosts).

``Y = merge_heads(softmax(scale * q @ k^T + mask) @ v)`` as in ``attention.py``, one task per
(batch, head, run of 32-query blocks), with no BLAS call:

1. Per run, Q and K of every head are packed (:func:`pack_heads`): Q^T in 32-query panels
   ``[D, 32]`` and K in 12-key panels ``[D, 12]``, zero-padded. Q and K both hold D
   contiguous; the product needs one of them with another axis in the vector lanes.
2. Scores, transposed: ``S^T = K Q^T`` in 12-key x 32-query tiles (``_microgemm.tile_12x32``),
   a ``[Sk, 32]`` block that stays in L1, queries in the lanes.
3. Softmax down the columns (:func:`softmax_columns`): scale, mask, running maximum, ``vexp16``
   and sum are lane-wise vector operations over the keys, 16 queries per vector, with no
   horizontal reduction and no padding lanes to mask.
4. ``P @ V``: 12 of the block's 32 query lanes at a time are the A operand of
   ``tile_12x32_wide`` (read in place, row stride 32), V's rows are read in place as B (a row
   offset table, ``s * ld``), and the 12 x 32 tiles are stored straight into the merged-heads
   output; a tile of fewer than 12 queries goes through a scratch tile.

Why: ``cpu.attention.tiles`` calls OpenBLAS twice per block; at these shapes (K = 64, blocks of
64 queries) its GEMMs ran at ~110 GFLOP/s per core and its softmax at 0.58 ns per score, 1.4-1.9x
ONNX Runtime's attention (``bench_kernels_vs_ort.py --only attention``). The micro-kernel runs
at ~250 GFLOP/s on a Zen 5 core; this tactic measured 0.93-1.06x ORT there (BERT's and the
ViT's attention at batch 1 and 8, docs/KERNELS.md).

Offered when the head size is a multiple of 32 (both 16-lane halves of a V row are that head's)
on AVX-512 hosts; elsewhere the other attention tactics run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._microgemm import MR, NR, pack_panel, tile_12x32, tile_12x32_wide
from farm.compiler.kernels.cpu._operands import RunsBound, dense, in_order, workspace
from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    LANES,
    vadd16,
    vdiv16,
    vexp16,
    vload16,
    vmax16,
    vmul16,
    vsplat16,
    vstore16,
    vzero16,
)
from farm.compiler.kernels.cpu._threads import bound_call, numba_thread_count
from farm.compiler.kernels.cpu._vecmath import SOFTMAX_FLUSH
from farm.compiler.kernels.cpu.attention import _supports, in_place_operands
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

OFFERED: bool = AVX512  # tests switch it on to check the kernel on any host
_NEG_INF = np.float32(-np.inf)


@njit(error_model="numpy", cache=True, nogil=True)
def _pack_head(x, x0, ld, b, s_count, h, d_count, width, dst, base):
    """Rows of one head of X [B, S, H*D] (row s of image b at flat ``x0 + (b*S + s)*ld``) as
    panels of ``width`` rows, each ``[D, width]``: element (d, j) of panel p at
    ``dst[base + (p*D + d)*width + j]`` is ``X[b, p*width + j, h*D + d]``, 0 past S
    (``_microgemm.pack_panel``)."""
    for p in range(0, (s_count + width - 1) // width):
        first = p * width
        start = x0 + (b * s_count + first) * ld + h * d_count
        pack_panel(x, start, ld, min(width, s_count - first), d_count, width, dst, base + p * d_count * width)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def pack_heads(q, q0, k, k0, ld, batch, sq, sk, heads, d_count, qt, kp):
    """Per (batch, head) ``t = b*H + h``: Q^T in 32-query panels into ``qt`` (the B operand of
    the scores, from ``t * ceil(Sq/32)*D*32``) and K in 12-key panels into ``kp`` (the A
    operand, from ``t * ceil(Sk/12)*D*12``), zero-padded."""
    q_size = (sq + NR - 1) // NR * d_count * NR
    k_size = (sk + MR - 1) // MR * d_count * MR
    for t in prange(batch * heads):
        b = t // heads
        h = t % heads
        _pack_head(q, q0, ld, b, sq, h, d_count, NR, qt, t * q_size)
        _pack_head(k, k0, ld, b, sk, h, d_count, MR, kp, t * k_size)


@njit(error_model="numpy", cache=True, nogil=True)
def softmax_columns(st, sk, scale, mask, has_mask, query_mask, b, h, first, sq, mt):
    """In place over the transposed score block ``st`` [Sk, 32] (row = key, lane = query
    ``first + lane``): each column becomes ``softmax(scale * column + mask[b, h, query, :])``,
    16 queries per vector, so max, exp and sum are lane-wise (no horizontal reductions).
    ``query_mask``: the mask differs between queries (it is gathered into ``mt``, a [Sk, 32]
    scratch); otherwise each key's mask value is one broadcast. Queries past Sq (a short last
    block) use the last query's mask."""
    sv = vsplat16(scale)
    if has_mask and query_mask:
        for key in range(sk):
            for j in range(NR):
                mt[key * NR + j] = mask[b, h, min(first + j, sq - 1), key]
    top0 = vsplat16(_NEG_INF)
    top1 = top0
    for key in range(sk):
        at = key * NR
        x0 = vmul16(vload16(st, at), sv)
        x1 = vmul16(vload16(st, at + LANES), sv)
        if has_mask:
            if query_mask:
                x0 = vadd16(x0, vload16(mt, at))
                x1 = vadd16(x1, vload16(mt, at + LANES))
            else:
                m = vsplat16(mask[b, h, first, key])
                x0 = vadd16(x0, m)
                x1 = vadd16(x1, m)
        vstore16(st, at, x0)
        vstore16(st, at + LANES, x1)
        top0 = vmax16(top0, x0)
        top1 = vmax16(top1, x1)
    minus = vsplat16(-1.0)
    shift0 = vmul16(top0, minus)
    shift1 = vmul16(top1, minus)
    total0 = vzero16()
    total1 = total0
    for key in range(sk):
        at = key * NR
        e0 = vexp16(vadd16(vload16(st, at), shift0), SOFTMAX_FLUSH)
        e1 = vexp16(vadd16(vload16(st, at + LANES), shift1), SOFTMAX_FLUSH)
        vstore16(st, at, e0)
        vstore16(st, at + LANES, e1)
        total0 = vadd16(total0, e0)
        total1 = vadd16(total1, e1)
    one = vsplat16(1.0)
    inv0 = vdiv16(one, total0)
    inv1 = vdiv16(one, total1)
    for key in range(sk):
        at = key * NR
        vstore16(st, at, vmul16(vload16(st, at), inv0))
        vstore16(st, at + LANES, vmul16(vload16(st, at + LANES), inv1))


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def micro_attention(
    qt, kp, v, v0, ld, mask, has_mask, query_mask, scale, out, heads, sq, sk, blocks_per_task
):
    """Attention into ``out`` [B, Sq, H*D] from the packed heads (:func:`pack_heads`) and V read
    in place (row s of image b at flat ``v0 + (b*Sk + s)*ld`` of ``v``). One task per (batch,
    head, run of ``blocks_per_task`` 32-query blocks); per block: the transposed scores
    S^T = K Q^T (12 keys x 32 queries per tile), their softmax down the columns, then out =
    P V in 12-query x 32-column tiles, A read from the [Sk, 32] probability block."""
    batch, _, hidden = out.shape
    d_count = hidden // heads
    q_panels = (sq + NR - 1) // NR
    k_panels = (sk + MR - 1) // MR
    runs = (q_panels + blocks_per_task - 1) // blocks_per_task
    panel_rows = np.arange(d_count) * NR  # row d of a 32-query panel
    value_rows = np.arange(sk) * ld  # row s of V, from the head's first column
    flat_out = out.reshape(-1)
    for t in prange(batch * heads * runs):
        bh = t // runs
        b = bh // heads
        h = bh % heads
        # + NR: the last 12-query tile of a block reads lanes 24..35 of the last key row
        st = np.zeros(k_panels * MR * NR + NR, np.float32)
        mt = np.empty(sk * NR if query_mask else 1, np.float32)
        scratch = np.empty(MR * NR, np.float32)
        value_base = v0 + b * sk * ld + h * d_count
        for blk in range((t % runs) * blocks_per_task, min(q_panels, (t % runs + 1) * blocks_per_task)):
            first = blk * NR
            q_panel = (bh * q_panels + blk) * d_count * NR
            for p in range(k_panels):
                tile_12x32(kp, (bh * k_panels + p) * d_count * MR, qt, q_panel, panel_rows, 0, d_count, st, p * MR * NR, NR, False)  # fmt: skip
            softmax_columns(st, sk, scale, mask, has_mask, query_mask, b, h, first, sq, mt)
            for r0 in range(0, NR, MR):
                rows = min(MR, NR - r0, sq - first - r0)
                if rows <= 0:
                    break
                dest = (b * sq + first + r0) * hidden + h * d_count
                for j0 in range(0, d_count, NR):
                    if rows == MR:
                        tile_12x32_wide(st, r0, NR, v, value_base + j0, value_rows, 0, sk, flat_out, dest + j0, hidden, False)  # fmt: skip
                    else:
                        tile_12x32_wide(st, r0, NR, v, value_base + j0, value_rows, 0, sk, scratch, 0, NR, False)  # fmt: skip
                        for r in range(rows):
                            for c in range(NR):
                                flat_out[dest + r * hidden + j0 + c] = scratch[r * NR + c]


def blocks_per_task(batch: int, heads: int, sq: int, threads: int) -> int:
    """32-query blocks per task: a head's blocks split so that there are at least four tasks
    per thread where the blocks allow (a ViT at batch 1 has 3 heads x 7 blocks)."""
    blocks = -(-sq // NR)
    runs = min(blocks, -(-4 * max(threads, 1) // max(batch * heads, 1)))
    return -(-blocks // runs)


@register_tactic
class MicroAttention(RunsBound, Tactic):
    """Own micro-kernel for both products (scores transposed), Q and K packed per run, the
    softmax down 16-query lanes in L1."""

    name = "cpu.attention.micro"
    op_types = ("Attention",)
    priority = 30

    def supports(self, node: Node, graph: Graph) -> bool:
        if not OFFERED or not _supports(node, graph):
            return False
        q = graph.values[node.input(0)]
        assert q.shape is not None
        hidden = int(q.shape[2]) // (3 if node.attr("packed_qkv", 0) else 1)
        return (hidden // int(node.attr("num_heads", 1))) % NR == 0

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """Packing and attention on these arrays. Without ``copies`` (the runtime's binding),
        None when Q, K or V would have to be copied first or the mask is not float32."""
        if not copies:
            qkv = inputs[:1] if node.attr("packed_qkv", 0) else inputs[:3]
            mask = inputs[3] if len(inputs) > 3 else None
            if not all(dense(a) for a in qkv) or (mask is not None and mask.dtype != np.float32):
                return None
        out = outputs[0]
        batch, sq, hidden = out.shape
        o = in_place_operands(node, inputs, out)
        q, k, v = o.q.reshape(-1), o.k.reshape(-1), o.v.reshape(-1)
        heads, sk, ld, (q0, k0, v0) = o.heads, o.sk, o.ld, o.offsets
        d_count = hidden // heads
        query_mask = o.has_mask and o.mask.strides[2] != 0
        qt = workspace(prepared, "query_panels", (batch * heads * -(-sq // NR) * d_count * NR,))
        kp = workspace(prepared, "key_panels", (batch * heads * -(-sk // MR) * d_count * MR,))
        per_task = blocks_per_task(batch, heads, sq, numba_thread_count())
        calls = in_order(
            functools.partial(pack_heads, q, q0, k, k0, ld, batch, sq, sk, heads, d_count, qt, kp),
            functools.partial(
                micro_attention,
                qt, kp, v, v0, ld, o.mask, o.has_mask, query_mask, o.scale, out, heads, sq, sk, per_task,
            ),
        )  # fmt: skip
        return bound_call(calls, (), batch * heads * sq * sk * d_count // 8)
