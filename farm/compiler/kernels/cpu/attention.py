"""Attention tactics (the fused ``Attention`` op, FP32).

``Y = merge_heads(softmax(scale * q @ k^T + mask) @ v)`` with Q [B, Sq, H*D], K/V [B, Sk, H*D]
and an additive mask broadcastable to [B, H, Sq, Sk] (fused.py); with ``packed_qkv`` Q, K and V
are the three parts of one [B, S, 3*H*D] input (``passes.packed_attention``).

* ``cpu.attention.fused``: numba, four query rows at a time: their score rows are computed,
  soft-maxed and multiplied by V while they sit in L1; the [B, H, Sq, Sk] score tensor is never
  written to memory. K is first transposed per head to [D, Sk] so that both products are
  unit-stride loops that vectorize, each K/V load feeding four rows. Pool: numba's.
* ``cpu.attention.tiles``: per (batch, head, block of query rows), in numba's pool: the block's
  scores with one single-threaded BLAS GEMM on the strided Q and K head views (``_blas``, called
  from numba), scale + mask + softmax on the rows while they are in L1/L2, then P @ V with a
  second GEMM straight into the block's slice of the merged-heads output. BLAS's micro-kernels
  for both products, one thread pool, and the scores never leave the cache. A packed QKV input
  is read in place (BLAS's leading dimension is its row stride); the other two tactics copy its
  three parts out first.
* ``cpu.attention.blas``: two batched BLAS GEMMs on strided views of Q, K, V (no head copies)
  with a numba scale + mask + softmax pass between them, the second GEMM writing straight into
  the merged-heads output. Pool: BLAS's, then numba's, then BLAS's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu import _blas
from farm.compiler.kernels.cpu._operands import float32_io, workspace
from farm.compiler.kernels.cpu._threads import blas_single_thread, numba_thread_count, threads_for
from farm.compiler.kernels.cpu._vecmath import ROW_MAX_LANES, exp_shift_sum_row, row_max
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# numba caches the kernels below by this file's *content* (a hash of it), not by the
# helpers they inline: after changing a _vecmath row function, change this file too (or clear
# __pycache__), or the cached kernels keep the old helper (seen with exp_shift_sum_row).
_NO_MASK = np.zeros((1, 1, 1, 1), np.float32)
# Reassociation lets the row sums vectorize; the rounding change is far below FP32 tolerance.
_SUM_FLAGS = {"reassoc", "contract"}


def _mask_4d(mask: np.ndarray | None, shape: tuple[int, int, int, int]) -> tuple[np.ndarray, bool]:
    """The additive mask as a read-only [B, H, Sq, Sk] float32 view (zero strides where broadcast)."""
    if mask is None:
        return np.broadcast_to(_NO_MASK, shape), False
    mask = np.asarray(mask, dtype=np.float32)
    return np.broadcast_to(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), shape), True


def _supports(node: Node, graph: Graph) -> bool:
    if not float32_io(node, graph, input_count=3):
        return False
    q = graph.values.get(node.input(0))
    heads = int(node.attr("num_heads", 1))
    if q is None or q.shape is None or len(q.shape) != 3:
        return False
    hidden = q.shape[2]
    if not isinstance(hidden, int):
        return False
    if node.attr("packed_qkv", 0):  # [B, S, 3*H*D]: Q, K, V side by side
        if hidden % 3:
            return False
        hidden //= 3
    return heads > 0 and hidden % heads == 0


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def transpose_heads(k, heads, kt):
    """kt[b, h, d, j] = k[b, j, h*D + d]."""
    batch, sk, hidden = k.shape
    d_count = hidden // heads
    for t in prange(batch * heads):
        b = t // heads
        h = t % heads
        for j in range(sk):
            src = k[b, j, h * d_count : (h + 1) * d_count]
            for d in range(d_count):
                kt[b, h, d, j] = src[d]


_QUERY_BLOCK = 4
_ROWS_PER_TASK = 8


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath=_SUM_FLAGS)
def fused_attention(q, kt, v, mask, has_mask, scale, scores, out):
    """Blocks of 4 query rows of one (batch, head): scores, softmax and P @ V in L1.

    Each row of K^T (``kt`` [B, H, D, Sk]) and of V is loaded once for the 4 rows of a block
    (4 multiply-adds per load). A short last block repeats its last row and drops the copies.
    ``scores`` is unused (kept for the signature).
    """
    batch, sq, hidden = q.shape
    heads, d_count, sk = kt.shape[1], kt.shape[2], kt.shape[3]
    blocks = (sq + _QUERY_BLOCK - 1) // _QUERY_BLOCK
    for t in prange(batch * heads * blocks):
        b = t // (heads * blocks)
        h = (t // blocks) % heads
        first = (t % blocks) * _QUERY_BLOCK
        i0 = first
        i1 = min(first + 1, sq - 1)
        i2 = min(first + 2, sq - 1)
        i3 = min(first + 3, sq - 1)
        col = h * d_count
        acc = np.zeros((_QUERY_BLOCK, sk), np.float32)
        s0, s1, s2, s3 = acc[0], acc[1], acc[2], acc[3]
        for d in range(d_count):
            krow = kt[b, h, d]
            a0 = q[b, i0, col + d] * scale
            a1 = q[b, i1, col + d] * scale
            a2 = q[b, i2, col + d] * scale
            a3 = q[b, i3, col + d] * scale
            for j in range(sk):
                kv = krow[j]
                s0[j] += a0 * kv
                s1[j] += a1 * kv
                s2[j] += a2 * kv
                s3[j] += a3 * kv
        inv = np.empty(_QUERY_BLOCK, np.float32)
        poly = np.empty(sk, np.float32)
        bits = np.empty(sk, np.int32)
        lanes = np.empty(ROW_MAX_LANES, np.float32)
        for r in range(_QUERY_BLOCK):
            i = min(first + r, sq - 1)
            srow = acc[r]
            if has_mask:
                mrow = mask[b, h, i]
                for j in range(sk):
                    srow[j] += mrow[j]
            inv[r] = np.float32(1.0) / exp_shift_sum_row(srow, srow, row_max(srow, lanes), poly, bits)
        y = np.zeros((_QUERY_BLOCK, d_count), np.float32)
        y0, y1, y2, y3 = y[0], y[1], y[2], y[3]
        for j in range(sk):
            vrow = v[b, j, col : col + d_count]
            p0 = s0[j] * inv[0]
            p1 = s1[j] * inv[1]
            p2 = s2[j] * inv[2]
            p3 = s3[j] * inv[3]
            for dd in range(d_count):
                vv = vrow[dd]
                y0[dd] += p0 * vv
                y1[dd] += p1 * vv
                y2[dd] += p2 * vv
                y3[dd] += p3 * vv
        for r in range(min(_QUERY_BLOCK, sq - first)):
            dst = out[b, first + r, col : col + d_count]
            src = y[r]
            for dd in range(d_count):
                dst[dd] = src[dd]


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath=_SUM_FLAGS)
def scale_mask_softmax(scores, mask, has_mask, scale):
    """In place over ``scores`` [B, H, Sq, Sk]: softmax(scale * scores + mask) along the last axis."""
    batch, heads, sq, sk = scores.shape
    rows = batch * heads * sq
    tasks = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in prange(tasks):
        poly = np.empty(sk, np.float32)
        bits = np.empty(sk, np.int32)
        lanes = np.empty(ROW_MAX_LANES, np.float32)
        for t in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            b = t // (heads * sq)
            h = (t // sq) % heads
            i = t % sq
            s = scores[b, h, i]
            if has_mask:
                mrow = mask[b, h, i]
                for j in range(sk):
                    s[j] = s[j] * scale + mrow[j]
            else:
                for j in range(sk):
                    s[j] = s[j] * scale
            total = exp_shift_sum_row(s, s, row_max(s, lanes), poly, bits)
            inv = np.float32(1.0) / total
            for j in range(sk):
                s[j] *= inv


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath=_SUM_FLAGS)
def tiled_attention(q, k, v, mask, has_mask, scale, out, heads, block, sq, sk, hidden, ld, q0, k0, v0):
    """Attention into out [B, Sq, H*D] (``hidden`` = H*D), one task per (batch, head, ``block``
    query rows): S = scale * Q_blk K_h^T (BLAS), softmax(S + mask) row by row, out_blk,h = S V_h
    (BLAS). Q, K, V are read where they lie: row s of image b of Q starts at flat element
    ``q0 + (b*Sq + s)*ld`` of ``q`` (K, V likewise with Sk, ``k0``, ``v0``), so separate
    C-contiguous [B, S, H*D] tensors (``ld`` = H*D, offsets 0) and the three parts of one packed
    [B, S, 3*H*D] projection (one array, ``ld`` = 3*H*D, offsets 0, H*D, 2*H*D) both work with
    no copy. BLAS must be held to one thread."""
    batch = out.shape[0]
    d_count = hidden // heads
    blocks = (sq + block - 1) // block
    for t in prange(batch * heads * blocks):
        b = t // (heads * blocks)
        h = (t // blocks) % heads
        first = (t % blocks) * block
        rows = min(block, sq - first)
        scores = np.empty((rows, sk), np.float32)
        q_off = q0 + (b * sq + first) * ld + h * d_count
        k_off = k0 + b * sk * ld + h * d_count
        v_off = v0 + b * sk * ld + h * d_count
        out_off = (b * sq + first) * hidden + h * d_count
        _blas.sgemm_at(True, rows, sk, d_count, scale, q, q_off, ld, k, k_off, ld, 0.0, scores, 0, sk)
        poly = np.empty(sk, np.float32)
        bits = np.empty(sk, np.int32)
        lanes = np.empty(ROW_MAX_LANES, np.float32)
        for r in range(rows):
            srow = scores[r]
            if has_mask:
                mrow = mask[b, h, first + r]
                for j in range(sk):
                    srow[j] += mrow[j]
            inv = np.float32(1.0) / exp_shift_sum_row(srow, srow, row_max(srow, lanes), poly, bits)
            for j in range(sk):
                srow[j] *= inv
        _blas.sgemm_at(False, rows, d_count, sk, 1.0, scores, 0, sk, v, v_off, ld, 0.0, out, out_off, hidden)


def attention_block(batch: int, heads: int, sq: int, threads: int) -> int:
    """Query rows per task: 64 (a [64, Sk] score tile stays in L2), halved down to 8 until every
    thread has at least two tasks."""
    block = 64
    while block > 8 and batch * heads * -(-sq // block) < 2 * threads:
        block //= 2
    return min(block, max(sq, 1))


def packed_parts(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
    """Q, K, V: the first three inputs, or with ``packed_qkv`` the three equal parts of input 0's
    last axis (views)."""
    x = inputs[0]
    if not node.attr("packed_qkv", 0) or x is None:
        return list(inputs[:3])
    width = x.shape[-1] // 3
    return [x[..., i * width : (i + 1) * width] for i in range(3)]


class InPlaceOperands(NamedTuple):
    """Q, K, V for kernels that read them in place (:func:`in_place_operands`)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    sk: int  # keys per image
    ld: int  # row stride of all three
    offsets: tuple[int, int, int]  # first element of Q, K, V
    heads: int
    scale: np.float32
    mask: np.ndarray  # [B, H, Sq, Sk] view (zero strides where broadcast)
    has_mask: bool


