"""Gather/scatter and selection ops: Gather, GatherElements, GatherND, ScatterND,
ScatterElements, OneHot, NonZero, Compress, TopK, Unique, ReverseSequence."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def _wrap(indices: np.ndarray, dim: int) -> np.ndarray:
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise IndexError(f"index out of range for a dimension of size {dim}")
    return np.where(indices < 0, indices + dim, indices)


@op("Gather")
def gather(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, indices = inputs[0], inputs[1]
    axis = int(node.attr("axis", 0)) % x.ndim
    return np.take(x, _wrap(indices, x.shape[axis]), axis=axis)


@op("GatherElements")
def gather_elements(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, indices = inputs[0], inputs[1]
    axis = int(node.attr("axis", 0)) % x.ndim
    return np.take_along_axis(x, _wrap(indices, x.shape[axis]), axis=axis)


@op("GatherND")
def gather_nd(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, indices = inputs[0], inputs[1].astype(np.int64)
    batch_dims = int(node.attr("batch_dims", 0))
    batch_shape = x.shape[:batch_dims]
    batch = int(np.prod(batch_shape))
    depth = indices.shape[-1]
    xb = x.reshape(batch, *x.shape[batch_dims:])
    ib = indices.reshape(batch, -1, depth)
    results = []
    for b in range(batch):
        idx = ib[b]
        idx = np.where(idx < 0, idx + np.array(xb.shape[1 : 1 + depth]), idx)
        results.append(xb[b][tuple(idx.T)])
    stacked = np.stack(results) if results else np.zeros((0,), x.dtype)
    return stacked.reshape(*indices.shape[:-1], *x.shape[batch_dims + depth :])


_REDUCERS = {
    "add": np.add,
    "mul": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter(y: np.ndarray, key: tuple[np.ndarray, ...], updates: np.ndarray, reduction: str) -> np.ndarray:
    """y[key] = updates, or combined with ``reduction`` (repeated indices accumulate in order)."""
    if reduction == "none":
        y[key] = updates
    else:
        _REDUCERS[reduction].at(y, key, updates)
    return y


@op("ScatterND")
def scatter_nd(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, indices, updates = inputs[0], inputs[1].astype(np.int64), inputs[2]
    depth = indices.shape[-1]
    flat = indices.reshape(-1, depth)
    key = tuple(_wrap(flat[:, axis], x.shape[axis]) for axis in range(depth))
    flat_updates = updates.reshape(flat.shape[0], *x.shape[depth:])
    return _scatter(x.copy(), key, flat_updates, node.attr("reduction", "none"))


@op("ScatterElements")
def scatter_elements(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, indices, updates = inputs[0], inputs[1], inputs[2]
    axis = int(node.attr("axis", 0)) % x.ndim
    key = list(np.indices(indices.shape, sparse=True))
    key[axis] = _wrap(indices, x.shape[axis])
    full = tuple(np.broadcast_to(k, indices.shape) for k in key)
    return _scatter(x.copy(), full, updates, node.attr("reduction", "none"))


@op("TensorScatter")
def tensor_scatter(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """TensorScatter-24: write ``update`` into a copy of the cache along ``axis`` from each batch
    row's write index (0 when not given); ``mode="circular"`` wraps the index around."""
    past, update = inputs[0], inputs[1]
    indices = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axis = int(node.attr("axis", -2)) % past.ndim
    if axis == 0:
        raise ValueError("TensorScatter: axis cannot be the batch axis")
    circular = node.attr("mode", "linear") == "circular"
    size, length = past.shape[axis], update.shape[axis]
    present = past.copy()
    for b in range(past.shape[0]):
        start = int(indices.reshape(-1)[b]) if indices is not None else 0
        where = np.arange(start, start + length)
        if circular:
            where %= size
        elif length and (start < 0 or where[-1] >= size):
            raise ValueError(f"TensorScatter: writing {length} entries from index {start} overruns the cache ({size})")
        target = np.moveaxis(present[b], axis - 1, 0)
        target[where] = np.moveaxis(update[b], axis - 1, 0)
    return present


@op("OneHot")
def one_hot(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    indices, depth_in, values = inputs[0], inputs[1], inputs[2]
    depth = int(np.asarray(depth_in).reshape(-1)[0])
    axis = int(node.attr("axis", -1))
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)
    rank = idx.ndim + 1
    axis = axis % rank
    classes = np.arange(depth).reshape([depth if i == axis else 1 for i in range(rank)])
    hot = np.expand_dims(idx, axis) == classes
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return np.where(hot, on, off).astype(values.dtype)


@op("NonZero")
def non_zero(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return np.array(np.nonzero(x if x.ndim else x.reshape(1)), dtype=np.int64).reshape(max(x.ndim, 1), -1)


@op("Compress")
def compress(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, condition = inputs[0], inputs[1].astype(bool)
    axis = node.attr("axis", None)
    return np.compress(condition, x, axis=None if axis is None else int(axis))


@op("TopK")
def top_k(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    x = inputs[0]
    k = int(np.asarray(inputs[1]).reshape(-1)[0])
    axis = int(node.attr("axis", -1)) % x.ndim
    largest = bool(node.attr("largest", 1))
    # Stable sort on the key keeps equal values in index order, as ONNX requires.
    key = -x if largest and not np.issubdtype(x.dtype, np.unsignedinteger) else x
    if largest and np.issubdtype(x.dtype, np.unsignedinteger):
        key = np.iinfo(x.dtype).max - x
    order = np.argsort(key, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    values = np.take_along_axis(x, indices, axis=axis)
    return [values, indices.astype(np.int64)]


@op("Unique")
def unique(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    """Unique values (sorted, or in order of first occurrence), first indices, inverse, counts."""
    x = inputs[0]
    axis = node.attr("axis", None)
    values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                               axis=None if axis is None else int(axis))
    inverse = inverse.reshape(-1)
    if not node.attr("sorted", 1):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        values = np.take(values, order, axis=0 if axis is None else int(axis))
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return [values, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)]


@op("ReverseSequence")
def reverse_sequence(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, lengths = inputs[0], inputs[1]
    batch_axis = int(node.attr("batch_axis", 1))
    time_axis = int(node.attr("time_axis", 0))
    y = x.copy()
    for b, length in enumerate(lengths.astype(np.int64)):
        source = [slice(None)] * x.ndim
        source[batch_axis] = slice(b, b + 1)
        source[time_axis] = slice(0, int(length))
        y[tuple(source)] = np.flip(x[tuple(source)], axis=time_axis)
    return y
