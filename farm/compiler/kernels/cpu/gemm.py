"""GEMM tactics (FusedGemm and MatMul, FP32).

* ``cpu.gemm.blas``: one BLAS call. A constant 2-D weight is pre-transposed in ``prepare`` to a
  C-contiguous [K, N] matrix and every batch row of A goes into one [M, K] x [K, N] GEMM;
  otherwise numpy's batched ``matmul`` with broadcasting. Then the fused epilogue
  (bias + activation + residual, one pass over the output in numba).
* ``cpu.gemm.blas_nt``: the same with the weight kept as [N, K] and passed transposed, the other
  BLAS packing path; which one is faster depends on the shape, so the tuner times both.
* ``cpu.gemm.blas_1t``: ``cpu.gemm.blas`` with BLAS held to the calling thread: for GEMMs too
  small to pay for waking BLAS's second thread, and for hosts where that thread waits for a core.
* ``cpu.gemm.small_rows``: a numba kernel for few rows (batch-1 MLPs and classifier heads, M <= 32)
  with the epilogue fused in: each thread owns a block of output columns whose slice of the
  weight stays in cache while it serves every row; no BLAS call overhead.
* ``cpu.gemm.small_rows_1t``: ``small_rows`` on the calling thread only (batch-8 MLP layers).
* ``cpu.gemm.dot_rows``: for at most 16 rows (batch 1-16 MLPs, classifier heads): the constant
  weight stored [N, K], each output a vectorized dot product of two contiguous rows, the weight
  read once as one sequential stream, and the epilogue applied row by row while the output is
  still in L1. It never touches a thread pool: at these sizes setting numba's thread count
  (~15 us), a parallel kernel's launch (~10-30 us) or a BLAS thread switch (~8 us) cost as much
  as the product. More rows (a dynamic batch past 16) go to BLAS. Measured against alternatives
  (2 cores, EPYC, one thread, the MLP's 256-512-512-256-10 layers, p10 of interleaved runs): at
  batch 1 46 us for the four layers vs 53 us for OpenBLAS's GEMV and 107-114 us for the axpy
  form (:func:`add_row_products`) on [N/32, K, 32] panels; at batch 8 149-183 us vs 211 us for
  OpenBLAS and 284 us for the panels.
* ``cpu.gemm.dot_rows_split``: ``dot_rows`` with the output columns in one block per numba
  thread. With numba's workers spinning between kernels (one pool, ``kernels/threads.py``) the
  launch costs a few microseconds, and each core then streams only its own slice of the weight,
  which stays in its cache from run to run: the zoo MLP's 2.1 MB of weights do not fit one core's
  2 MB L2, half of them do.

Pools: the BLAS tactics use BLAS's pool for the product and numba's for the epilogue, one after
the other (an output smaller than ``PARALLEL_MIN_ELEMENTS`` gets a serial epilogue on the calling
thread); ``small_rows`` and ``dot_rows_split`` use numba's only; ``dot_rows`` none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    NO_MATRIX,
    RES_NONE,
    RES_PRE,
    epilogue_params,
    epilogue_vector_rows,
    finish_row,
    residual_rows,
    vector_or_dummy,
)
from farm.compiler.kernels.cpu._operands import dense, float32_io
from farm.compiler.kernels.cpu._rowgemm import add_row_products
from farm.compiler.kernels.cpu._threads import (
    PARALLEL_MIN_ELEMENTS,
    SingleThreadBlas,
    blas_threads_for,
    numba_thread_count,
    threads_for,
)
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

GEMM_OPS = ("FusedGemm", "MatMul")
SMALL_ROWS_MAX = 32
_COLUMN_BLOCK = 256


def _const_2d_weight(node: Node, graph: Graph) -> np.ndarray | None:
    w = graph.const(node.input(1))
    return w if w is not None and w.ndim == 2 else None


def rows_at_least(node: Node, graph: Graph, minimum: int) -> bool:
    """True when the left operand (2-D or more) has at least ``minimum`` rows (:func:`_known_rows`),
    or a symbolic row axis (rows known at run time only)."""
    a = graph.values.get(node.input(0))
    if a is None or a.shape is None or len(a.shape) < 2:
        return False
    return any(not isinstance(d, int) for d in a.shape[:-1]) or _known_rows(node, graph) >= minimum


def _weight_kn(node: Node, w: np.ndarray) -> np.ndarray:
    """The weight as MatMul's right operand [K, N] (applies ``transB``)."""
    return w.T if node.op_type == "FusedGemm" and int(node.attr("transB", 0)) else w


