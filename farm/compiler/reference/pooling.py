"""MaxPool (with Indices), AveragePool, LpPool and their Global forms, in any spatial rank."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from farm.compiler.ir.graph import Node
from farm.compiler.reference.nn_conv import window_params
from farm.compiler.reference.registry import Context, Inputs, op


def pool_output_sizes(
    in_sizes: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int], pads: list[int], ceil_mode: bool
) -> list[int]:
    """Output spatial sizes of a pooling window; with ceil_mode the last window must start
    inside the input or its begin padding."""
    n = len(kernel)
    sizes = []
    for i in range(n):
        effective = (kernel[i] - 1) * dilations[i] + 1
        span = in_sizes[i] + pads[i] + pads[n + i] - effective
        if ceil_mode:
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= in_sizes[i] + pads[i]:
                out -= 1
        else:
            out = span // strides[i] + 1
        sizes.append(max(out, 0))
    return sizes


def _windows(x: np.ndarray, node: Node, fill: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Sliding windows (N, C, out..., k...) over x padded with ``fill``, plus a mask of which
    window cells are explicit input/pad cells (1 inside the input, 2 in explicit pads, 0 beyond)."""
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides, dilations, pads = window_params(node, x.shape[2:], kernel)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    out_sizes = pool_output_sizes(x.shape[2:], kernel, strides, dilations, pads, ceil_mode)
    extra = []
    for i in range(n):
        needed = (out_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        extra.append(max(0, needed - (x.shape[2 + i] + pads[i] + pads[n + i])))
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[n + i] + extra[i]) for i in range(n)]
    xp = np.pad(x, widths, constant_values=fill)
    inside = np.ones(x.shape[2:], dtype=np.int8)
    with_pads = np.pad(inside, [(pads[i], pads[n + i]) for i in range(n)], constant_values=2)
    mask = np.pad(with_pads, [(0, e) for e in extra], constant_values=0)
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    index = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sizes, strides, strict=True))
    index += tuple(slice(None, None, d) for d in dilations)
    axes = tuple(range(2, 2 + n))
    windows = sliding_window_view(xp, effective, axis=axes)[(slice(None), slice(None), *index)]
    mask_windows = sliding_window_view(mask, effective)[index]
    return windows, mask_windows, pads


@op("MaxPool")
def max_pool(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    x = inputs[0]
    n = x.ndim - 2
    fill = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    windows, _, pads = _windows(x, node, fill)
    out_shape = windows.shape[: 2 + n]
    flat = windows.reshape(*out_shape, -1)
    y = flat.max(axis=-1).astype(x.dtype, copy=False)
    if len(node.outputs) < 2 or not node.outputs[1]:
        return [y]
    # Indices: flat positions in the unpadded input (row-major, or column-major with storage_order=1).
    positions = np.arange(int(np.prod(x.shape[2:]))).reshape(x.shape[2:])
    pos_node = Node("MaxPool", [], [], dict(node.attrs))
    pos_windows, _, _ = _windows(positions[None, None].astype(np.int64), pos_node, -1)
    pos_flat = pos_windows.reshape(*pos_windows.shape[2 : 2 + n], -1)
    arg = flat.argmax(axis=-1)
    spatial_index = np.take_along_axis(
        np.broadcast_to(pos_flat, (*out_shape, pos_flat.shape[-1])), arg[..., None], axis=-1
    )[..., 0]
    if node.attr("storage_order", 0):
        coords = np.unravel_index(spatial_index, x.shape[2:])
        spatial_index = np.ravel_multi_index(coords, x.shape[2:], order="F")
    plane = int(np.prod(x.shape[2:]))
    base = (np.arange(x.shape[0])[:, None] * x.shape[1] + np.arange(x.shape[1])[None, :]) * plane
    indices = base.reshape(*base.shape, *([1] * n)) + spatial_index
    return [y, indices.astype(np.int64)]


@op("AveragePool")
def average_pool(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    n = x.ndim - 2
    windows, mask, _ = _windows(x, node, 0.0)
    out_shape = windows.shape[: 2 + n]
    total = windows.reshape(*out_shape, -1).sum(axis=-1, dtype=np.float64)
    counted = (mask >= 1) if node.attr("count_include_pad", 0) else (mask == 1)
    count = counted.reshape(*mask.shape[:n], -1).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(x.dtype)


@op("LpPool")
def lp_pool(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    n = x.ndim - 2
    p = float(node.attr("p", 2))
    windows, _, _ = _windows(x, node, 0.0)
    flat = windows.reshape(*windows.shape[: 2 + n], -1)
    return (np.sum(np.abs(flat) ** p, axis=-1) ** (1.0 / p)).astype(x.dtype)


@op("GlobalAveragePool")
def global_average_pool(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(x.dtype)


@op("GlobalMaxPool")
def global_max_pool(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@op("GlobalLpPool")
def global_lp_pool(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    p = float(node.attr("p", 2))
    axes = tuple(range(2, x.ndim))
    return (np.sum(np.abs(x) ** p, axis=axes, keepdims=True) ** (1.0 / p)).astype(x.dtype)
