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

Pools: the BLAS tactics use BLAS's pool for the product and numba's for the epilogue, one after
the other; ``small_rows`` uses numba's only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    epilogue_params,
    epilogue_vector_rows,
    finish_row,
    residual_rows,
    vector_or_dummy,
)
from farm.compiler.kernels.cpu._operands import float32_io
from farm.compiler.kernels.cpu._rowgemm import add_row_products
from farm.compiler.kernels.cpu._threads import SingleThreadBlas, blas_threads_for, threads_for
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

GEMM_OPS = ("FusedGemm", "MatMul")
SMALL_ROWS_MAX = 32
_COLUMN_BLOCK = 256


def _const_2d_weight(node: Node, graph: Graph) -> np.ndarray | None:
    w = graph.const(node.input(1))
    return w if w is not None and w.ndim == 2 else None


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
    bias, has_bias = _bias(node, inputs, prepared, n)
    act, alpha, beta, mode = epilogue_params(node)
    if not has_bias and act == 0 and mode == RES_NONE:
        return
    rows = out.reshape(-1, n)
    residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, rows.shape[0])
    with threads_for(rows.size):
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
