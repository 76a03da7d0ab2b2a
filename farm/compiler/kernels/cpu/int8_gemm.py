"""INT8 GEMM tactic (FusedGemm / MatMul with a constant 2-D weight).

``cpu.int8.gemm``: the FP32 input rows are quantized per tensor (scale and zero point from the
node's INT8 attributes, see ``farm.compiler.precision.quantize``), multiplied by the int8 weight
(symmetric per output column, packed [N, K] so both operands run along K) with int32
accumulation in numba, and dequantized in the epilogue:
``y = (acc - zp * colsum(w_q)) * s_x * s_w[n] + bias[n]``, then activation and residual in the
same pass over the output row. The input type is int8 or uint8 (calibrated activations are uint8,
with zero point 0 for non-negative tensors); a calibrated bias correction is folded into ``bias``.

An int8 dot product is widened to int32 lanes (``vpdpwssd`` where the host has VNNI; numba/LLVM
does not emit the u8 x s8 ``vpdpbusd`` from loops), so it does not beat OpenBLAS's FP32 GEMM: it
is the INT8 tactic of CPUs without AVX-512 VNNI. Where VNNI exists, ``int8_vnni`` calls
``vpdpbusd`` as an intrinsic on register tiles, 2.4-15x faster (M = 1 .. 3136). The tuner picks by timing. Pool:
numba's only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import RES_NONE, epilogue_params, finish_row, residual_rows
from farm.compiler.kernels.cpu._threads import threads_for
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.precision.quantize import (
    activation_quant,
    is_quantizable,
    layer_bias_correction,
    layer_weight_quant,
)

_ROW_BLOCK = 4


@njit(parallel=True, cache=True, nogil=True)
def quantize_rows(x, out, inv_scale, zero_point, qmin, qmax):
    """``out = clip(rint(x * inv_scale) + zero_point, qmin, qmax)`` row by row ([M, K])."""
    for r in prange(x.shape[0]):
        src = x[r]
        dst = out[r]
        for k in range(src.shape[0]):
            q = np.rint(src[k] * inv_scale) + zero_point
            dst[k] = min(max(q, qmin), qmax)


# The sums are cast back to int32 at every step: numba types int32 * int32 as int64, and an
# int64 accumulation vectorizes into 4-lane vpmuldq/vpaddq. Kept in int32, LLVM emits 8-lane
# int32 code, with VNNI ``vpdpwssd`` on hosts that have it: 2.1x faster measured on
# _dot4 (K=576, avx512_vnni host, one process, interleaved). Exact as long as
# K * 255 * 127 < 2**31 (``MAX_K``; the tactics decline longer rows).
MAX_K = (2**31 - 1) // (255 * 127)


@njit(cache=True, nogil=True)
def _dot4(a, w, n):
    """int32 dot products of row ``a`` with weight rows n..n+3."""
    w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
    s0 = np.int32(0)
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    for k in range(a.shape[0]):
        av = np.int32(a[k])
        s0 = np.int32(s0 + av * np.int32(w0[k]))
        s1 = np.int32(s1 + av * np.int32(w1[k]))
        s2 = np.int32(s2 + av * np.int32(w2[k]))
        s3 = np.int32(s3 + av * np.int32(w3[k]))
    return s0, s1, s2, s3


@njit(cache=True, nogil=True)
def _dot1(a, wrow):
    s = np.int32(0)
    for k in range(a.shape[0]):
        s = np.int32(s + np.int32(a[k]) * np.int32(wrow[k]))
    return s


@njit(cache=True, nogil=True)
def gemm_row_dequant(a, w, wsum, zero_point, col_scale, bias, has_bias, row):
    """``row[n] = (a . w[n] - zp * wsum[n]) * col_scale[n] (+ bias[n])`` for one quantized row."""
    n_count = w.shape[0]
    n = 0
    while n + 4 <= n_count:
        s0, s1, s2, s3 = _dot4(a, w, n)
        row[n] = np.float32(s0 - zero_point * wsum[n]) * col_scale[n]
        row[n + 1] = np.float32(s1 - zero_point * wsum[n + 1]) * col_scale[n + 1]
        row[n + 2] = np.float32(s2 - zero_point * wsum[n + 2]) * col_scale[n + 2]
        row[n + 3] = np.float32(s3 - zero_point * wsum[n + 3]) * col_scale[n + 3]
        n += 4
    while n < n_count:
        row[n] = np.float32(_dot1(a, w[n]) - zero_point * wsum[n]) * col_scale[n]
        n += 1
    if has_bias:
        for i in range(n_count):
            row[i] += bias[i]


@njit(parallel=True, cache=True, nogil=True)
def int8_gemm(a_q, w, wsum, zero_point, col_scale, bias, has_bias, residual, res_mode, act, alpha, beta, out):
    """``out [M, N] = epilogue(dequant(a_q [M, K] x w [N, K]^T))`` with int32 accumulation."""
    m_count = a_q.shape[0]
    for r in prange(m_count):
        row = out[r]
        gemm_row_dequant(a_q[r], w, wsum, zero_point, col_scale, bias, has_bias, row)
        res = residual[r] if res_mode != RES_NONE else residual[0]
        finish_row(row, np.float32(0.0), bias, 0, res, res_mode, act, alpha, beta)


def _output_channels(node: Node, graph: Graph) -> int:
    w = graph.const(node.input(1))
    assert w is not None
    return int(w.shape[0] if node.op_type == "FusedGemm" and int(node.attr("transB", 0)) else w.shape[1])


def _reduction_length(node: Node, graph: Graph) -> int:
    """K of the layer's int8 dot products (a conv's C/g * kh * kw)."""
    w = graph.const(node.input(1))
    assert w is not None
    if node.op_type in ("FusedConv", "Conv"):
        return int(np.prod(w.shape[1:]))
    return int(w.shape[1] if node.op_type == "FusedGemm" and int(node.attr("transB", 0)) else w.shape[0])


def pack_int8_weight(node: Node, graph: Graph) -> Prepared:
    """Quantize a layer's constant weight: int8 [N, K] (K contiguous), its int32 column sums,
    and ``col_scale = s_x * s_w`` per output channel (conv weights are flattened to [M, C*kh*kw])."""
    w = graph.const(node.input(1))
    assert w is not None
    quant = activation_quant(node)
    assert quant is not None
    q, scales = layer_weight_quant(node, w)
    if node.op_type in ("FusedConv", "Conv"):
        packed = q.reshape(q.shape[0], -1)
    elif node.op_type == "FusedGemm" and int(node.attr("transB", 0)):
        packed = q
    else:
        packed = q.T
    packed = np.ascontiguousarray(packed, dtype=np.int8)
    prepared = Prepared(
        tensors={
            "weight": packed,
            "weight_scale": scales.astype(np.float32),
            "weight_sum": packed.astype(np.int32).sum(axis=1).astype(np.int32),
        },
        params={
            "input_scale": quant.scale,
            "input_zero_point": quant.zero_point,
            "input_dtype": quant.dtype,
            "weight_shape": [int(d) for d in w.shape],
        },
    )
    b = graph.const(node.input(2)) if node.op_type != "MatMul" else None
    correction = layer_bias_correction(node)
    if correction is not None:  # bias correction (calibration): part of the bias
        b = correction if b is None else np.asarray(b, np.float32).reshape(-1) + correction
    if b is not None:
        prepared.tensors["bias"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    prepared.replaces = frozenset(i for i, k in ((1, "weight"), (2, "bias")) if k in prepared.tensors)
    return prepared


def int8_operands(prepared: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """(weight, weight sums, col_scale, bias, has_bias), built once per engine and cached."""
    cached = prepared.scratch.get("int8_operands")
    if cached is None:
        scale = np.float32(prepared.params["input_scale"])
        col_scale = (np.asarray(prepared.tensors["weight_scale"], np.float32) * scale).astype(np.float32)
        bias = prepared.tensors.get("bias")
        cached = (
            np.ascontiguousarray(prepared.tensors["weight"], dtype=np.int8),
            np.ascontiguousarray(prepared.tensors["weight_sum"], dtype=np.int32),
            col_scale,
            np.zeros(1, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32),
            bias is not None,
        )
        prepared.scratch["int8_operands"] = cached
    return cached


def quantize_input(x: np.ndarray, prepared: Prepared, key: str = "a_q") -> np.ndarray:
    """``x`` [M, K] quantized into a per-node scratch buffer of the input's integer type."""
    dtype = np.dtype(prepared.params["input_dtype"])
    buf = prepared.scratch.get(key)
    if buf is None or buf.shape != x.shape:
        buf = prepared.scratch[key] = np.empty(x.shape, dtype=dtype)
    info = np.iinfo(dtype)
    with threads_for(x.size):
        quantize_rows(
            np.ascontiguousarray(x, dtype=np.float32), buf, np.float32(1.0 / prepared.params["input_scale"]),
            np.float32(prepared.params["input_zero_point"]), np.float32(info.min), np.float32(info.max),
        )  # fmt: skip
    return buf


