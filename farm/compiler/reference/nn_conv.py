"""Conv and ConvTranspose in any spatial rank, as im2col + matmul (and its transpose, col2im)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def auto_pads(
    auto_pad: str,
    in_sizes: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
) -> list[int]:
    """Explicit pads ``[begins..., ends...]`` for ``auto_pad`` SAME_UPPER/SAME_LOWER/VALID.

    SAME makes the output ``ceil(in / stride)``; the odd pixel goes to the end for SAME_UPPER and
    to the beginning for SAME_LOWER.
    """
    n = len(kernel)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def window_params(node: Node, spatial: tuple[int, ...], kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads) of a Conv/Pool node for an input of spatial size ``spatial``."""
    n = len(kernel)
    strides = list(node.attr("strides", None) or [1] * n)
    dilations = list(node.attr("dilations", None) or [1] * n)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "", None):
        pads = auto_pads(auto_pad, list(spatial), kernel, strides, dilations)
    else:
        pads = list(node.attr("pads", None) or [0] * (2 * n))
    return strides, dilations, pads


def pad_spatial(x: np.ndarray, pads: list[int], value: float = 0.0) -> np.ndarray:
    """Pad (or crop, for negative pads) the spatial axes (2...) of an N, C, ... array."""
    n = len(pads) // 2
    if not any(pads):
        return x
    crop = tuple(
        slice(max(0, -pads[i]), x.shape[2 + i] - max(0, -pads[n + i]) or None) for i in range(n)
    )
    x = x[(slice(None), slice(None), *crop)]
    widths = [(0, 0), (0, 0)] + [(max(0, pads[i]), max(0, pads[n + i])) for i in range(n)]
    return np.pad(x, widths, constant_values=value)


def conv_nd(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    group: int,
) -> np.ndarray:
    """N-d grouped convolution (cross-correlation, as ONNX Conv) via im2col + matmul."""
    n_spatial = w.ndim - 2
    kernel = list(w.shape[2:])
    batch, channels = x.shape[:2]
    out_channels = w.shape[0]
    xp = pad_spatial(x, pads)
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    spatial_axes = tuple(range(2, 2 + n_spatial))
    windows = sliding_window_view(xp, effective, axis=spatial_axes)  # N, C, out'..., eff...
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, s) for s in strides)
    index += tuple(slice(None, None, d) for d in dilations)
    windows = windows[index]  # N, C, out..., k...
    out_sizes = windows.shape[2 : 2 + n_spatial]
    per_group = channels // group
    cols = windows.reshape(batch, group, per_group, *out_sizes, *kernel)
    # -> N, G, out..., Cg, k...
    order = (0, 1, *range(3, 3 + n_spatial), 2, *range(3 + n_spatial, 3 + 2 * n_spatial))
    cols = cols.transpose(order).reshape(batch, group, int(np.prod(out_sizes)), per_group * int(np.prod(kernel)))
    weights = w.reshape(group, out_channels // group, per_group * int(np.prod(kernel)))
    y = np.matmul(cols, weights.transpose(0, 2, 1))  # N, G, P, Mg
    y = y.transpose(0, 1, 3, 2).reshape(batch, out_channels, *out_sizes)
    if bias is not None:
        y = y + bias.reshape(1, -1, *([1] * n_spatial))
    return y.astype(np.result_type(x.dtype, w.dtype), copy=False)


@op("Conv")
def conv(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides, dilations, pads = window_params(node, x.shape[2:], kernel)
    return conv_nd(x, w, bias, strides, dilations, pads, int(node.attr("group", 1))).astype(x.dtype, copy=False)


def conv_transpose_nd(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    output_padding: list[int],
    group: int,
) -> np.ndarray:
    """N-d grouped transposed convolution: matmul to columns, then scatter-add (col2im)."""
    n_spatial = w.ndim - 2
    kernel = list(w.shape[2:])
    batch, channels = x.shape[:2]
    in_sizes = x.shape[2:]
    per_group = channels // group
    out_per_group = w.shape[1]
    k_total = int(np.prod(kernel))
    xg = x.reshape(batch, group, per_group, -1)  # N, G, Cg, P
    wg = w.reshape(group, per_group, out_per_group * k_total)  # G, Cg, Mg*K
    cols = np.matmul(wg.transpose(0, 2, 1), xg)  # N, G, Mg*K, P
    cols = cols.reshape(batch, group * out_per_group, *kernel, *in_sizes)
    full = [
        (size - 1) * s + (k - 1) * d + 1 + op_
        for size, s, k, d, op_ in zip(in_sizes, strides, kernel, dilations, output_padding, strict=True)
    ]
    y = np.zeros((batch, group * out_per_group, *full), dtype=np.result_type(x.dtype, w.dtype))
    for k_index in np.ndindex(*kernel):
        target = (slice(None), slice(None)) + tuple(
            slice(ki * d, ki * d + (size - 1) * s + 1, s)
            for ki, d, size, s in zip(k_index, dilations, in_sizes, strides, strict=True)
        )
        y[target] += cols[(slice(None), slice(None), *k_index)]
    y = pad_spatial(y, [-p for p in pads])
    if bias is not None:
        y = y + bias.reshape(1, -1, *([1] * n_spatial))
    return y


def conv_transpose_geometry(
    node: Node, in_sizes: tuple[int, ...] | list[int], kernel: list[int]
) -> tuple[list[int], list[int], list[int], list[int]]:
    """(strides, dilations, pads, output_padding) of a ConvTranspose node for an input of spatial
    size ``in_sizes``: ``output_shape`` and SAME auto_pad are resolved into explicit pads
    ``[begins..., ends...]`` (negative where the requested output is larger than the full one)."""
    n = len(kernel)
    strides = list(node.attr("strides", None) or [1] * n)
    dilations = list(node.attr("dilations", None) or [1] * n)
    output_padding = list(node.attr("output_padding", None) or [0] * n)
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    output_shape = node.attr("output_shape", None)
    if output_shape is not None and len(output_shape) > n:
        output_shape = list(output_shape)[-n:]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        targets = output_shape or [size * s for size, s in zip(in_sizes, strides, strict=True)]
        begins, ends = [], []
        for i in range(n):
            total = strides[i] * (in_sizes[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1 - targets[i]
            small = int(total / 2)  # truncation: a negative total (output_shape larger) grows the end
            large = total - small
            begin, end = (large, small) if auto_pad == "SAME_LOWER" else (small, large)
            begins.append(begin)
            ends.append(end)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = list(node.attr("pads", None) or [0] * (2 * n))
    return strides, dilations, pads, output_padding


@op("ConvTranspose")
def conv_transpose(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides, dilations, pads, output_padding = conv_transpose_geometry(node, x.shape[2:], kernel)
    y = conv_transpose_nd(x, w, bias, strides, dilations, pads, output_padding, int(node.attr("group", 1)))
    return y.astype(x.dtype, copy=False)
