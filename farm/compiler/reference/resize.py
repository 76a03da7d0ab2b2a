"""Resize (opset 11-19 semantics: every coordinate transformation mode, nearest rounding modes,
linear and cubic with antialias and exclude_outside, axes and keep_aspect_ratio_policy).

Resize is separable, so each resized axis is interpolated on its own: for every output
coordinate the transformation gives a source coordinate, the mode gives taps and weights, and the
axis is contracted against a (out x in) weight matrix (or gathered, for nearest).
"""

from __future__ import annotations

import math

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def resize_output_shape(
    in_shape: tuple[int, ...],
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
    axes: list[int] | None,
    policy: str = "stretch",
) -> tuple[list[int], list[float]]:
    """Output shape and the per-axis scales used by the coordinate transformation."""
    rank = len(in_shape)
    axes = [a % rank for a in axes] if axes else list(range(rank))
    out = list(in_shape)
    used = [1.0] * rank
    if sizes is not None and sizes.size:
        wanted = [int(v) for v in sizes.reshape(-1)]
        if policy in ("not_larger", "not_smaller"):
            ratios = [wanted[i] / in_shape[a] for i, a in enumerate(axes)]
            ratio = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out[a] = int(math.floor(ratio * in_shape[a] + 0.5))
                used[a] = ratio
        else:
            for i, a in enumerate(axes):
                out[a] = wanted[i]
                used[a] = wanted[i] / in_shape[a] if in_shape[a] else 1.0
    elif scales is not None and scales.size:
        for i, a in enumerate(axes):
            used[a] = float(scales.reshape(-1)[i])
            out[a] = int(math.floor(in_shape[a] * used[a]))
    return out, used


def source_coordinates(
    mode: str, out_size: int, in_size: int, scale: float, roi: tuple[float, float] | None
) -> np.ndarray:
    """The input coordinate of every output index along one axis.

    As the spec says, align_corners and tf_crop_and_resize divide by ``length_resized - 1``
    where length_resized is ``scale * in_size`` (not rounded)."""
    x = np.arange(out_size, dtype=np.float64)
    resized = scale * in_size
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_size / (scale * in_size)
        center = in_size / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (in_size - 1) / (resized - 1) if out_size > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if out_size > 1:
            return start * (in_size - 1) + x * (end - start) * (in_size - 1) / (resized - 1)
        return np.full_like(x, 0.5 * (start + end) * (in_size - 1))
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest(coords: np.ndarray, mode: str) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.ceil(coords - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(coords + 0.5)
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    raise ValueError(f"unknown nearest_mode {mode!r}")


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def interpolation_matrix(
    coords: np.ndarray, in_size: int, scale: float, mode: str, cubic_a: float, exclude_outside: bool, antialias: bool
) -> np.ndarray:
    """An (out x in) matrix of linear/cubic interpolation weights along one axis."""
    stretch = min(scale, 1.0) if antialias else 1.0
    support = (1.0 if mode == "linear" else 2.0) / stretch
    matrix = np.zeros((coords.size, in_size), dtype=np.float64)
    reach = int(math.ceil(support)) + 1
    for row, c in enumerate(coords):
        base = math.floor(c)
        taps = np.arange(base - reach + 1, base + reach + 1)
        distance = (c - taps) * stretch
        weights = np.maximum(0.0, 1.0 - np.abs(distance)) if mode == "linear" else _cubic(distance, cubic_a)
        inside = (taps >= 0) & (taps < in_size)
        if exclude_outside:
            weights = np.where(inside, weights, 0.0)
        total = weights.sum()
        if total != 0:
            weights = weights / total
        np.add.at(matrix[row], np.clip(taps, 0, in_size - 1), weights)
    return matrix


@op("Resize")
def resize(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    roi = inputs[1] if len(inputs) > 1 else None
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    axes = node.attr("axes", None)
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
    cubic_a = float(node.attr("cubic_coeff_a", -0.75))
    exclude_outside = bool(node.attr("exclude_outside", 0))
    extrapolation = float(node.attr("extrapolation_value", 0.0))
    antialias = bool(node.attr("antialias", 0))
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    out_shape, used_scales = resize_output_shape(x.shape, scales, sizes, axes, policy)
    rank = x.ndim
    axis_list = [a % rank for a in axes] if axes else list(range(rank))
    roi_pairs: dict[int, tuple[float, float]] = {}
    if roi is not None and roi.size:
        flat = roi.reshape(-1).astype(np.float64)
        half = flat.size // 2
        for i, a in enumerate(axis_list[:half]):
            roi_pairs[a] = (float(flat[i]), float(flat[half + i]))
    y = x.astype(np.float64) if mode != "nearest" else x
    for axis in range(rank):
        in_size, out_size = x.shape[axis], out_shape[axis]
        if in_size == out_size and transform != "tf_crop_and_resize" and used_scales[axis] == 1.0:
            continue
        coords = source_coordinates(transform, out_size, in_size, used_scales[axis], roi_pairs.get(axis))
        outside = (coords < 0) | (coords > in_size - 1) if transform == "tf_crop_and_resize" else None
        if mode == "nearest":
            index = np.clip(_nearest(coords, nearest_mode), 0, in_size - 1).astype(np.int64)
            y = np.take(y, index, axis=axis)
        else:
            matrix = interpolation_matrix(coords, in_size, used_scales[axis], mode, cubic_a, exclude_outside, antialias)
            y = np.moveaxis(np.tensordot(matrix, np.moveaxis(y, axis, 0), axes=(1, 0)), 0, axis)
        if outside is not None and outside.any():
            shape = [1] * rank
            shape[axis] = out_size
            y = np.where(outside.reshape(shape), extrapolation, y)
    return np.asarray(y).astype(x.dtype, copy=False)