def in_place_operands(node: Node, inputs: Sequence[np.ndarray | None], out: np.ndarray) -> InPlaceOperands:
    """Q, K, V as C-contiguous float32 arrays where row s of image b of Q starts at flat element
    ``offsets[0] + (b*Sq + s) * ld`` (K, V likewise with Sk), with the head count, the score
    scale and the mask for ``out`` [B, Sq, H*D]. A packed [B, S, 3*H*D] projection is one array
    for all three (ld 3*H*D, offsets 0, H*D, 2*H*D); separate tensors have ld H*D, offsets 0."""
    batch, sq, hidden = out.shape
    heads, scale = heads_and_scale(node, hidden)
    if node.attr("packed_qkv", 0):
        qkv = np.ascontiguousarray(inputs[0], dtype=np.float32)
        q, k, v, sk, ld, offsets = qkv, qkv, qkv, qkv.shape[1], 3 * hidden, (0, hidden, 2 * hidden)
    else:
        q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in inputs[:3])
        sk, ld, offsets = k.shape[1], hidden, (0, 0, 0)
    mask, has_mask = _mask_4d(inputs[3] if len(inputs) > 3 else None, (batch, heads, sq, sk))
    return InPlaceOperands(q, k, v, sk, ld, offsets, heads, scale, mask, has_mask)


