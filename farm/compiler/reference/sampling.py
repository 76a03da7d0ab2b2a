"""Spatial sampling ops: GridSample, AffineGrid, RoiAlign, DeformConv, Col2Im and MaxUnpool."""

from __future__ import annotations

import itertools

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def _reflect(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect coordinates into [low, high] (as many bounces as needed)."""
    span = high - low
    if span <= 0:
        return np.zeros_like(x) + low
    distance = np.where(x < low, low - x, x - high)
    flips = np.floor(distance / span)
    rest = distance - flips * span
    even = (flips % 2) == 0
    below = np.where(even, low + rest, high - rest)
    above = np.where(even, high - rest, low + rest)
    return np.where(x < low, below, np.where(x > high, above, x))


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t."""

    def near(d: np.ndarray) -> np.ndarray:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@op("GridSample")
def grid_sample(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """Sample X at the normalized grid positions (any spatial rank; opset 16 and 20 mode names)."""
    x, grid = inputs[0], inputs[1]
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(node.attr("mode", "linear"), node.attr("mode", "linear"))
    padding = node.attr("padding_mode", "zeros")
    align = bool(node.attr("align_corners", 0))
    spatial = x.shape[2:]
    rank = len(spatial)
    batch = x.shape[0]
    out_spatial = grid.shape[1:-1]
    taps_per_axis: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for axis, size in enumerate(spatial):
        coord = grid[..., rank - 1 - axis].astype(np.float64)
        pixel = (coord + 1) / 2 * (size - 1) if align else ((coord + 1) * size - 1) / 2
        low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if padding == "border":
            pixel = np.clip(pixel, 0, size - 1)
        elif padding == "reflection":
            pixel = _reflect(pixel, low, high)
        if mode == "nearest":
            taps = [(np.rint(pixel).astype(np.int64), np.ones_like(pixel))]
        elif mode == "linear":
            base = np.floor(pixel)
            frac = pixel - base
            taps = [(base.astype(np.int64), 1 - frac), (base.astype(np.int64) + 1, frac)]
        else:
            base = np.floor(pixel)
            weights = _cubic_weights(pixel - base)
            taps = [(base.astype(np.int64) + k - 1, weights[k]) for k in range(4)]
        fixed = []
        for index, weight in taps:
            if padding == "border":
                inside = np.ones(index.shape, bool)
                index = np.clip(index, 0, size - 1)
            elif padding == "reflection":
                index = np.clip(np.rint(_reflect(index.astype(np.float64), low, high)), 0, size - 1).astype(np.int64)
                inside = np.ones(index.shape, bool)
            else:
                inside = (index >= 0) & (index < size)
                index = np.clip(index, 0, size - 1)
            fixed.append((index, np.where(inside, weight, 0.0)))
        taps_per_axis.append(fixed)
    batch_index = np.arange(batch).reshape(batch, *([1] * len(out_spatial)))
    out = np.zeros((batch, *out_spatial, x.shape[1]), np.float64)
    for combo in itertools.product(*taps_per_axis):
        weight = np.ones((batch, *out_spatial))
        for _, w in combo:
            weight = weight * w
        gathered = np.moveaxis(x, 1, -1)[(batch_index, *[index for index, _ in combo])]  # N, out..., C
        out += gathered * weight[..., None]
    return np.moveaxis(out, -1, 1).astype(x.dtype)


@op("AffineGrid")
def affine_grid(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    theta, size = inputs[0], [int(v) for v in inputs[1].reshape(-1)]
    align = bool(node.attr("align_corners", 0))
    spatial = size[2:]

    def base(n: int) -> np.ndarray:
        if align:
            return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        return (np.arange(n) * 2.0 + 1.0) / n - 1.0

    axes = [base(n) for n in spatial]  # H, W (or D, H, W)
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.stack([*reversed(mesh), np.ones_like(mesh[0])], axis=-1)  # x, y(, z), 1
    grid = np.einsum("...k,njk->n...j", points, theta.astype(np.float64))
    return grid.astype(theta.dtype)


@op("RoiAlign")
def roi_align(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """RoiAlign as ONNX Runtime computes it (max mode takes the largest weighted corner)."""
    x, rois, batch_indices = inputs[0], inputs[1], inputs[2]
    out_h = int(node.attr("output_height", 1))
    out_w = int(node.attr("output_width", 1))
    ratio = int(node.attr("sampling_ratio", 0))
    scale = float(node.attr("spatial_scale", 1.0))
    mode = node.attr("mode", "avg")
    half_pixel = node.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    _, channels, height, width = x.shape
    out = np.zeros((rois.shape[0], channels, out_h, out_w), np.float64)
    offset = 0.5 if half_pixel else 0.0
    for r, roi in enumerate(rois.astype(np.float64)):
        image = x[int(batch_indices[r])].astype(np.float64)
        start_w, start_h = roi[0] * scale - offset, roi[1] * scale - offset
        roi_w, roi_h = roi[2] * scale - offset - start_w, roi[3] * scale - offset - start_h
        if not half_pixel:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = ratio if ratio > 0 else int(np.ceil(roi_h / out_h))
        grid_w = ratio if ratio > 0 else int(np.ceil(roi_w / out_w))
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                samples = []
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        xx = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        samples.append(_bilinear_corners(image, y, xx, height, width))
                if mode == "avg":
                    out[r, :, ph, pw] = sum(sum(corners) for corners in samples) / count if samples else 0.0
                elif samples:
                    out[r, :, ph, pw] = np.max([np.max(corners, axis=0) for corners in samples], axis=0)
    return out.astype(x.dtype)


def _bilinear_corners(image: np.ndarray, y: float, x: float, height: int, width: int) -> list[np.ndarray]:
    """The four weighted corner values (per channel) of a bilinear sample, caffe2-style."""
    zero = np.zeros(image.shape[0])
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return [zero, zero, zero, zero]
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return [
        hy * hx * image[:, y_low, x_low],
        hy * lx * image[:, y_low, x_high],
        ly * hx * image[:, y_high, x_low],
        ly * lx * image[:, y_high, x_high],
    ]


@op("Col2Im")
def col2im(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """Sum sliding-block columns [N, C*prod(block), L] back into an image [N, C, *image_shape]."""
    cols, image_shape, block_shape = inputs[0], inputs[1], inputs[2]
    image = [int(v) for v in image_shape.reshape(-1)]
    block = [int(v) for v in block_shape.reshape(-1)]
    n = len(image)
    dilations = list(node.attr("dilations", None) or [1] * n)
    strides = list(node.attr("strides", None) or [1] * n)
    pads = list(node.attr("pads", None) or [0] * (2 * n))
    batch = cols.shape[0]
    channels = cols.shape[1] // int(np.prod(block))
    padded = [image[i] + pads[i] + pads[n + i] for i in range(n)]
    counts = [(padded[i] - ((block[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(n)]
    blocks = cols.reshape(batch, channels, *block, *counts)
    out = np.zeros((batch, channels, *padded), np.float64)
    for k_index in np.ndindex(*block):
        target = (slice(None), slice(None)) + tuple(
            slice(k * d, k * d + (c - 1) * s + 1, s)
            for k, d, c, s in zip(k_index, dilations, counts, strides, strict=True)
        )
        out[target] += blocks[(slice(None), slice(None), *k_index)]
    crop = tuple(slice(pads[i], pads[i] + image[i]) for i in range(n))
    return out[(slice(None), slice(None), *crop)].astype(cols.dtype)


@op("MaxUnpool")
def max_unpool(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, indices = inputs[0], inputs[1]
    output_shape = inputs[2] if len(inputs) > 2 else None
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides = list(node.attr("strides", None) or [1] * n)
    pads = list(node.attr("pads", None) or [0] * (2 * n))
    spatial = [(x.shape[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[n + i] for i in range(n)]
    inferred = [x.shape[0], x.shape[1], *spatial]
    unpooled = np.zeros(int(np.prod(inferred)), dtype=x.dtype)
    unpooled[indices.reshape(-1).astype(np.int64)] = x.reshape(-1)
    unpooled = unpooled.reshape(inferred)
    if output_shape is None:
        return unpooled
    # Indices address the inferred shape; a larger output_shape holds it in its leading corner.
    out = np.zeros([int(v) for v in output_shape.reshape(-1)], dtype=x.dtype)
    out[tuple(slice(0, d) for d in inferred)] = unpooled
    return out


def _bilinear_zero_padded(x: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sample x [N, C, H, W] at pixel coordinates h, w [N, C, ...] (corners outside count 0)."""
    batch, channels, height, width = x.shape
    top, left = np.floor(h), np.floor(w)
    frac_h, frac_w = h - top, w - left
    top_i, left_i = top.astype(np.int64), left.astype(np.int64)
    n_index = np.arange(batch).reshape(batch, *([1] * (h.ndim - 1)))
    c_index = np.arange(channels).reshape(1, channels, *([1] * (h.ndim - 2)))
    out = np.zeros(h.shape, np.float64)
    for dh, weight_h in ((0, 1 - frac_h), (1, frac_h)):
        for dw, weight_w in ((0, 1 - frac_w), (1, frac_w)):
            rows, cols = top_i + dh, left_i + dw
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
            values = x[n_index, c_index, np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)]
            out += np.where(inside, values, 0.0) * weight_h * weight_w
    return out


@op("DeformConv")
def deform_conv(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """2-D deformable convolution: each kernel tap samples X bilinearly at its offset position
    (zero outside), scaled by the mask, then an ordinary grouped convolution sum."""
    x, w, offset = inputs[0], inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    mask = inputs[4] if len(inputs) > 4 else None
    batch, channels, _, _ = x.shape
    out_channels = w.shape[0]
    kh, kw = list(node.attr("kernel_shape", None) or w.shape[2:])
    stride_h, stride_w = list(node.attr("strides", None) or [1, 1])
    dil_h, dil_w = list(node.attr("dilations", None) or [1, 1])
    pads = list(node.attr("pads", None) or [0, 0, 0, 0])
    group = int(node.attr("group", 1))
    offset_groups = int(node.attr("offset_group", 1))
    out_h, out_w = offset.shape[2:]
    offsets = offset.reshape(batch, offset_groups, kh, kw, 2, out_h, out_w).astype(np.float64)
    if mask is None:
        mask = np.ones((batch, offset_groups * kh * kw, out_h, out_w))
    masks = mask.reshape(batch, offset_groups, kh, kw, out_h, out_w).astype(np.float64)
    base_h = (np.arange(out_h) * stride_h - pads[0])[None, :] + (np.arange(kh) * dil_h)[:, None]  # kh, oh
    base_w = (np.arange(out_w) * stride_w - pads[1])[None, :] + (np.arange(kw) * dil_w)[:, None]  # kw, ow
    sample_h = base_h[:, None, :, None] + offsets[:, :, :, :, 0]  # N, G, kh, kw, oh, ow
    sample_w = base_w[None, :, None, :] + offsets[:, :, :, :, 1]
    per_offset_group = channels // offset_groups
    group_of_channel = np.arange(channels) // per_offset_group
    cols = _bilinear_zero_padded(
        x.astype(np.float64), sample_h[:, group_of_channel], sample_w[:, group_of_channel]
    ) * masks[:, group_of_channel]  # N, C, kh, kw, oh, ow
    per_group = channels // group
    cols = cols.reshape(batch, group, per_group * kh * kw, out_h * out_w)
    weights = w.reshape(group, out_channels // group, per_group * kh * kw).astype(np.float64)
    y = np.matmul(weights, cols).reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y.astype(x.dtype)
