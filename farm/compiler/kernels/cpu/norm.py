"""Normalization tactics: LayerNorm (fused op and ONNX LayerNormalization) and Softmax, FP32.

* ``cpu.norm.layernorm``: one row per iteration, two passes over the row while it is in L1
  (mean, then variance of the centred values: no catastrophic cancellation), then the affine
  output. Sums use reassociation (fastmath ``reassoc``) so they vectorize; the change in rounding
  is far below FP32 tolerance.
* ``cpu.norm.softmax``: any axis. The last axis runs row by row (with AVX-512 in explicit
  16-lane vectors, ``vexp16``: 2.4-2.8x ONNX Runtime's time before, on rows of 128); another
  axis runs on an [outer, L, inner] view with the reduction vectorized across ``inner``.
  Opset < 13 Softmax
  (flatten from ``axis`` into rows) is the row case with longer rows.

Pool: numba's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._operands import RunsBound, dense, float32_io, memo
from farm.compiler.kernels.cpu._simd16 import (
    AVX512,
    LANES,
    max_into,
    vadd16,
    vexp16,
    vhmax16,
    vhsum16,
    vload16,
    vload16_masked,
    vmax16,
    vmul16,
    vsplat16,
    vstore16,
    vstore16_masked,
    vzero16,
)
from farm.compiler.kernels.cpu._threads import bound_call
from farm.compiler.kernels.cpu._vecmath import (
    ROW_MAX_LANES,
    SOFTMAX_FLUSH,
    exp_row,
    exp_shift_sum_row,
    row_max,
)
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# numba caches the kernels below by this file's *content* (a hash of it), not by the
# helpers they inline: after changing a _vecmath row function, change this file too (or clear
# __pycache__), or the cached kernels keep the old helper (seen with exp_shift_sum_row).
_SUM_FLAGS = {"reassoc", "contract"}


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath=_SUM_FLAGS)
def layer_norm_rows(x, scale, bias, has_bias, epsilon, out):
    """out[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias for each row r of x [R, L]."""
    rows, length = x.shape
    for r in prange(rows):
        src = x[r]
        dst = out[r]
        total = np.float32(0.0)
        for j in range(length):
            total += src[j]
        mean = total / np.float32(length)
        squares = np.float32(0.0)
        for j in range(length):
            c = src[j] - mean
            squares += c * c
        inv = np.float32(1.0) / np.float32(math.sqrt(squares / np.float32(length) + epsilon))
        if has_bias:
            for j in range(length):
                dst[j] = (src[j] - mean) * inv * scale[j] + bias[j]
        else:
            for j in range(length):
                dst[j] = (src[j] - mean) * inv * scale[j]


@register_tactic
class LayerNormRows(RunsBound, Tactic):
    """LayerNorm over the trailing axes, one row per iteration, row kept in L1."""

    name = "cpu.norm.layernorm"
    op_types = ("LayerNorm", "LayerNormalization")
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        x = graph.values.get(node.input(0))
        return (
            len([o for o in node.outputs if o]) == 1
            and float32_io(node, graph)
            and x is not None
            and x.rank is not None
            and int(node.attr("stash_type", 1)) == 1
        )

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Constant scale and bias, broadcast to the normalized shape once (at run time that
        took ~12 us of numpy per call, more than a 128x256 LayerNorm's 7 us of work)."""
        x = graph.values.get(node.input(0))
        scale = graph.const(node.input(1))
        has_bias = len(node.inputs) > 2 and bool(node.input(2))
        bias = graph.const(node.input(2)) if has_bias else None
        if x is None or x.shape is None or scale is None or (has_bias and bias is None):
            return Prepared()
        axis = int(node.attr("axis", -1)) % len(x.shape)
        if not all(isinstance(d, int) for d in x.shape[axis:]):
            return Prepared()
        flat_scale, flat_bias = _flat_params(scale, bias, tuple(int(d) for d in x.shape[axis:]))
        tensors = {"scale": flat_scale} | ({"bias": flat_bias} if has_bias else {})
        return Prepared(tensors=tensors, replaces=frozenset({1, 2} if has_bias else {1}))

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays. Without ``copies`` (the runtime's binding), None for a scale
        or bias that is a run-time input (broadcast every run) or an input that is not
        C-contiguous float32."""
        x = inputs[0]
        assert x is not None
        if not copies and (
            "scale" not in prepared.tensors or not dense(x) or not outputs[0].flags.c_contiguous
        ):
            return None
        if "scale" in prepared.tensors:
            scale = prepared.tensors["scale"]
            bias = prepared.tensors.get("bias", scale)
        else:  # run-time scale or bias
            axis = int(node.attr("axis", -1)) % x.ndim
            scale, bias = _flat_params(inputs[1], inputs[2] if len(inputs) > 2 else None, x.shape[axis:])  # type: ignore[arg-type]
        has_bias = len(inputs) > 2 and bool(node.input(2))
        x = np.ascontiguousarray(x, dtype=np.float32)
        epsilon = memo(prepared, "epsilon", lambda: np.float32(node.attr("epsilon", 1e-5)))
        length = scale.shape[0]
        args = (x.reshape(-1, length), scale, bias, has_bias, epsilon, outputs[0].reshape(-1, length))
        return bound_call(layer_norm_rows, args, x.size)


def _flat_params(
    scale: np.ndarray, bias: np.ndarray | None, normalized: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and bias broadcast to the normalized shape and flattened, float32 (the scale stands
    in for a missing bias: the kernel ignores it then)."""
    flat_scale = np.ascontiguousarray(np.broadcast_to(scale, normalized), np.float32).reshape(-1)
    if bias is None:
        return flat_scale, flat_scale
    return flat_scale, np.ascontiguousarray(np.broadcast_to(bias, normalized), np.float32).reshape(-1)


_ROWS_PER_TASK = 8


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath=_SUM_FLAGS)
def softmax_rows(x, out):
    """Softmax along the last axis of x [R, L], 8 rows per task sharing one exp workspace."""
    rows, length = x.shape
    tasks = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        poly = np.empty(length, np.float32)
        bits = np.empty(length, np.int32)
        lanes = np.empty(ROW_MAX_LANES, np.float32)
        for r in range(t * _ROWS_PER_TASK, min(rows, (t + 1) * _ROWS_PER_TASK)):
            dst = out[r]
            total = exp_shift_sum_row(x[r], dst, row_max(x[r], lanes), poly, bits)
            inv = np.float32(1.0) / total
            for j in range(length):
                dst[j] *= inv


# Lanes 0..15: 0, then -inf: ``vload16(_TAIL_PENALTY, 16 - n)`` is 0 in the first n lanes and
# -inf in the rest, added to a row's masked tail so that its padding lanes give exp = 0.
_TAIL_PENALTY = np.array([0.0] * LANES + [-np.inf] * LANES, np.float32)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def softmax_rows_vector(x, out):
    """Softmax along the last axis of x [R, L] (C-contiguous, as ``out``), 16 lanes at a time:
    row maximum, ``vexp16`` of the shifted row with its sum, then the scale, each pass over the
    row in registers; a row's last ``L % 16`` values through masked loads and stores, their
    padding lanes pushed to -inf. Two rows go through each pass together
    (:func:`_softmax_rows_at`). AVX-512 hosts (elsewhere the masked moves are slow:
    :func:`softmax_rows`). 8 rows per task."""
    rows, length = x.shape
    flat_x = x.reshape(-1)
    flat_out = out.reshape(-1)
    full = length - length % LANES
    tail = length - full
    penalty = vload16(_TAIL_PENALTY, LANES - tail)
    tasks = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        r1 = min(rows, (t + 1) * _ROWS_PER_TASK)
        for r in range(t * _ROWS_PER_TASK, r1, 2):
            # an odd last row goes through as both rows (its values computed and written twice:
            # branching on a second row inside the passes cost more than that row)
            b = min(r + 1, r1 - 1)
            _softmax_rows_at(flat_x, flat_out, r * length, b * length, full, tail, penalty)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def _softmax_rows_at(flat_x, flat_out, a, b, full, tail, penalty):
    """The softmax of the rows at flat offsets ``a`` and ``b``, their passes interleaved: a
    128-long row (BERT's attention scores) is 8 vectors a pass, too few to hide the latency of
    one row's max and sum chains and reductions (4096 x 128: 87 us against ONNX Runtime's 61
    one row at a time, Zen 5)."""
    top_a = vsplat16(-np.inf)
    top_b = vsplat16(-np.inf)
    for j in range(0, full, LANES):
        top_a = vmax16(top_a, vload16(flat_x, a + j))
        top_b = vmax16(top_b, vload16(flat_x, b + j))
    if tail:
        top_a = vmax16(top_a, vadd16(vload16_masked(flat_x, a + full, tail), penalty))
        top_b = vmax16(top_b, vadd16(vload16_masked(flat_x, b + full, tail), penalty))
    shift_a = vsplat16(-vhmax16(top_a))
    shift_b = vsplat16(-vhmax16(top_b))
    total_a = vzero16()
    total_b = vzero16()
    # each step loads both rows before it stores either: ``b`` may be ``a``
    for j in range(0, full, LANES):
        e = vexp16(vadd16(vload16(flat_x, a + j), shift_a), SOFTMAX_FLUSH)
        f = vexp16(vadd16(vload16(flat_x, b + j), shift_b), SOFTMAX_FLUSH)
        vstore16(flat_out, a + j, e)
        vstore16(flat_out, b + j, f)
        total_a = vadd16(total_a, e)
        total_b = vadd16(total_b, f)
    if tail:
        e = vexp16(vadd16(vadd16(vload16_masked(flat_x, a + full, tail), penalty), shift_a), SOFTMAX_FLUSH)
        f = vexp16(vadd16(vadd16(vload16_masked(flat_x, b + full, tail), penalty), shift_b), SOFTMAX_FLUSH)
        vstore16_masked(flat_out, a + full, e, tail)
        vstore16_masked(flat_out, b + full, f, tail)
        total_a = vadd16(total_a, e)
        total_b = vadd16(total_b, f)
    inv_a = vsplat16(np.float32(1.0) / vhsum16(total_a))
    inv_b = vsplat16(np.float32(1.0) / vhsum16(total_b))
    for j in range(0, full, LANES):
        e = vmul16(vload16(flat_out, a + j), inv_a)
        f = vmul16(vload16(flat_out, b + j), inv_b)
        vstore16(flat_out, a + j, e)
        vstore16(flat_out, b + j, f)
    if tail:
        e = vmul16(vload16_masked(flat_out, a + full, tail), inv_a)
        f = vmul16(vload16_masked(flat_out, b + full, tail), inv_b)
        vstore16_masked(flat_out, a + full, e, tail)
        vstore16_masked(flat_out, b + full, f, tail)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath=_SUM_FLAGS)
