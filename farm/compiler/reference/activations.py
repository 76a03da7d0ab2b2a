"""Activation functions, Softmax/LogSoftmax/Hardmax, and the epilogue activations of fused ops."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.elementwise import erf_array
from farm.compiler.reference.registry import Context, Inputs, op


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), computed without overflow warnings."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU, erf form or tanh approximation (ONNX Gelu-20)."""
    if approximate == "tanh":
        inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)
        return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype, copy=False)
    return (0.5 * x * (1.0 + erf_array(x / np.sqrt(2.0)))).astype(x.dtype, copy=False)


def apply_activation(name: str, x: np.ndarray, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """The epilogue activations of FusedConv/FusedGemm, as tabled in ``farm.compiler.ir.fused``."""
    dtype = x.dtype
    if name == "":
        y = x
    elif name == "Relu":
        y = np.maximum(x, 0)
    elif name == "LeakyRelu":
        y = np.where(x >= 0, x, alpha * x)
    elif name == "Clip":
        y = np.minimum(np.maximum(x, alpha), beta)
    elif name == "Sigmoid":
        y = sigmoid(x)
    elif name == "Tanh":
        y = np.tanh(x)
    elif name == "HardSigmoid":
        y = np.maximum(0, np.minimum(1, alpha * x + beta))
    elif name == "HardSwish":
        y = x * np.maximum(0, np.minimum(1, x / 6 + 0.5))
    elif name == "Silu":
        y = x * sigmoid(x)
    elif name == "Gelu":
        y = gelu(x)
    elif name == "GeluTanh":
        y = gelu(x, "tanh")
    else:
        raise ValueError(f"unknown epilogue activation {name!r}")
    return np.asarray(y).astype(dtype, copy=False)


def _float(node: Node, key: str, default: float) -> float:
    return float(node.attr(key, default))


@op("Relu")
def relu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return np.maximum(x, np.zeros((), x.dtype))


@op("LeakyRelu")
def leaky_relu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return apply_activation("LeakyRelu", inputs[0], _float(node, "alpha", 0.01))


@op("PRelu")
def prelu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, slope = inputs[0], inputs[1]
    return np.where(x >= 0, x, slope * x).astype(x.dtype, copy=False)


@op("Sigmoid")
def sigmoid_op(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return sigmoid(inputs[0])


@op("HardSigmoid")
def hard_sigmoid(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return apply_activation("HardSigmoid", inputs[0], _float(node, "alpha", 0.2), _float(node, "beta", 0.5))


@op("HardSwish")
def hard_swish(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return apply_activation("HardSwish", inputs[0])


@op("Tanh")
def tanh(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.tanh(inputs[0])


@op("Elu")
def elu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    alpha = _float(node, "alpha", 1.0)
    with np.errstate(over="ignore"):
        return np.where(x > 0, x, alpha * (np.exp(x) - 1)).astype(x.dtype, copy=False)


@op("Selu")
def selu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    alpha = _float(node, "alpha", 1.67326319217681884765625)
    gamma = _float(node, "gamma", 1.05070102214813232421875)
    with np.errstate(over="ignore"):
        return (gamma * np.where(x > 0, x, alpha * (np.exp(x) - 1))).astype(x.dtype, copy=False)


@op("Celu")
def celu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    alpha = _float(node, "alpha", 1.0)
    with np.errstate(over="ignore"):
        return (np.maximum(0, x) + np.minimum(0, alpha * (np.exp(x / alpha) - 1))).astype(x.dtype, copy=False)


@op("Softplus")
def softplus(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    with np.errstate(over="ignore"):
        return np.log1p(np.exp(x)).astype(x.dtype, copy=False)


@op("Softsign")
def softsign(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return (x / (1 + np.abs(x))).astype(x.dtype, copy=False)


@op("ThresholdedRelu")
def thresholded_relu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return np.where(x > _float(node, "alpha", 1.0), x, 0).astype(x.dtype, copy=False)


@op("Mish")
def mish(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    with np.errstate(over="ignore"):
        return (x * np.tanh(np.log1p(np.exp(x)))).astype(x.dtype, copy=False)


@op("Shrink")
def shrink(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    bias = _float(node, "bias", 0.0)
    lambd = _float(node, "lambd", 0.5)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype, copy=False)


@op("Gelu")
def gelu_op(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return gelu(inputs[0], node.attr("approximate", "none"))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)


@op("Softmax")
def softmax_op(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return softmax(inputs[0], int(node.attr("axis", -1)))


@op("LogSoftmax")
def log_softmax(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axis = int(node.attr("axis", -1))
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))).astype(x.dtype, copy=False)


@op("Hardmax")
def hardmax(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    axis = int(node.attr("axis", -1))
    index = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, index, 1, axis=axis)
    return y
