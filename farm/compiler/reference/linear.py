"""MatMul, Gemm, Einsum and Det."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


@op("MatMul")
def matmul(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    return np.matmul(a, b).astype(a.dtype, copy=False)


@op("Gemm")
def gemm(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    alpha = node.attr("alpha", 1.0)
    beta = node.attr("beta", 1.0)
    y = np.matmul(a, b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=y.dtype) if np.issubdtype(y.dtype, np.floating) else y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return np.asarray(y).astype(inputs[0].dtype, copy=False)


@op("Einsum")
def einsum(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    equation = str(node.attr("equation")).replace(" ", "")
    arrays = [x for x in inputs if x is not None]
    dtype = arrays[0].dtype
    if dtype.name == "bfloat16":  # numpy's einsum has no bfloat16 loops
        arrays = [a.astype(np.float32) for a in arrays]
    return np.asarray(np.einsum(equation, *arrays, optimize=len(arrays) > 2)).astype(dtype, copy=False)


@op("Det")
def det(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x = inputs[0]
    return np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)