def _operand_b(node: Node, b: np.ndarray) -> np.ndarray:
    """A runtime right operand with ``transB`` applied (a view: numpy passes it to BLAS as is)."""
    return np.swapaxes(b, -1, -2) if node.op_type == "FusedGemm" and int(node.attr("transB", 0)) else b


def _prepare_weight(node: Node, graph: Graph, layout: str) -> Prepared:
    """Pack a constant weight as [K, N] (``layout="kn"``) or [N, K] (``"nk"``), and the bias."""
    prepared = Prepared()
    w = _const_2d_weight(node, graph)
    if w is not None:
        kn = _weight_kn(node, w)
        packed = kn if layout == "kn" else kn.T
        prepared.tensors["weight"] = np.ascontiguousarray(packed, dtype=np.float32)
    b = graph.const(node.input(2)) if node.op_type == "FusedGemm" else None
    if b is not None:
        prepared.tensors["bias"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    prepared.replaces = frozenset(i for i, k in ((1, "weight"), (2, "bias")) if k in prepared.tensors)
    return prepared


def _bias(
    node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared, n: int
) -> tuple[np.ndarray, bool]:
    raw = prepared.tensors.get("bias", inputs[2] if node.op_type == "FusedGemm" and len(inputs) > 2 else None)
    if raw is not None and raw.size != n:  # a bias broadcast from a single value
        raw = np.broadcast_to(raw.reshape(-1), (n,))
    return vector_or_dummy(raw)


def _cached_weight(prepared: Prepared) -> np.ndarray:
    w = prepared.scratch.get("weight")
    if w is None:
        w = prepared.scratch["weight"] = np.ascontiguousarray(prepared.tensors["weight"], dtype=np.float32)
    return w


def _epilogue(node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared, out: np.ndarray) -> None:
    """Bias + activation + residual over ``out`` [..., N] in place (nothing for a plain MatMul)."""
    if node.op_type != "FusedGemm":
        return
    n = out.shape[-1]
    bias, has_bias, act, alpha, beta, mode = _epilogue_operands(node, inputs, prepared, n)
    if not has_bias and act == 0 and mode == RES_NONE:
        return
    rows = out.reshape(-1, n)
    residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, rows.shape[0])
    _epilogue_rows(rows, bias, has_bias, residual, mode, act, alpha, beta)


@njit(error_model="numpy", cache=True, nogil=True)
def finish_rows(out, bias, has_bias, residual, res_mode, act, alpha, beta):
    """Bias + residual + activation over every row of ``out`` [rows, N], on the calling thread."""
    for i in range(out.shape[0]):
        res = residual[i] if res_mode != RES_NONE else residual[0]
        finish_row(out[i], np.float32(0.0), bias, 2 if has_bias else 0, res, res_mode, act, alpha, beta)


def _epilogue_rows(
    rows: np.ndarray,
    bias: np.ndarray,
    has_bias: bool,
    residual: np.ndarray,
    mode: int,
    act: int,
    alpha: float,
    beta: float,
) -> None:
    """The epilogue over ``rows`` [M, N]: serial on the calling thread when small (no thread-count
    switch, no parallel launch: together ~25 us, more than a small layer's product), else numba's
    parallel rows."""
    if rows.size < PARALLEL_MIN_ELEMENTS:
        finish_rows(rows, bias, has_bias, residual, mode, act, alpha, beta)
    else:  # large enough for numba's pool at its configured size
        epilogue_vector_rows(rows, bias, has_bias, residual, mode, act, alpha, beta)