def heads_and_scale(node: Node, hidden: int) -> tuple[int, np.float32]:
    """(H, the score scale): ``scale`` when given, else 1/sqrt(D) with D = hidden / H."""
    heads = int(node.attr("num_heads", 1))
    return heads, np.float32(node.attr("scale", 1.0 / math.sqrt(hidden // heads)))


def _operands(
    node: Node, inputs: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int, float]:
    q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in packed_parts(node, inputs))
    mask = inputs[3] if len(inputs) > 3 else None
    heads, scale = heads_and_scale(node, q.shape[2])
    return q, k, v, mask, heads, scale  # type: ignore[return-value]


@register_tactic
class FusedAttention(Tactic):
    """numba: per query row, scores + softmax + P @ V in cache; scores never reach memory."""

    name = "cpu.attention.fused"
    op_types = ("Attention",)
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        return _supports(node, graph)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        q, k, v, mask, heads, scale = _operands(node, inputs)
        batch, sq, hidden = q.shape
        sk = k.shape[1]
        d_count = hidden // heads
        kt = workspace(prepared, "kt", (batch, heads, d_count, sk))
        scores = workspace(prepared, "scores", (1, 1))
        mask4, has_mask = _mask_4d(mask, (batch, heads, sq, sk))
        with threads_for(batch * heads * sq * sk * d_count // 8):
            transpose_heads(k, heads, kt)
            fused_attention(q, kt, v, mask4, has_mask, scale, scores, outputs[0])


@register_tactic
class TiledAttention(Tactic):
    """numba tasks of (batch, head, query block): BLAS scores, softmax in cache, BLAS P @ V."""

    name = "cpu.attention.tiles"
    op_types = ("Attention",)
    priority = 25

    def supports(self, node: Node, graph: Graph) -> bool:
        return _blas.AVAILABLE and _supports(node, graph)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        out = outputs[0]
        batch, sq, hidden = out.shape
        o = in_place_operands(node, inputs, out)
        block = attention_block(batch, o.heads, sq, numba_thread_count())
        with threads_for(batch * o.heads * sq * o.sk * (hidden // o.heads) // 8), blas_single_thread():
            tiled_attention(
                o.q,
                o.k,
                o.v,
                o.mask,
                o.has_mask,
                o.scale,
                out,
                o.heads,
                block,
                sq,
                o.sk,
                hidden,
                o.ld,
                *o.offsets,
            )


@register_tactic
class BlasAttention(Tactic):
    """Batched BLAS Q @ K^T on strided head views, numba softmax, BLAS P @ V into the output."""

    name = "cpu.attention.blas"
    op_types = ("Attention",)
    priority = 10

    def supports(self, node: Node, graph: Graph) -> bool:
        return _supports(node, graph)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        q, k, v, mask, heads, scale = _operands(node, inputs)
        batch, sq, hidden = q.shape
        sk = k.shape[1]
        d_count = hidden // heads
        q4 = q.reshape(batch, sq, heads, d_count).transpose(0, 2, 1, 3)
        kt4 = k.reshape(batch, sk, heads, d_count).transpose(0, 2, 3, 1)
        v4 = v.reshape(batch, sk, heads, d_count).transpose(0, 2, 1, 3)
        scores = workspace(prepared, "scores", (batch, heads, sq, sk))
        np.matmul(q4, kt4, out=scores)
        mask4, has_mask = _mask_4d(mask, (batch, heads, sq, sk))
        with threads_for(scores.size):
            scale_mask_softmax(scores, mask4, has_mask, scale)
        out = outputs[0]
        if out.flags.c_contiguous:
            np.matmul(scores, v4, out=out.reshape(batch, sq, heads, d_count).transpose(0, 2, 1, 3))
        else:
            merged = workspace(prepared, "merged", (batch, heads, sq, d_count))
            np.matmul(scores, v4, out=merged)
            out[...] = merged.transpose(0, 2, 1, 3).reshape(out.shape)
