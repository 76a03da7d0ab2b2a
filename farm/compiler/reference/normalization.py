"""BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization,
LpNormalization, LRN and MeanVarianceNormalization."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.ndim - 2)


@op("BatchNormalization")
def batch_normalization(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    x, scale, bias, mean, var = inputs[:5]
    eps = float(node.attr("epsilon", 1e-5))
    shape = _channel_shape(x)
    if not node.attr("training_mode", 0):
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
        return [y.astype(x.dtype, copy=False)]
    axes = (0, *range(2, x.ndim))
    batch_mean = x.mean(axis=axes)
    batch_var = x.var(axis=axes)
    y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps) * scale.reshape(shape)
    y = y + bias.reshape(shape)
    momentum = float(node.attr("momentum", 0.9))
    running_mean = mean * momentum + batch_mean * (1 - momentum)
    running_var = var * momentum + batch_var * (1 - momentum)
    return [y.astype(x.dtype), running_mean.astype(mean.dtype), running_var.astype(var.dtype)]


def layer_norm(
    x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, axis: int, epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNormalization over the axes from ``axis`` on, computed in float32 (stash_type 1).

    Returns (Y, Mean, InvStdDev); Mean and InvStdDev keep the normalized axes as size 1."""
    axis = axis % x.ndim if x.ndim else 0
    axes = tuple(range(axis, x.ndim))
    stash = x.astype(np.float32) if x.dtype != np.float64 else x
    mean = stash.mean(axis=axes, keepdims=True)
    centered = stash - mean
    inv_std = 1.0 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + epsilon)
    y = centered * inv_std * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype), mean, inv_std


@op("LayerNormalization")
def layer_normalization(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    y, mean, inv_std = layer_norm(x, scale, bias, int(node.attr("axis", -1)), float(node.attr("epsilon", 1e-5)))
    return [y, mean.astype(np.float32), inv_std.astype(np.float32)]


@op("InstanceNormalization")
def instance_normalization(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, scale, bias = inputs[:3]
    eps = float(node.attr("epsilon", 1e-5))
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = _channel_shape(x)
    y = (x - mean) / np.sqrt(var + eps) * scale.reshape(shape) + bias.reshape(shape)
    return y.astype(x.dtype)


@op("GroupNormalization")
def group_normalization(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """Opset 21 takes scale/bias per channel, opset 18 per group; the sizes tell them apart
    (when num_groups equals the channel count both readings agree)."""
    x, scale, bias = inputs[:3]
    groups = int(node.attr("num_groups"))
    eps = float(node.attr("epsilon", 1e-5))
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, groups, -1).astype(np.float32 if x.dtype != np.float64 else x.dtype)
    mean = grouped.mean(axis=-1, keepdims=True)
    var = grouped.var(axis=-1, keepdims=True)
    normalized = ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)
    if scale.size == groups and groups != channels:
        scale = np.repeat(scale, channels // groups)
        bias = np.repeat(bias, channels // groups)
    shape = _channel_shape(x)
    return (normalized * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)


@op("LpNormalization")
def lp_normalization(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axis = int(node.attr("axis", -1))
    p = int(node.attr("p", 2))
    norm = np.sum(np.abs(x), axis=axis, keepdims=True) if p == 1 else np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, 0, x / norm).astype(x.dtype)


@op("LRN")
def lrn(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    size = int(node.attr("size"))
    alpha = float(node.attr("alpha", 1e-4))
    beta = float(node.attr("beta", 0.75))
    bias = float(node.attr("bias", 1.0))
    squared = x.astype(np.float64) ** 2
    channels = x.shape[1]
    after = int(np.ceil((size - 1) / 2))
    before = int(np.floor((size - 1) / 2))
    total = np.zeros_like(squared)
    for c in range(channels):
        low, high = max(0, c - before), min(channels - 1, c + after)
        total[:, c] = squared[:, low : high + 1].sum(axis=1)
    return (x / (bias + alpha / size * total) ** beta).astype(x.dtype)


@op("MeanVarianceNormalization")
def mean_variance_normalization(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axes = tuple(node.attr("axes", [0, 2, 3]))
    mean = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True))
    return ((x - mean) / (std + 1e-9)).astype(x.dtype)
