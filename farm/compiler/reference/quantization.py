"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear and the integer GEMM/conv ops
(MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv)."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.elementwise import target_dtype
from farm.compiler.reference.nn_conv import conv_nd, window_params
from farm.compiler.reference.registry import Context, Inputs, op


def _broadcast_param(param: np.ndarray, x: np.ndarray, axis: int, block_size: int = 0) -> np.ndarray:
    """Scale or zero point shaped to broadcast against ``x``: per tensor, per axis, or per block."""
    if param.ndim == 0 or param.size == 1 and param.ndim <= 1 and not block_size:
        return param.reshape(())
    axis %= x.ndim
    if block_size:
        return np.repeat(param, block_size, axis=axis)[tuple(slice(0, s) for s in x.shape)]
    shape = [1] * x.ndim
    shape[axis] = param.size
    return param.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """round_half_to_even(x / scale) + zero_point, saturated to ``dtype``'s range."""
    info = np.iinfo(dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32))
    if zero_point is not None:
        q = q + zero_point.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(dtype)


@op("QuantizeLinear")
def quantize_linear(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    axis = int(node.attr("axis", 1))
    block = int(node.attr("block_size", 0))
    dtype = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
    if node.attr("output_dtype", 0):
        dtype = target_dtype(node.attr("output_dtype"))
    scale_b = _broadcast_param(scale, x, axis, block)
    zero_b = _broadcast_param(zero_point, x, axis, block) if zero_point is not None else None
    return quantize(x, scale_b, zero_b, dtype)


@op("DequantizeLinear")
def dequantize_linear(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    axis = int(node.attr("axis", 1))
    block = int(node.attr("block_size", 0))
    values = x.astype(np.float32)
    if zero_point is not None:
        values = values - _broadcast_param(zero_point, x, axis, block).astype(np.float32)
    return (values * _broadcast_param(scale, x, axis, block)).astype(scale.dtype)


@op("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    x = inputs[0].astype(np.float32)
    low = min(float(x.min(initial=0.0)), 0.0)
    high = max(float(x.max(initial=0.0)), 0.0)
    scale = np.float32((high - low) / 255.0) if high != low else np.float32(1.0)
    zero_point = np.clip(np.rint(-low / scale), 0, 255).astype(np.uint8)
    y = quantize(x, np.asarray(scale), np.asarray(zero_point), np.dtype(np.uint8))
    return [y, np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.uint8)]


def _centered(x: np.ndarray, zero_point: np.ndarray | None, axis: int | None = None) -> np.ndarray:
    values = x.astype(np.int32)
    if zero_point is None:
        return values
    zp = zero_point.astype(np.int32)
    if axis is not None and zp.size > 1:
        shape = [1] * x.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    return values - zp


@op("MatMulInteger")
def matmul_integer(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    a_c = _centered(a, a_zp, a.ndim - 2 if a_zp is not None and a_zp.size > 1 else None)
    b_c = _centered(b, b_zp, b.ndim - 1 if b_zp is not None and b_zp.size > 1 else None)
    return np.matmul(a_c, b_c).astype(np.int32)


@op("ConvInteger")
def conv_integer(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, w = inputs[0], inputs[1]
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides, dilations, pads = window_params(node, x.shape[2:], kernel)
    xc = _centered(x, x_zp).astype(np.int64)
    wc = _centered(w, w_zp, 0).astype(np.int64)
    return conv_nd(xc, wc, None, strides, dilations, pads, int(node.attr("group", 1))).astype(np.int32)


def _requantize(real: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray) -> np.ndarray:
    """round_half_to_even(real / y_scale) + y_zero_point, saturated to the zero point's type."""
    info = np.iinfo(y_zero_point.dtype)
    q = np.rint(real / y_scale) + y_zero_point.astype(np.float64)
    return np.clip(q, info.min, info.max).astype(y_zero_point.dtype)


@op("QLinearMatMul")
def qlinear_matmul(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = inputs[:8]
    a_f = (a.astype(np.float64) - a_zp.astype(np.float64).reshape(-1, 1) if a_zp.size > 1 else a.astype(np.float64) - float(a_zp.reshape(-1)[0]))
    a_f = a_f * (a_scale.astype(np.float64).reshape(-1, 1) if a_scale.size > 1 else float(a_scale.reshape(-1)[0]))
    b_f = b.astype(np.float64) - (b_zp.astype(np.float64).reshape(1, -1) if b_zp.size > 1 else float(b_zp.reshape(-1)[0]))
    b_f = b_f * (b_scale.astype(np.float64).reshape(1, -1) if b_scale.size > 1 else float(b_scale.reshape(-1)[0]))
    acc = np.matmul(a_f, b_f)
    return _requantize(acc, y_scale.astype(np.float64), y_zp)


@op("QLinearConv")
def qlinear_conv(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides, dilations, pads = window_params(node, x.shape[2:], kernel)
    xc = _centered(x, x_zp).astype(np.int64)
    wc = _centered(w, w_zp, 0).astype(np.int64)
    acc = conv_nd(xc, wc, None, strides, dilations, pads, int(node.attr("group", 1))).astype(np.float64)
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape(1, -1, *([1] * (x.ndim - 2)))
    w_s = w_scale.astype(np.float64).reshape(1, -1, *([1] * (x.ndim - 2))) if w_scale.size > 1 else float(w_scale.reshape(-1)[0])
    real = acc * float(x_scale.reshape(-1)[0]) * w_s
    return _requantize(real, y_scale.astype(np.float64), y_zp)
