"""Elementwise tactics in numba, FP32: activations (Gelu included) and Add/Sub/Mul/Div.

* ``cpu.elementwise.activation``: Relu, LeakyRelu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish
  and Gelu (both forms) with the epilogue's activation code, over chunks of the flat tensor.
  Works in place (input 0 may share the output's buffer).
* ``cpu.elementwise.binary``: the broadcasting patterns real models have, each a unit-stride loop:
  equal shapes; one operand constant along the trailing axes (a per-channel scale or bias, e.g.
  squeeze-and-excitation's ``x * gate[N, C, 1, 1]``); one operand equal to the trailing axes (a
  bias over the last axis); a scalar. Any other broadcast goes to numpy's ufunc (still correct).

Pool: numba's (single-threaded for small tensors, see ``_threads``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    ACT_CLIP,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_LEAKY,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_TANH,
    activate_into,
    activate_row,
)
from farm.compiler.kernels.cpu._operands import RunsBound, dense, float32_io, memo
from farm.compiler.kernels.cpu._threads import bound_call
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

_CHUNK = 4096

ACTIVATION_OPS = {
    "Relu": ACT_RELU,
    "LeakyRelu": ACT_LEAKY,
    "Clip": ACT_CLIP,
    "Sigmoid": ACT_SIGMOID,
    "Tanh": ACT_TANH,
    "HardSigmoid": ACT_HARDSIGMOID,
    "HardSwish": ACT_HARDSWISH,
    "Gelu": ACT_GELU,
}

BINARY_OPS = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3}
_UFUNCS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def activation_flat(x, out, act, alpha, beta):
    """out = act(x) over flat float32 arrays, in chunks (``x`` may be ``out``): one vector pass
    (``activate_into``), LeakyRelu a copy then a pass in place."""
    n = x.shape[0]
    chunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(chunks):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        dst = out[lo:hi]
        src = x[lo:hi]
        if act != ACT_LEAKY:
            activate_into(src, dst, act, alpha, beta)
            continue
        for i in range(hi - lo):
            dst[i] = src[i]
        activate_row(dst, act, alpha, beta)


def _activation(node: Node, inputs: Sequence[np.ndarray | None]) -> tuple[int, float, float]:
    """(activation code, alpha, beta) of an activation node (a Clip's bounds from its inputs
    when given, else its attributes)."""
    act = ACTIVATION_OPS[node.op_type]
    alpha, beta = 0.0, 0.0
    if node.op_type == "LeakyRelu":
        alpha = float(node.attr("alpha", 0.01))
    elif node.op_type == "HardSigmoid":
        alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    elif node.op_type == "Clip":
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
        alpha = float(low.reshape(-1)[0]) if low is not None else float(node.attr("min", -np.inf))
        beta = float(high.reshape(-1)[0]) if high is not None else float(node.attr("max", np.inf))
    elif node.op_type == "Gelu" and node.attr("approximate", "none") == "tanh":
        act = ACT_GELU_TANH
    return act, alpha, beta


@register_tactic
class ActivationTactic(RunsBound, Tactic):
    """Unary activations and Gelu in numba, chunked over the flat tensor."""

    name = "cpu.elementwise.activation"
    op_types = tuple(ACTIVATION_OPS)
    priority = 20
    inplace = ((0, 0),)

    def supports(self, node: Node, graph: Graph) -> bool:
        return float32_io(node, graph)

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays. Without ``copies`` (the runtime's binding), None for a Clip
        whose bounds are inputs (read every run) or an input that is not C-contiguous float32."""
        x = inputs[0]
        if not copies and (
            any(v is not None for v in inputs[1:]) or not dense(x) or not outputs[0].flags.c_contiguous
        ):
            return None
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        act, alpha, beta = _activation(node, inputs)
        return bound_call(activation_flat, (flat, outputs[0].reshape(-1), act, alpha, beta), flat.size)


