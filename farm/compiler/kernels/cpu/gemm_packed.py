"""GEMM on our own 12 x 32 micro-kernel: the weight packed once, the epilogue fused per tile.

``cpu.gemm.packed16`` computes ``out[M, N] = epilogue(A[M, K] @ W[K, N])`` (FusedGemm or MatMul
with a constant 2-D weight; A's leading axes are rows) without BLAS. At prepare time the weight
is packed into 32-column panels (``_microgemm.pack_cols``). At run time A is packed into 12-row
panels (one ``prange``), then a second ``prange`` runs tasks of one weight panel x a run of row
panels, GotoBLAS's loop order: K in blocks of :data:`KC`, the weight panel's block held in L1
while the A panels stream past it through the 12 x 32 micro-kernel (``_microgemm.tile_12x32``);
bias, residual and activation (GELU and SiLU included, on 16-lane vectors) are applied to each
tile as its last block of K completes it.

When A's packed copy would outgrow the threads' L2s (two or more runs of :data:`A_CHUNK_BYTES`
a thread) and the rows split evenly (:data:`OWN_RUNS_FROM`), ``gemm_runs`` replaces the two
passes: each thread packs one run of its rows at a time into its own L2-sized buffer and runs
every weight panel over it, so the packed copy never goes to memory and back. Interleaved A/B
on a 2-core Zen 4 EPYC at batch 8: ViT's 197 x 768 x 192 MLP-down projection 0.91-0.95 of the
two-pass time, BERT's 128 x 1024 x 256 0.94-0.98, one thread 0.94; shapes with a smaller A keep
the two passes.

Why: OpenBLAS packs the weight again on every call and, called per tile from numba's pool, ran
BERT's 128-row projections at 100-140 GFLOP/s per core; the micro-kernel runs at 150-175 on the
same Xeon. Without AVX-512 the micro-kernel runs as four 6 x 16 quarters (the 24 sixteen-lane
accumulators would spill there); on a 2-core AVX2 EPYC that is level with our tiled BLAS tactic
on BERT's and ViT's projections (0.97-1.30 of its time), so the tuner decides. Pool: numba's
only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    VECTOR_ACTS,
    finish16,
    finish_value,
    residual_rows,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._microgemm import (
    MR,
    NR,
    pack_cols,
    pack_row_panel,
    pack_row_panels,
    panel_offsets,
    store_tile_part,
    tile_12x32,
)
from farm.compiler.kernels.cpu._operands import RunsBound, dense, float32_io, in_order, memo, workspace
from farm.compiler.kernels.cpu._simd16 import LANES, called_tile, vadd16, vload16_masked
from farm.compiler.kernels.cpu._threads import numba_thread_count
from farm.compiler.kernels.cpu.gemm import (
    GEMM_OPS,
    _const_2d_weight,
    _epilogue_operands,
    _prepare_weight,
    rows_at_least,
)
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

KC = 256  # K per block: a 256 x 32 weight block is 32 KiB, in L1 while A streams past
A_CHUNK_BYTES = 512 * 1024  # rows of A per run: a quarter to half of an L2
# Row tiles per thread from which each thread packs its own runs of A (``gemm_runs``): the
# threads then split the rows alone, at most one tile in sixteen apart (at 8, ViT's 197-row
# projections at batch 1 ran 12 % slower than with the column panels shared out).
OWN_RUNS_FROM = 16
MIN_ROWS = 12  # fewer rows would leave most of a 12-row micro-tile idle: the few-rows tactics


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _run_task(
    ap, first, i0, i1, j, m, k, wp, offs, n, out, bias, has_bias, residual, res_mode, act, alpha, beta
):
    """Row tiles ``i0 .. i1-1`` x column panel ``j`` of ``out``; row tile i's A panel is at
    ``ap[(i - first) * k * 12:]``. K goes in blocks of :data:`KC` with the weight panel's block
    (KC x 32 floats) in L1 while the A panels stream past it; row or column tiles at the edge
    are computed over all of K into a scratch tile. The epilogue runs on each tile as its last
    block of K completes it."""
    row_tiles = (m + MR - 1) // MR
    flat = out.reshape(-1)
    epilogue = has_bias or act != 0 or res_mode != RES_NONE
    j0 = j * NR
    cols = min(NR, n - j0)
    full_end = i1 if (i1 < row_tiles or m % MR == 0) else i1 - 1
    if cols < NR:
        full_end = i0
    for k0 in range(0, k, KC):
        kk = min(KC, k - k0)
        last = k0 + kk >= k
        for i in range(i0, full_end):
            tile_12x32(
                ap, ((i - first) * k + k0) * MR, wp, j * k * NR, offs, k0, kk, flat, i * MR * n + j0, n, k0 > 0
            )  # fmt: skip
            if last and epilogue:
                _finish_tile(out, i * MR, MR, j0, cols, bias, has_bias, residual, res_mode, act, alpha, beta)
    if full_end < i1:
        scratch = np.empty(MR * NR, np.float32)
        for i in range(full_end, i1):
            rows = min(MR, m - i * MR)
            tile_12x32(ap, (i - first) * k * MR, wp, j * k * NR, offs, 0, k, scratch, 0, NR, False)
            store_tile_part(scratch, flat, i * MR * n + j0, n, rows, cols)
            if epilogue:
                _finish_tile(
                    out, i * MR, rows, j0, cols, bias, has_bias, residual, res_mode, act, alpha, beta
                )


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def gemm_panels(ap, m, k, wp, offs, n, out, bias, has_bias, residual, res_mode, act, alpha, beta, chunks):
    """``out = epilogue(A @ W)`` with A packed by ``pack_row_panels`` (flat ``ap``), W by
    ``pack_cols`` (flat ``wp``, rows at ``offs``: ``panel_offsets(K)``), out [M, N]
    C-contiguous; ``residual`` [M, N] or a dummy, ``bias`` [N] or a dummy.

    A task is one of ``chunks`` runs of 12-row A panels x one 32-column weight panel
    (:func:`_run_task`)."""
    row_tiles = (m + MR - 1) // MR
    col_tiles = (n + NR - 1) // NR
    per_chunk = (row_tiles + chunks - 1) // chunks
    for t in prange(col_tiles * chunks):
        j = t % col_tiles  # run-major: a thread's consecutive tasks share their rows of A
        i0 = (t // col_tiles) * per_chunk
        i1 = min(row_tiles, i0 + per_chunk)
        if i0 < i1:
            _run_task(
                ap, 0, i0, i1, j, m, k, wp, offs, n, out, bias, has_bias, residual, res_mode, act, alpha, beta
            )  # fmt: skip


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def gemm_runs(a, m, k, wp, offs, n, out, bias, has_bias, residual, res_mode, act, alpha, beta, per_run, bufs):
    """:func:`gemm_panels` with A read unpacked (``a`` [M, K] C-contiguous): worker w of the
    W = ``bufs.shape[0]`` takes row tiles w*T//W .. (w+1)*T//W - 1, in runs of ``per_run``
    tiles; it packs each run into its own buffer ``bufs[w]`` (in its L2) and runs every column
    panel over it. The whole-A pack pass, its write of the packed copy to memory and the
    tiles' read of it back are gone."""
    row_tiles = (m + MR - 1) // MR
    col_tiles = (n + NR - 1) // NR
    workers = bufs.shape[0]
    for w in prange(workers):
        buf = bufs[w]
        last = (w + 1) * row_tiles // workers
        for i0 in range(w * row_tiles // workers, last, per_run):
            i1 = min(last, i0 + per_run)
            for i in range(i0, i1):
                pack_row_panel(a, i * MR, min(MR, m - i * MR), buf, (i - i0) * k * MR)
            for j in range(col_tiles):
                _run_task(
                    buf, i0, i0, i1, j, m, k, wp, offs, n, out, bias, has_bias, residual, res_mode, act, alpha, beta
                )  # fmt: skip


@njit(error_model="numpy", cache=True, nogil=True)
def _finish_tile(out, r0, rows, j0, cols, bias, has_bias, residual, res_mode, act, alpha, beta):
    """Bias (``bias[j0:]``), residual and the activation on a finished tile (rows
    r0.., columns j0..) in one pass while it is in L1: sixteen lanes at a time for the
    activations of ``VECTOR_ACTS`` (per-row ``finish_row`` calls cost more than the tile's
    arithmetic at 32 columns, and a scalar store loop with the activation's branches half of it)."""
    if act in VECTOR_ACTS:
        ep = vector_epilogue(res_mode, act, alpha, beta)
        _finish_vectors(out.reshape(-1), out.shape[1], r0, rows, j0, cols, bias, has_bias, residual.reshape(-1), ep)
        return
    a = np.float32(alpha)
    c = np.float32(beta)
    zero = np.float32(0.0)
    for r in range(r0, r0 + rows):
        row = out[r, j0 : j0 + cols]
        res_row = residual[r, j0 : j0 + cols] if res_mode != RES_NONE else residual[0]
        for q in range(cols):
            row[q] = finish_value(
                row[q],
                bias[j0 + q] if has_bias else zero,
                res_row[q] if res_mode != RES_NONE else zero,
                res_mode,
                act,
                a,
                c,
            )


@called_tile
def _finish_vectors(flat, n, r0, rows, j0, cols, bias, has_bias, res, ep):
    """:func:`_finish_tile` sixteen lanes at a time on the flat output (rows of ``n``): compiled
    without reference counting, since the incref/decref pair numba put around every vector's
    ``finish16`` spilled the registers (a GELU epilogue made BERT-sized GEMMs 1.1-1.5x slower)."""
    for r in range(r0, r0 + rows):
        for q in range(0, cols, LANES):
            count = cols - q
            at = r * n + j0 + q
            v = vload16_masked(flat, at, count)
            if has_bias:
                v = vadd16(v, vload16_masked(bias, j0 + q, count))
            finish16(v, flat, at, count, res, ep)


def row_chunks(m: int, n: int, k: int, threads: int) -> int:
    """Runs of row panels: enough that a run of A fits :data:`A_CHUNK_BYTES` (it stays in L2
    while every weight panel passes), and more while the tasks (run x column panel) are fewer
    than four per thread (BERT's 256-wide output projection is 8 panels); at most one per row
    panel."""
    row_tiles = -(-m // MR)
    col_tiles = -(-n // NR)
    chunks = min(row_tiles, max(1, -(-m * k * 4 // A_CHUNK_BYTES)))
    while chunks < row_tiles and col_tiles * chunks < 4 * max(threads, 1):
        chunks += 1
    return chunks


@register_tactic
class PackedGemm(RunsBound, Tactic):
    """Own 12 x 32 micro-kernel GEMM, weight prepacked, epilogue fused per tile (M >= 12 rows)."""

    name = "cpu.gemm.packed16"
    op_types = GEMM_OPS
    priority = 11  # below tiled (12): the tuner times it; the level-0 default stays BLAS-based

    def supports(self, node: Node, graph: Graph) -> bool:
        if not float32_io(node, graph) or _const_2d_weight(node, graph) is None:
            return False
        return rows_at_least(node, graph, MIN_ROWS)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        prepared = _prepare_weight(node, graph, "kn")  # the weight as [K, N] (replaces input 1), the bias
        kn = prepared.tensors.pop("weight")
        prepared.tensors["panels"] = pack_cols(kn)
        prepared.params["kn"] = [int(d) for d in kn.shape]
        return prepared

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The pack, product and epilogue kernels on these arrays. Without ``copies`` (the
        runtime's binding), None when A or the residual would have to be copied first or the
        bias is a run-time input."""
        a, out = inputs[0], outputs[0]
        assert a is not None
        k, n = prepared.params["kn"]
        bias, has_bias, act, alpha, beta, mode = _epilogue_operands(node, inputs, prepared, n)
        if not copies and (
            not dense(a)
            or "epilogue" not in prepared.scratch
            or (mode != RES_NONE and not dense(inputs[3], out.shape))
        ):
            return None
        a2 = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, k)
        m = a2.shape[0]
        residual = residual_rows(inputs[3] if mode != RES_NONE else None, out.shape, m)
        threads = numba_thread_count()
        chunks = memo(prepared, ("chunks", m, threads), lambda: row_chunks(m, n, k, threads))
        panels = memo(
            prepared, "panels", lambda: np.ascontiguousarray(prepared.tensors["panels"], np.float32)
        )
        offs = memo(prepared, "offsets", lambda: panel_offsets(k))
        rows = out.reshape(m, n)
        fused = (bias, has_bias, residual, mode, act, alpha, beta)
        row_tiles = -(-m // MR)
        calls: list[Callable[[], None]] = []
        # A of at least two runs a thread (a packed copy larger than the threads' L2s, which the
        # tiles would read back from memory) and enough rows to split evenly: own runs
        if chunks >= 2 * threads and row_tiles >= OWN_RUNS_FROM * threads:
            per_run = -(-row_tiles // chunks)
            bufs = workspace(prepared, "a_runs", (threads, per_run * k * MR))
            calls.append(functools.partial(gemm_runs, a2, m, k, panels, offs, n, rows, *fused, per_run, bufs))
        else:
            ap = workspace(prepared, "a_panels", (-(-m // MR) * k * MR,))
            calls.append(functools.partial(pack_row_panels, a2, ap))
            calls.append(functools.partial(gemm_panels, ap, m, k, panels, offs, n, rows, *fused, chunks))
        return in_order(*calls)