def softmax_middle(x, out):
    """Softmax along axis 1 of x [outer, L, inner], vectorized across ``inner``."""
    outer, length, inner = x.shape
    for o in prange(outer):
        top = x[o, 0].copy()
        for j in range(1, length):
            max_into(top, x[o, j])
        total = np.zeros(inner, np.float32)
        shifted = np.empty(inner, np.float32)
        for j in range(length):
            row = x[o, j]
            dst = out[o, j]
            for i in range(inner):
                shifted[i] = row[i] - top[i]
            exp_row(shifted, dst)
            for i in range(inner):
                total[i] += dst[i]
        for i in range(inner):
            total[i] = np.float32(1.0) / total[i]
        for j in range(length):
            dst = out[o, j]
            for i in range(inner):
                dst[i] *= total[i]


@register_tactic
class SoftmaxAnyAxis(RunsBound, Tactic):
    """Softmax along any axis (opset-13 semantics; opset < 13 flattens from ``axis``)."""

    name = "cpu.norm.softmax"
    op_types = ("Softmax",)
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        x = graph.values.get(node.input(0))
        return float32_io(node, graph) and x is not None and x.rank is not None and x.rank >= 1

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        opset = graph.opsets.get("", graph.opset)
        default_axis = -1 if opset >= 13 else 1
        return Prepared(params={"coerce_2d": opset < 13, "axis": int(node.attr("axis", default_axis))})

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The row kernel (softmax over the last axis, or Softmax-11's 2-D coercion) or the
        middle-axis kernel on these arrays; without ``copies``, None for an input that is not
        C-contiguous float32 or an output that is not C-contiguous."""
        x = inputs[0]
        assert x is not None
        out = outputs[0]
        if not copies and (not dense(x) or not out.flags.c_contiguous):
            return None
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not out.flags.c_contiguous:  # computed into a buffer, then copied out
            dense_out = np.empty(out.shape, np.float32)
            inner_call = self.bind(node, [x], [dense_out], prepared, copies)
            assert inner_call is not None
            target = out

            def copied_out() -> None:
                inner_call()
                np.copyto(target, dense_out)

            return copied_out
        axis = int(prepared.params.get("axis", node.attr("axis", -1))) % max(x.ndim, 1)
        outer = int(np.prod(x.shape[:axis]))
        if prepared.params.get("coerce_2d") or axis == x.ndim - 1:
            length = x.size // max(outer, 1)
            rows = softmax_rows_vector if AVX512 else softmax_rows
            return bound_call(rows, (x.reshape(outer, length), out.reshape(outer, length)), x.size)
        length = x.shape[axis]
        inner = x.size // (outer * length)
        args = (x.reshape(outer, length, inner), out.reshape(outer, length, inner))
        return bound_call(softmax_middle, args, x.size)