@njit(error_model="numpy", cache=True, nogil=True)
def _combine_row(a_row, b_row, b_scalar, use_scalar, op, reverse, dst):
    """dst = a_row (op) b, with b a row or a scalar; ``reverse`` swaps the operands of Sub/Div."""
    n = dst.shape[0]
    if use_scalar:
        if op == 0:
            for i in range(n):
                dst[i] = a_row[i] + b_scalar
        elif op == 2:
            for i in range(n):
                dst[i] = a_row[i] * b_scalar
        elif op == 1:
            if reverse:
                for i in range(n):
                    dst[i] = b_scalar - a_row[i]
            else:
                for i in range(n):
                    dst[i] = a_row[i] - b_scalar
        elif reverse:
            for i in range(n):
                dst[i] = b_scalar / a_row[i]
        else:
            for i in range(n):
                dst[i] = a_row[i] / b_scalar
    else:
        if op == 0:
            for i in range(n):
                dst[i] = a_row[i] + b_row[i]
        elif op == 2:
            for i in range(n):
                dst[i] = a_row[i] * b_row[i]
        elif op == 1:
            if reverse:
                for i in range(n):
                    dst[i] = b_row[i] - a_row[i]
            else:
                for i in range(n):
                    dst[i] = a_row[i] - b_row[i]
        elif reverse:
            for i in range(n):
                dst[i] = b_row[i] / a_row[i]
        else:
            for i in range(n):
                dst[i] = a_row[i] / b_row[i]


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def binary_rows(a, b, pattern, op, reverse, out):
    """out[r] = a[r] (op) b' over rows of a/out [R, L].

    ``pattern``: 0 b is [R, L] (same shape), 1 b is [R] (one value per row), 2 b is [L] (the
    same row for every row).
    """
    rows = a.shape[0]
    for r in prange(rows):
        if pattern == 0:
            _combine_row(a[r], b[r], np.float32(0.0), False, op, reverse, out[r])
        elif pattern == 1:
            _combine_row(a[r], b[0], b[0, r], True, op, reverse, out[r])
        else:
            _combine_row(a[r], b[0], np.float32(0.0), False, op, reverse, out[r])


def _broadcast_plan(big: tuple[int, ...], small: tuple[int, ...]) -> tuple[int, int, int] | None:
    """How ``small`` broadcasts against ``big`` (the output's shape) as rows: (pattern, R, L).

    Returns None when it is none of the three patterns ``binary_rows`` implements.
    """
    total = int(np.prod(big)) if big else 1
    small = (1,) * (len(big) - len(small)) + tuple(small)
    if len(small) > len(big):
        return None
    flat_length = _CHUNK if total % _CHUNK == 0 else (big[-1] if big else 1)
    if small == big:
        return 0, total // max(flat_length, 1), flat_length
    size = int(np.prod(small)) if small else 1
    if size == 1:  # a scalar: one value for every row
        return 1, total // max(flat_length, 1), flat_length
    # Trailing ones in small, leading dims equal: one value per row.
    k = len(big)
    while k > 0 and small[k - 1] == 1:
        k -= 1
    if small[:k] == big[:k]:
        rows = int(np.prod(big[:k]))
        return 1, rows, total // rows
    # Leading ones in small, trailing dims equal: the same row for every row.
    k = 0
    while k < len(big) and small[k] == 1:
        k += 1
    if small[k:] == big[k:]:
        length = int(np.prod(big[k:]))
        return 2, total // length, length
    return None


@register_tactic
class BinaryTactic(RunsBound, Tactic):
    """Add/Sub/Mul/Div with the common broadcasts as unit-stride numba loops; numpy otherwise."""

    name = "cpu.elementwise.binary"
    op_types = tuple(BINARY_OPS)
    priority = 15
    # No ``inplace``: an output aliasing an input makes LLVM's overlap check fall back to scalar code.

    def supports(self, node: Node, graph: Graph) -> bool:
        return len([i for i in node.inputs if i]) == 2 and float32_io(node, graph)

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The row kernel on these arrays, or numpy's general broadcast. Without ``copies`` (the
        runtime's binding), None when an input would be copied or expanded from a value read at
        binding (a non-contiguous input, a scalar repeated per row), or for numpy's broadcast."""
        first, second = inputs[0], inputs[1]
        assert first is not None and second is not None
        out = outputs[0]
        if not copies and (not dense(first) or not dense(second) or not out.flags.c_contiguous):
            return None
        a, b = (np.ascontiguousarray(v, dtype=np.float32) for v in (first, second))
        reverse = a.shape != out.shape  # the big operand goes first
        if reverse:
            a, b = b, a
        plan = (
            memo(prepared, ("plan", out.shape, b.shape), lambda: _broadcast_plan(out.shape, b.shape))
            if a.shape == out.shape and out.flags.c_contiguous
            else None
        )
        if plan is None:
            if not copies:
                return None
            ufunc = _UFUNCS[node.op_type]
            return functools.partial(ufunc, first, second, out=out)
        pattern, rows, length = plan
        b2 = b.reshape(rows, length) if pattern == 0 else b.reshape(1, -1)
        if pattern == 1 and b2.shape[1] != rows:
            if not copies:
                return None
            b2 = np.full((1, rows), b.reshape(-1)[0], np.float32)
        args = (
            a.reshape(rows, length),
            b2,
            pattern,
            BINARY_OPS[node.op_type],
            reverse,
            out.reshape(rows, length),
        )
        return bound_call(binary_rows, args, out.size)
