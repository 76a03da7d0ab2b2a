"""Elementwise math, comparison, logic, bitwise, Cast and variadic ops (numpy broadcasting)."""

from __future__ import annotations

import functools
import math

import numpy as np

from farm.compiler.ir.dtypes import from_onnx, numpy_dtype
from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op

_UNARY = {
    "Abs": np.abs,
    "Neg": np.negative,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.round,  # round half to even, as ONNX specifies
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Not": np.logical_not,
    "BitwiseNot": np.bitwise_not,
    "IsNaN": np.isnan,
}


def _unary(fn):
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        x = inputs[0]
        with np.errstate(all="ignore"):
            result = np.asarray(fn(x))
        return result if result.dtype == np.bool_ else result.astype(x.dtype, copy=False)

    return impl


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("Reciprocal")
def reciprocal(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    with np.errstate(divide="ignore"):
        return (np.ones((), x.dtype) / x).astype(x.dtype, copy=False)


@op("Sign")
def sign(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.sign(inputs[0]).astype(inputs[0].dtype, copy=False)


@op("Erf")
def erf(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return erf_array(x).astype(x.dtype, copy=False)


_ERF_STEP = 0.25
_ERF_TABLE = np.array([math.erf(i * _ERF_STEP) for i in range(int(6 / _ERF_STEP) + 1)])


def erf_array(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float64 (error below 1e-15).

    A Taylor expansion around the nearest multiple c of 1/4 (|h| <= 1/8), whose derivatives are
    Hermite polynomials: erf(c + h) = erf(c) + 2/sqrt(pi) e^(-c^2) sum_n (-1)^n H_n(c) h^(n+1)/(n+1)!.
    Beyond |x| = 6, erf is +-1 in float64.
    """
    values = np.asarray(x, dtype=np.float64)
    magnitude = np.minimum(np.nan_to_num(np.abs(values), nan=0.0), 6.0)
    index = np.rint(magnitude / _ERF_STEP).astype(np.int64)
    center = index * _ERF_STEP
    h = magnitude - center
    hermite_prev = np.ones_like(center)
    hermite = 2.0 * center
    power = h.copy()
    total = h.copy()
    for n in range(1, 12):
        power *= h
        power /= n + 1
        total += (-1.0) ** n * hermite * power
        hermite_prev, hermite = hermite, 2.0 * center * hermite - 2.0 * n * hermite_prev
    result = _ERF_TABLE[index] + (2.0 / math.sqrt(math.pi)) * np.exp(-center * center) * total
    return np.where(np.isnan(values), np.nan, np.copysign(result, values))


@op("IsInf")
def isinf(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    positive = node.attr("detect_positive", 1)
    negative = node.attr("detect_negative", 1)
    return np.asarray((np.isposinf(x) & bool(positive)) | (np.isneginf(x) & bool(negative)))


def _int_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics, as ONNX Runtime does)."""
    with np.errstate(divide="ignore"):
        q = np.floor_divide(a, b)
        fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return np.where(fix, q + 1, q).astype(np.result_type(a, b), copy=False)


@op("Add")
def add(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.add(inputs[0], inputs[1]).astype(inputs[0].dtype, copy=False)


@op("Sub")
def sub(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.subtract(inputs[0], inputs[1]).astype(inputs[0].dtype, copy=False)


@op("Mul")
def mul(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.multiply(inputs[0], inputs[1]).astype(inputs[0].dtype, copy=False)


@op("Div")
def div(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    if np.issubdtype(a.dtype, np.integer):
        return _int_divide(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b).astype(a.dtype, copy=False)


@op("Pow")
def power(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    with np.errstate(all="ignore"):
        if np.issubdtype(a.dtype, np.integer):
            if np.issubdtype(b.dtype, np.integer):
                return np.power(a, b.astype(a.dtype)).astype(a.dtype)
            return np.power(a.astype(np.float64), b).astype(a.dtype)
        return np.power(a, b.astype(a.dtype) if not np.issubdtype(b.dtype, np.integer) else b).astype(a.dtype)


@op("Mod")
def mod(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    with np.errstate(all="ignore"):
        if node.attr("fmod", 0):
            return np.fmod(a, b).astype(a.dtype, copy=False)
        return np.mod(a, b).astype(a.dtype, copy=False)


_COMPARE = {
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}
_BITWISE = {"BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor}


def _compare(fn):
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        return np.asarray(fn(inputs[0], inputs[1]), dtype=bool)

    return impl


def _bitwise(fn):
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        return fn(inputs[0], inputs[1]).astype(inputs[0].dtype, copy=False)

    return impl


for _name, _fn in _COMPARE.items():
    op(_name)(_compare(_fn))
for _name, _fn in _BITWISE.items():
    op(_name)(_bitwise(_fn))


@op("BitShift")
def bit_shift(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, y = inputs[0], inputs[1]
    fn = np.left_shift if node.attr("direction", "LEFT") == "LEFT" else np.right_shift
    return fn(x, y.astype(x.dtype)).astype(x.dtype, copy=False)


def _variadic(fn, mean: bool = False):
    def impl(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        arrays = [a for a in inputs if a is not None]
        result = functools.reduce(fn, arrays)
        if mean:
            result = result / len(arrays)
        return np.asarray(result).astype(arrays[0].dtype, copy=False)

    return impl


op("Sum")(_variadic(np.add))
op("Mean")(_variadic(np.add, mean=True))
op("Max")(_variadic(np.maximum))
op("Min")(_variadic(np.minimum))


@op("Where")
def where(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return np.asarray(np.where(inputs[0], inputs[1], inputs[2])).astype(inputs[1].dtype, copy=False)


@op("Dropout")
def dropout(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    """Inference Dropout: the identity with an all-true mask. Training mode with a non-zero
    ratio draws random masks, which an inference compiler does not reproduce: it is an error."""
    x = inputs[0]
    ratio = float(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0.5
    training = len(inputs) > 2 and inputs[2] is not None and bool(np.asarray(inputs[2]).reshape(-1)[0])
    if training and ratio > 0:
        raise ValueError("training-mode Dropout with ratio > 0 is random; only inference Dropout is supported")
    return [x, np.ones(x.shape, dtype=bool)]


@op("Identity")
def identity(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return inputs[0]


def target_dtype(to: int | str) -> np.dtype:
    """The numpy dtype named by a Cast ``to`` attribute (an ONNX enum or one of our dtype names)."""
    return numpy_dtype(from_onnx(to) if isinstance(to, (int, np.integer)) else str(to))


def cast_array(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """ONNX Cast: float -> int truncates, strings parse as numbers and numbers print as strings."""
    if x.dtype == dtype:
        return x
    if dtype == np.dtype(object):
        if np.issubdtype(x.dtype, np.floating):
            return np.array([_float_to_string(v) for v in x.ravel()], dtype=object).reshape(x.shape)
        return np.array([str(v) for v in x.ravel().tolist()], dtype=object).reshape(x.shape)
    if x.dtype == np.dtype(object):
        flat = [v.decode() if isinstance(v, bytes) else v for v in x.ravel()]
        if dtype == np.bool_:
            return np.array([s.lower() in ("true", "1") if isinstance(s, str) else bool(s) for s in flat]).reshape(x.shape)
        return np.array([float(s) for s in flat], dtype=np.float64).astype(dtype).reshape(x.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


def _float_to_string(value: float) -> str:
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "INF" if value > 0 else "-INF"
    return np.format_float_positional(np.float32(value), trim="-") if abs(value) < 1e16 else str(np.float32(value))


@op("Cast")
def cast(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return cast_array(inputs[0], target_dtype(node.attr("to")))


@op("BitCast")
def bitcast(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """BitCast-26: the same little-endian bytes read as ``to`` (of the same width), same shape."""
    x = inputs[0]
    dtype = target_dtype(node.attr("to"))
    if x.dtype == np.dtype(object) or dtype == np.dtype(object) or dtype.itemsize != x.dtype.itemsize:
        raise ValueError(f"BitCast from {x.dtype} to {dtype}: the widths must match and strings cannot be bitcast")
    little = np.array(x, dtype=x.dtype.newbyteorder("<"), order="C")  # np.ascontiguousarray makes 0-d 1-d
    return little.view(dtype.newbyteorder("<")).astype(dtype)


@op("CastLike")
def cast_like(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return cast_array(inputs[0], inputs[1].dtype)


@op("Clip")
def clip(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 else None
    high = inputs[2] if len(inputs) > 2 else None
    if low is None and "min" in node.attrs:  # Clip-6's attribute form, for hand-built nodes
        low = np.asarray(node.attrs["min"], dtype=x.dtype)
    if high is None and "max" in node.attrs:
        high = np.asarray(node.attrs["max"], dtype=x.dtype)
    y = x
    if low is not None and low.size:
        y = np.maximum(y, low.astype(x.dtype))
    if high is not None and high.size:
        y = np.minimum(y, high.astype(x.dtype))
    return np.asarray(y).astype(x.dtype, copy=False)