@register_tactic
class BlasGemm(Tactic):
    """BLAS on a pre-transposed [K, N] weight (or batched ``matmul``), then the fused epilogue."""

    name = "cpu.gemm.blas"
    op_types = GEMM_OPS
    priority = 10

    def supports(self, node: Node, graph: Graph) -> bool:
        return float32_io(node, graph)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return _prepare_weight(node, graph, "kn")

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        a, out = inputs[0], outputs[0]
        assert a is not None
        with blas_threads_for(2 * out.size * a.shape[-1]):
            if "weight" in prepared.tensors and a.ndim >= 2:
                w = _cached_weight(prepared)
                np.matmul(
                    np.ascontiguousarray(a).reshape(-1, a.shape[-1]), w, out=out.reshape(-1, w.shape[1])
                )
            elif "weight" in prepared.tensors:
                np.matmul(a, _cached_weight(prepared), out=out)
            else:
                np.matmul(a, _operand_b(node, inputs[1]), out=out)  # type: ignore[arg-type]
        _epilogue(node, inputs, prepared, out)


@register_tactic
class BlasGemmTransposedWeight(Tactic):
    """BLAS with the constant weight stored [N, K] and passed transposed, then the epilogue."""

    name = "cpu.gemm.blas_nt"
    op_types = GEMM_OPS
    priority = 5

    def supports(self, node: Node, graph: Graph) -> bool:
        a = graph.values.get(node.input(0))
        return (
            float32_io(node, graph)
            and _const_2d_weight(node, graph) is not None
            and a is not None
            and a.rank is not None
            and a.rank >= 2
        )

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return _prepare_weight(node, graph, "nk")

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        a, out = inputs[0], outputs[0]
        assert a is not None
        w_nk = _cached_weight(prepared)
        with blas_threads_for(2 * out.size * a.shape[-1]):
            np.matmul(
                np.ascontiguousarray(a).reshape(-1, a.shape[-1]), w_nk.T, out=out.reshape(-1, w_nk.shape[0])
            )
        _epilogue(node, inputs, prepared, out)


@register_tactic
class SingleThreadBlasGemm(SingleThreadBlas, BlasGemm):
    """``cpu.gemm.blas`` with BLAS on the calling thread only (small GEMMs, busy hosts)."""

    name = "cpu.gemm.blas_1t"
    priority = 8


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"contract"})
def small_rows_gemm(a, w, out, bias, has_bias, residual, res_mode, act, alpha, beta):
    """``out = epilogue(a @ w)`` for a few rows: a [M, K], w [K, N], out [M, N].

    Threads split the columns in blocks of 256; each block of weight rows is read once and
    serves every row, whose partial sums stay in L1 (:func:`add_row_products`: eight weight rows
    per pass over a row's partial sums).
    """
    m = a.shape[0]
    n = w.shape[1]
    blocks = (n + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK
    every_row = np.ones(m, np.bool_)
    for blk in prange(blocks):
        j0 = blk * _COLUMN_BLOCK
        j1 = min(n, j0 + _COLUMN_BLOCK)
        width = j1 - j0
        acc = np.zeros((m, width), np.float32)  # the block of every row: stays in L1
        add_row_products(acc, a, w, every_row, j0, j1, j0)
        for i in range(m):
            row = out[i, j0:j1]
            src = acc[i]
            for j in range(width):
                row[j] = src[j]
            res = residual[i, j0:j1] if res_mode != RES_NONE else residual[0, 0:1]
            finish_row(
                row,
                np.float32(0.0),
                bias[j0:j1] if has_bias else bias,
                2 if has_bias else 0,
                res,
                res_mode,
                act,
                alpha,
                beta,
            )


def _epilogue_operands(
    node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared, n: int
) -> tuple[np.ndarray, bool, int, float, float, int]:
    """(bias, has bias, activation, alpha, beta, residual mode) of ``small_rows``'s epilogue
    (none for a MatMul). Cached in ``prepared.scratch`` unless the bias is a runtime input: at
    batch 1-8 the per-call attribute lookups cost a third of an MLP layer's time."""
    cached = prepared.scratch.get("epilogue")
    if cached is not None:
        return cached
    if node.op_type == "FusedGemm":
        bias, has_bias = _bias(node, inputs, prepared, n)
        result = (bias, has_bias, *epilogue_params(node))
    else:
        result = (*vector_or_dummy(None), 0, 0.0, 0.0, RES_NONE)
    runtime_bias = node.op_type == "FusedGemm" and bool(node.input(2)) and "bias" not in prepared.tensors
    if not runtime_bias:
        prepared.scratch["epilogue"] = result
    return result


@register_tactic
class SmallRowsGemm(Tactic):
    """numba GEMM with the epilogue fused in, for at most 32 rows and a constant 2-D weight."""

    name = "cpu.gemm.small_rows"
    op_types = GEMM_OPS
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        a = graph.values.get(node.input(0))
        if not float32_io(node, graph) or _const_2d_weight(node, graph) is None or a is None or not a.shape:
            return False
        rows = 1
        for d in a.shape[:-1]:
            if not isinstance(d, int):
                return True  # symbolic batch: let the tuner time it at the real shape
            rows *= d
        return rows <= SMALL_ROWS_MAX

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return _prepare_weight(node, graph, "kn")

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        a, out = inputs[0], outputs[0]
        assert a is not None
        w = _cached_weight(prepared)
        a2 = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, a.shape[-1])
        out2 = out.reshape(-1, w.shape[1])
        bias, has_bias, act, alpha, beta, mode = _epilogue_operands(node, inputs, prepared, w.shape[1])
        residual = residual_rows(inputs[3] if mode != RES_NONE else None, out.shape, out2.shape[0])
        with threads_for(w.size):
            small_rows_gemm(a2, w, out2, bias, has_bias, residual, mode, act, alpha, beta)


