"""Reduce* ops (axes as input 1, canonical form), ArgMax/ArgMin, CumSum and CumProd."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def reduce_axes(node: Node, inputs: Inputs, rank: int) -> tuple[int, ...] | None:
    """The axes a Reduce* node reduces (input 1, or the legacy attribute); None = no-op."""
    axes_input = inputs[1] if len(inputs) > 1 else None
    axes = axes_input.tolist() if axes_input is not None else node.attr("axes", None)
    if axes is None or len(axes) == 0:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(rank))
    return tuple(sorted(int(a) % rank if rank else 0 for a in axes))


def _reduction(kind: str):
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        x = inputs[0]
        axes = reduce_axes(node, inputs, x.ndim)
        if axes is None:
            return x
        keep = bool(node.attr("keepdims", 1))
        return np.asarray(reduce_array(kind, x, axes, keep))

    return impl


def reduce_array(kind: str, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Apply one reduction kind over ``axes``; empty reductions give the identity element."""
    dtype = x.dtype
    is_float = dtype.kind == "f" or dtype.name == "bfloat16"
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "Sum":
            y = np.sum(x, axis=axes, keepdims=keepdims)
        elif kind == "Mean":
            if any(x.shape[a] == 0 for a in axes):  # NaN, without numpy's "Mean of empty slice"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    y = np.mean(x, axis=axes, keepdims=keepdims)
            else:
                y = np.mean(x, axis=axes, keepdims=keepdims)
        elif kind == "Max":
            low = -np.inf if is_float else (np.iinfo(dtype).min if dtype != np.bool_ else False)
            y = np.max(x, axis=axes, keepdims=keepdims, initial=low)
        elif kind == "Min":
            high = np.inf if is_float else (np.iinfo(dtype).max if dtype != np.bool_ else True)
            y = np.min(x, axis=axes, keepdims=keepdims, initial=high)
        elif kind == "Prod":
            y = np.prod(x, axis=axes, keepdims=keepdims)
        elif kind == "L1":
            y = np.sum(np.abs(x), axis=axes, keepdims=keepdims)
        elif kind == "L2":
            y = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=axes, keepdims=keepdims))
        elif kind == "LogSum":
            y = np.log(np.sum(x, axis=axes, keepdims=keepdims))
        elif kind == "LogSumExp":
            if x.size == 0:
                y = np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdims))
            else:
                peak = np.max(x, axis=axes, keepdims=True)
                peak = np.where(np.isfinite(peak), peak, 0)
                y = np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak
                if not keepdims:
                    y = np.squeeze(y, axis=axes)
        elif kind == "SumSquare":
            y = np.sum(x * x, axis=axes, keepdims=keepdims)
        else:
            raise ValueError(f"unknown reduction {kind}")
    return np.asarray(y).astype(dtype, copy=False)


for _kind in ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp", "SumSquare"):
    op(f"Reduce{_kind}")(_reduction(_kind))


def _arg(fn):
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        x = inputs[0]
        axis = int(node.attr("axis", 0))
        if node.attr("select_last_index", 0):
            flipped = np.flip(x, axis=axis)
            index = x.shape[axis] - 1 - fn(flipped, axis=axis)
        else:
            index = fn(x, axis=axis)
        if node.attr("keepdims", 1):
            index = np.expand_dims(index, axis)
        return np.asarray(index, dtype=np.int64)

    return impl


op("ArgMax")(_arg(np.argmax))
op("ArgMin")(_arg(np.argmin))


def _cumulative(accumulate: Any, identity: int) -> Any:
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        x = inputs[0]
        axis = int(np.asarray(inputs[1]).reshape(-1)[0])
        reverse = bool(node.attr("reverse", 0))
        exclusive = bool(node.attr("exclusive", 0))
        data = np.flip(x, axis) if reverse else x
        y = accumulate(data, axis=axis, dtype=x.dtype)
        if exclusive and x.shape[axis]:
            first = np.full_like(np.take(y, [0], axis=axis), identity)
            y = np.concatenate([first, np.delete(y, -1, axis=axis)], axis=axis)
        return np.flip(y, axis) if reverse else y

    return impl


op("CumSum")(_cumulative(np.cumsum, 0))
op("CumProd")(_cumulative(np.cumprod, 1))  # CumProd-26