@register_tactic
class Int8Gemm(Tactic):
    """int8 x int8 -> int32 GEMM with quantize-on-load and a dequantizing fused epilogue."""

    name = "cpu.int8.gemm"
    op_types = ("FusedGemm", "MatMul")
    precisions = ("int8",)
    priority = -20

    def supports(self, node: Node, graph: Graph) -> bool:
        if activation_quant(node) is None or not is_quantizable(node, graph):
            return False
        out = graph.values.get(node.outputs[0])
        bias = graph.values.get(node.input(2)) if node.op_type == "FusedGemm" and node.input(2) else None
        if bias is not None and (bias.const is None or bias.const.size != _output_channels(node, graph)):
            return False  # a per-row or full-matrix C is not a per-column bias
        if _reduction_length(node, graph) > MAX_K:
            return False  # the int32 sums could overflow
        return out is None or out.dtype in (None, "float32")

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return pack_int8_weight(node, graph)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        x = inputs[0]
        assert x is not None
        out = outputs[0]
        k = x.shape[-1]
        a = x.reshape(-1, k)
        w, wsum, col_scale, bias, has_bias = int8_operands(prepared)
        a_q = quantize_input(a, prepared)
        act, alpha, beta, mode = epilogue_params(node)
        n = w.shape[0]
        rows = out.reshape(-1, n) if out.flags.c_contiguous else np.empty((a.shape[0], n), np.float32)
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, rows.shape[0])
        with threads_for(rows.size * k // 16):
            int8_gemm(
                a_q, w, wsum, np.int32(prepared.params["input_zero_point"]), col_scale, bias, has_bias,
                residual, mode, act, alpha, beta, rows,
            )  # fmt: skip
        if not out.flags.c_contiguous:
            out[...] = rows.reshape(out.shape)