@register_tactic
class SingleThreadSmallRowsGemm(SmallRowsGemm):
    """``cpu.gemm.small_rows`` on the calling thread only: an MLP layer at batch 8 is ~2 M
    multiply-adds (~90 us on one core), where waking numba's second thread can cost more than
    it saves on a busy host."""

    name = "cpu.gemm.small_rows_1t"
    priority = 19

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        with threads_for(0):
            super().run(node, inputs, outputs, prepared)


# --------------------------------------------------------------------------- dot rows
DOT_ROWS_MAX = 16


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"reassoc", "contract"}, inline="always")
def _dot_columns(a, w_nk, out, col0, col1):
    """out[:, col0:col1] = a @ w_nk[col0:col1].T: a [M, K], w_nk [N, K], out [M, N].

    Every output is a dot product of two contiguous rows, vectorized over K (``reassoc`` lets
    LLVM keep vector partial sums; NaN and Inf still propagate). The weight is one sequential
    stream, read once, and a weight row stays in L1 while it serves every row of ``a``. From four
    rows on, two weight rows and four rows of ``a`` go together (eight sums; 0.75 loads per
    multiply-add)."""
    m, depth = a.shape
    m4 = m - m % 4 if m >= 4 else 0
    n2 = col0 + ((col1 - col0) - (col1 - col0) % 2 if m >= 4 else 0)
    for j in range(col0, n2, 2):
        r = w_nk[j]
        q = w_nk[j + 1]
        for i in range(0, m4, 4):
            x0 = a[i]
            x1 = a[i + 1]
            x2 = a[i + 2]
            x3 = a[i + 3]
            s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = np.float32(0.0)
            for k in range(depth):
                wr = r[k]
                wq = q[k]
                y0 = x0[k]
                y1 = x1[k]
                y2 = x2[k]
                y3 = x3[k]
                s0 += y0 * wr
                s1 += y1 * wr
                s2 += y2 * wr
                s3 += y3 * wr
                t0 += y0 * wq
                t1 += y1 * wq
                t2 += y2 * wq
                t3 += y3 * wq
            out[i, j] = s0
            out[i + 1, j] = s1
            out[i + 2, j] = s2
            out[i + 3, j] = s3
            out[i, j + 1] = t0
            out[i + 1, j + 1] = t1
            out[i + 2, j + 1] = t2
            out[i + 3, j + 1] = t3
        for i in range(m4, m):
            x0 = a[i]
            s0 = t0 = np.float32(0.0)
            for k in range(depth):
                s0 += x0[k] * r[k]
                t0 += x0[k] * q[k]
            out[i, j] = s0
            out[i, j + 1] = t0
    for j in range(n2, col1):  # every column when fewer than four rows
        r = w_nk[j]
        for i in range(m):
            x0 = a[i]
            s0 = np.float32(0.0)
            for k in range(depth):
                s0 += x0[k] * r[k]
            out[i, j] = s0


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"reassoc", "contract"})
def dot_rows_gemm(a, w_nk, out, bias, has_bias, residual, res_mode, act, alpha, beta):
    """``out = epilogue(a @ w_nk.T)`` for a few rows: a [M, K], w_nk [N, K], out [M, N].

    The products (``_dot_columns``), then the epilogue, row by row, on the output still in L1.
    Serial: at batch 1 the layer is bound by the weight stream (1 MB for 512x512), which one core
    reads from its own cache when the weight fits there; no thread pool is involved.
    """
    _dot_columns(a, w_nk, out, 0, w_nk.shape[0])
    finish_rows(out, bias, has_bias, residual, res_mode, act, alpha, beta)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def dot_rows_split_gemm(a, w_nk, out, bias, has_bias, residual, res_mode, act, alpha, beta, parts):
    """:func:`dot_rows_gemm` with the output columns in ``parts`` contiguous blocks over numba's
    pool, each block's epilogue done by the thread that computed it.

    One block per thread, and numba's static schedule gives block ``t`` to thread ``t`` on every
    run: each core streams its own slice of the weight, which stays in that core's cache from run
    to run (the zoo MLP's 2.1 MB of weights exceed one core's 2 MB L2, half of them do not).
    """
    m = a.shape[0]
    n = w_nk.shape[0]
    for part in prange(parts):
        col0 = part * n // parts
        col1 = (part + 1) * n // parts
        _dot_columns(a, w_nk, out, col0, col1)
        for i in range(m):
            res = residual[i, col0:col1] if res_mode != RES_NONE else residual[0]
            row_bias = bias[col0:col1] if has_bias else bias
            finish_row(out[i, col0:col1], np.float32(0.0), row_bias, 2 if has_bias else 0, res, res_mode,
                       act, alpha, beta)  # fmt: skip


