"""Shape, layout and data-movement ops: Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze,
Transpose, Concat, Split, Slice, Expand, Tile, Pad, CenterCropPad, ConstantOfShape, Range, EyeLike,
Trilu, DepthToSpace, SpaceToDepth."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.elementwise import target_dtype
from farm.compiler.reference.registry import Context, Inputs, op


def _int_list(x: np.ndarray | None) -> list[int] | None:
    return None if x is None else [int(v) for v in np.asarray(x).reshape(-1)]


def axes_of(node: Node, inputs: Inputs, index: int = 1, key: str = "axes") -> list[int] | None:
    """Axes from input ``index`` (canonical form) or, for hand-built nodes, the attribute."""
    if len(inputs) > index and inputs[index] is not None:
        return _int_list(inputs[index])
    value = node.attr(key, None)
    return None if value is None else [int(v) for v in value]


@op("Shape")
def shape(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    dims = np.array(inputs[0].shape, dtype=np.int64)
    rank = len(dims)
    start = int(node.attr("start", 0))
    end = node.attr("end", None)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    stop = rank if end is None else int(end)
    stop = min(max(stop + rank if stop < 0 else stop, 0), rank)
    return dims[start:stop]


@op("Size")
def size(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.array(inputs[0].size, dtype=np.int64)


def reshape_target(in_shape: tuple[int, ...], target: list[int], allowzero: bool) -> list[int]:
    """Resolve a Reshape target: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(in_shape))
        out[out.index(-1)] = total // known if known else 0
    return out


@op("Reshape")
def reshape(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    target = reshape_target(x.shape, _int_list(inputs[1]) or [], bool(node.attr("allowzero", 0)))
    return x.reshape(target)


@op("Flatten")
def flatten(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axis = int(node.attr("axis", 1))
    if axis < 0:
        axis += x.ndim
    outer = int(np.prod(x.shape[:axis]))
    return x.reshape(outer, int(np.prod(x.shape[axis:])))


@op("Squeeze")
def squeeze(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axes = axes_of(node, inputs)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


@op("Unsqueeze")
def unsqueeze(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axes = axes_of(node, inputs) or []
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


@op("Transpose")
def transpose(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    perm = node.attr("perm", None)
    return np.transpose(inputs[0], perm)


@op("Concat")
def concat(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    arrays = [a for a in inputs if a is not None]
    return np.concatenate(arrays, axis=int(node.attr("axis")))


def split_sizes(length: int, node: Node, inputs: Inputs, count: int) -> list[int]:
    """Chunk sizes of a Split: input 1 when given, else ``num_outputs`` ceil-sized chunks."""
    sizes = axes_of(node, inputs, 1, "split")
    if sizes:
        return sizes
    parts = int(node.attr("num_outputs", count))
    chunk = -(-length // parts)
    return [min(chunk, max(0, length - chunk * i)) for i in range(parts)]


@op("Split")
def split(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    x = inputs[0]
    axis = int(node.attr("axis", 0)) % x.ndim
    sizes = split_sizes(x.shape[axis], node, inputs, len(node.outputs))
    offsets = np.cumsum(sizes)[:-1]
    return list(np.split(x, offsets, axis=axis))


def slice_bounds(dim: int, start: int, end: int, step: int) -> slice:
    """A python slice with ONNX Slice clamping for one axis."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        return slice(start, end, step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


def slice_index(shape: tuple[int, ...], inputs: Inputs) -> tuple[slice, ...]:
    """The numpy index of a Slice of an array of ``shape`` by its ``starts, ends[, axes[, steps]]``
    inputs (``inputs[1:]``; the data input is not read)."""
    starts = _int_list(inputs[1]) or []
    ends = _int_list(inputs[2]) or []
    axes = _int_list(inputs[3] if len(inputs) > 3 else None) or list(range(len(starts)))
    steps = _int_list(inputs[4] if len(inputs) > 4 else None) or [1] * len(starts)
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= len(shape)
        index[axis] = slice_bounds(shape[axis], start, end, step)
    return tuple(index)


@op("Slice")
def slice_op(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return inputs[0][slice_index(inputs[0].shape, inputs)]


@op("Expand")
def expand(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    target = _int_list(inputs[1]) or []
    shape = np.broadcast_shapes(x.shape, tuple(target))
    return np.broadcast_to(x, shape).copy()


@op("Tile")
def tile(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.tile(inputs[0], _int_list(inputs[1]) or [])


@op("Pad")
def pad(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    pads = _int_list(inputs[1] if len(inputs) > 1 else None) or [int(p) for p in node.attr("pads", [])]
    value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axes = _int_list(inputs[3] if len(inputs) > 3 else None) or list(range(x.ndim))
    mode = node.attr("mode", "constant")
    n = len(axes)
    begins = [0] * x.ndim
    ends = [0] * x.ndim
    for i, axis in enumerate(axes):
        begins[axis % x.ndim] = pads[i]
        ends[axis % x.ndim] = pads[n + i]
    crop = tuple(slice(max(0, -b), x.shape[i] - max(0, -e)) for i, (b, e) in enumerate(zip(begins, ends, strict=True)))
    x = x[crop]
    widths = [(max(0, b), max(0, e)) for b, e in zip(begins, ends, strict=True)]
    if mode == "constant":
        fill = value.reshape(-1)[0] if value is not None and value.size else 0
        return np.pad(x, widths, mode="constant", constant_values=fill)
    if mode in ("reflect", "edge", "wrap"):
        return np.pad(x, widths, mode=mode)
    raise ValueError(f"unknown Pad mode {mode!r}")


@op("ConstantOfShape")
def constant_of_shape(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    value = node.attr("value", None)
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(_int_list(inputs[0]) or [], fill[0], dtype=fill.dtype)


@op("Range")
def range_op(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + np.arange(count, dtype=np.float64 if np.issubdtype(start.dtype, np.floating) else np.int64) * delta).astype(start.dtype)


@op("EyeLike")
def eye_like(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    dtype = target_dtype(node.attr("dtype")) if node.attr("dtype") is not None else x.dtype
    return np.eye(x.shape[0], x.shape[1], k=int(node.attr("k", 0)), dtype=dtype)


@op("Trilu")
def trilu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0
    return np.triu(x, k) if node.attr("upper", 1) else np.tril(x, k)


@op("DepthToSpace")
def depth_to_space(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth")
def space_to_depth(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":  # output channel (bh * b + bw) * c + ci
        y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    else:  # CRD (SpaceToDepth-28): output channel ci * b * b + bh * b + bw, DepthToSpace CRD's inverse
        y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@op("CenterCropPad")
def center_crop_pad(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """Crop (centered, extra pixel at the end) or zero-pad (centered) each listed axis to a size."""
    x = inputs[0]
    sizes = _int_list(inputs[1]) or []
    axes = [int(a) % x.ndim for a in (node.attr("axes", None) or range(x.ndim))]
    for axis, size in zip(axes, sizes, strict=True):
        dim = x.shape[axis]
        if size < dim:
            start = (dim - size) // 2
            x = np.take(x, np.arange(start, start + size), axis=axis)
        elif size > dim:
            before = (size - dim) // 2
            widths = [(0, 0)] * x.ndim
            widths[axis] = (before, size - dim - before)
            x = np.pad(x, widths)
    return x