def _known_rows(node: Node, graph: Graph) -> int:
    """The product of A's known row dims (all dims but the last; the last for a transposed Gemm
    A): a symbolic dim is at least 1, so this is a lower bound on the rows."""
    a = graph.values.get(node.input(0))
    shape = a.shape if a is not None and a.shape else ()
    dims = shape[-1:] if node.op_type == "Gemm" and int(node.attr("transA", 0)) else shape[:-1]
    rows = 1
    for d in dims:
        if isinstance(d, int):
            rows *= d
    return rows


@register_tactic
class DotRowsGemm(Tactic):
    """Serial numba GEMM on an [N, K] weight with the epilogue fused in, for at most 16 rows
    (MatMul, FusedGemm, and ONNX Gemm with transA/alpha/beta when the passes did not run)."""

    name = "cpu.gemm.dot_rows"
    op_types = (*GEMM_OPS, "Gemm")
    priority = 25

    def supports(self, node: Node, graph: Graph) -> bool:
        a = graph.values.get(node.input(0))
        if not float32_io(node, graph) or _const_2d_weight(node, graph) is None or a is None or not a.shape:
            return False
        if node.op_type == "Gemm" and len(a.shape) != 2:
            return False
        # With a symbolic batch the tuner times it at the real shape, and more rows than 16 at
        # run time go to BLAS (see ``run``); a sequence of 128 tokens declines at any batch.
        return _known_rows(node, graph) <= DOT_ROWS_MAX

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        w = _const_2d_weight(node, graph)
        assert w is not None
        gemm = node.op_type == "Gemm"
        kn = w.T if node.op_type != "MatMul" and int(node.attr("transB", 0)) else w
        if gemm and float(node.attr("alpha", 1.0)) != 1.0:
            kn = kn * np.float32(node.attr("alpha", 1.0))
        # [N, K] (as a PyTorch Linear stores it: no copy at transB=1)
        prepared = Prepared(tensors={"weight": np.ascontiguousarray(kn.T, dtype=np.float32)})
        c = graph.const(node.input(2)) if node.op_type != "MatMul" else None
        if c is not None:
            if gemm:
                c = c * np.float32(node.attr("beta", 1.0))
            if c.size in (1, kn.shape[1]) and (c.ndim < 2 or c.shape[-2] == 1):  # per column
                prepared.tensors["bias"] = np.ascontiguousarray(
                    np.broadcast_to(np.asarray(c, np.float32).reshape(-1), (kn.shape[1],))
                )
            else:  # a Gemm's C of shape [M, N] or [M, 1]: added like a residual
                prepared.tensors["c"] = np.ascontiguousarray(c, dtype=np.float32)
        prepared.replaces = frozenset({1} | ({2} if c is not None else set()))
        return prepared

    def _operands(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared, out: np.ndarray, rows: int
    ) -> tuple[np.ndarray, bool, np.ndarray, int, int, float, float]:
        """(bias, has bias, residual rows, residual mode, activation, alpha, beta) of this run;
        the constant part cached in ``prepared.scratch``."""
        n = self._columns(prepared)
        if node.op_type != "Gemm":
            bias, has_bias, act, alpha, beta, mode = _epilogue_operands(node, inputs, prepared, n)
            residual = residual_rows(inputs[3] if mode != RES_NONE else None, out.shape, rows)
            return bias, has_bias, residual, mode, act, alpha, beta
        c = prepared.tensors.get("c")
        if "bias" in prepared.tensors:
            bias, has_bias = vector_or_dummy(prepared.tensors["bias"])
        elif c is None and len(inputs) > 2 and inputs[2] is not None:  # a runtime C
            c = inputs[2] * np.float32(node.attr("beta", 1.0))
            if c.size in (1, n) and (c.ndim < 2 or c.shape[-2] == 1):
                bias, has_bias = vector_or_dummy(np.broadcast_to(c.reshape(-1), (n,)))
                c = None
            else:
                bias, has_bias = vector_or_dummy(None)
        else:
            bias, has_bias = vector_or_dummy(None)
        if c is None:
            return bias, has_bias, residual_rows(None, out.shape, rows), RES_NONE, 0, 0.0, 0.0
        return bias, has_bias, residual_rows(c, out.shape, rows), RES_PRE, 0, 0.0, 0.0

    def _fixed_operands(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> tuple[np.ndarray, tuple[Any, ...]] | tuple[()]:
        """(weight, the kernel's epilogue arguments) when nothing but A changes from run to run
        (no residual, no runtime bias or C, no transposed A), else ``()``."""
        if node.op_type == "Gemm":
            runtime_c = bool(node.input(2)) and "bias" not in prepared.tensors and "c" not in prepared.tensors
            if int(node.attr("transA", 0)) or "c" in prepared.tensors or runtime_c:
                return ()
            bias, has_bias = vector_or_dummy(prepared.tensors.get("bias"))
            return prepared.tensors["weight"], (bias, has_bias, NO_MATRIX, RES_NONE, 0, 0.0, 0.0)
        if node.op_type == "FusedGemm" and (
            node.input(3) or (node.input(2) and "bias" not in prepared.tensors)
        ):
            return ()
        w = prepared.tensors["weight"]
        bias, has_bias, act, alpha, beta, mode = _epilogue_operands(
            node, inputs, prepared, self._columns(prepared)
        )
        return w, (bias, has_bias, NO_MATRIX, mode, act, alpha, beta)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        a, out = inputs[0], outputs[0]
        assert a is not None
        fixed = prepared.scratch.get("fixed")
        if fixed is None:
            fixed = prepared.scratch["fixed"] = self._fixed_operands(node, inputs, prepared)
        # The serving case: 2-D contiguous rows, every operand fixed. ~1 us of Python instead of
        # ~7 (at batch 1 the 256x10 classifier's product is ~1 us).
        if fixed and a.ndim == 2 and a.shape[0] <= DOT_ROWS_MAX and a.flags.c_contiguous:
            self._dot(a, fixed[0], out, fixed[1])()
            return
        if node.op_type == "Gemm" and int(node.attr("transA", 0)):
            a = a.T
        w = prepared.tensors["weight"]
        a2 = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, a.shape[-1])
        out2 = out.reshape(-1, self._columns(prepared))
        rows = out2.shape[0]
        bias, has_bias, residual, mode, act, alpha, beta = self._operands(node, inputs, prepared, out, rows)
        if rows <= DOT_ROWS_MAX:
            self._dot(a2, w, out2, (bias, has_bias, residual, mode, act, alpha, beta))()
        else:  # a batch past what it was tuned for
            self._many_rows(a2, w, out2, (bias, has_bias, residual, mode, act, alpha, beta))

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> Callable[[], None] | None:
        """``run``'s serving case on these arrays (2-D C-contiguous float32 rows, every other
        operand fixed), else None."""
        a, out = inputs[0], outputs[0]
        fixed = prepared.scratch.get("fixed")
        if fixed is None:
            fixed = prepared.scratch["fixed"] = self._fixed_operands(node, inputs, prepared)
        if not fixed or not dense(a) or a.ndim != 2 or a.shape[0] > DOT_ROWS_MAX:  # type: ignore[union-attr]
            return None
        return self._dot(a, fixed[0], out, fixed[1])  # type: ignore[arg-type]

    def _columns(self, prepared: Prepared) -> int:
        """N, the output columns (the prepared weight's rows here)."""
        return int(prepared.tensors["weight"].shape[0])

    def _many_rows(self, a: np.ndarray, w: np.ndarray, out: np.ndarray, epilogue: tuple[Any, ...]) -> None:
        """More rows than ``_dot`` is for: BLAS, then the epilogue."""
        with blas_threads_for(2 * out.size * a.shape[1]):
            np.matmul(a, w.T, out=out)
        _epilogue_rows(out, *epilogue)

    def _dot(
        self, a: np.ndarray, w: np.ndarray, out: np.ndarray, epilogue: tuple[Any, ...]
    ) -> Callable[[], None]:
        """The product and epilogue into ``out`` (2-D), on the calling thread, as a call."""
        return functools.partial(dot_rows_gemm, a, w, out, *epilogue)


# Fewest output columns per thread for the split form: below this a block's work (~a few us at
# K=256) is not worth the parallel launch.
DOT_ROWS_SPLIT_MIN_COLUMNS = 64


@register_tactic
class DotRowsSplitGemm(DotRowsGemm):
    """``dot_rows`` with the output columns split in one contiguous block per numba thread (see
    :func:`dot_rows_split_gemm`): each core keeps its slice of the weight in its own cache, which
    the serial form cannot once the weight outgrows one core's L2. Pool: numba's."""

    name = "cpu.gemm.dot_rows_split"
    # Above dot_rows: the heuristic choice (tuning level 0) runs under one pool, numba at every
    # core, where the split form ran the zoo MLP in half dot_rows' time; on one thread it is
    # dot_rows itself.
    priority = 26

    def supports(self, node: Node, graph: Graph) -> bool:
        if not super().supports(node, graph):
            return False
        w = _const_2d_weight(node, graph)
        transposed = node.op_type != "MatMul" and int(node.attr("transB", 0))
        columns = w.shape[0] if transposed else w.shape[1]  # type: ignore[union-attr]
        return columns >= 2 * DOT_ROWS_SPLIT_MIN_COLUMNS

    def _dot(
        self, a: np.ndarray, w: np.ndarray, out: np.ndarray, epilogue: tuple[Any, ...]
    ) -> Callable[[], None]:
        parts = min(numba_thread_count(), w.shape[0] // DOT_ROWS_SPLIT_MIN_COLUMNS)
        if parts <= 1:
            return functools.partial(dot_rows_gemm, a, w, out, *epilogue)
        return functools.partial(dot_rows_split_gemm, a, w, out, *epilogue, parts)  # type: ignore[call-arg]
