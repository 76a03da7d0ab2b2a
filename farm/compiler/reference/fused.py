"""The fused ops of ``farm.compiler.ir.fused``, exactly as that module defines them:
FusedConv, FusedConvTranspose, FusedGemm, LayerNorm and Attention (Gelu is the ONNX op, in ``activations``)."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.activations import apply_activation, softmax
from farm.compiler.reference.nn_conv import conv_nd, conv_transpose, window_params
from farm.compiler.reference.normalization import layer_norm
from farm.compiler.reference.registry import Context, Inputs, op


def epilogue(node: Node, z: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
    """act(z + R) for residual "pre", act(z) + R for "post", act(z) without R."""
    name = node.attr("activation", "") or ""
    alpha = float(node.attr("alpha", 0.0))
    beta = float(node.attr("beta", 0.0))
    if residual is None:
        return apply_activation(name, z, alpha, beta)
    if node.attr("residual", "pre") == "pre":
        return apply_activation(name, (z + residual).astype(z.dtype, copy=False), alpha, beta)
    return (apply_activation(name, z, alpha, beta) + residual).astype(z.dtype, copy=False)


def _optional(inputs: Inputs, index: int) -> np.ndarray | None:
    return inputs[index] if len(inputs) > index else None


@op("FusedConv")
def fused_conv(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    x, w = inputs[0], inputs[1]
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides, dilations, pads = window_params(node, x.shape[2:], kernel)
    z = conv_nd(x, w, _optional(inputs, 2), strides, dilations, pads, int(node.attr("group", 1))).astype(x.dtype)
    return epilogue(node, z, _optional(inputs, 3))


@op("FusedConvTranspose")
def fused_conv_transpose(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    z = conv_transpose(node, inputs[:3], ctx)
    assert isinstance(z, np.ndarray)
    return epilogue(node, z, None)


@op("FusedGemm")
def fused_gemm(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    if node.attr("transB", 0):
        b = np.swapaxes(b, -1, -2)
    z = np.matmul(a, b)
    bias = _optional(inputs, 2)
    if bias is not None:
        z = z + bias
    return epilogue(node, np.asarray(z).astype(a.dtype, copy=False), _optional(inputs, 3))


@op("LayerNorm")
def fused_layer_norm(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    y, _, _ = layer_norm(
        inputs[0], inputs[1], _optional(inputs, 2), int(node.attr("axis", -1)), float(node.attr("epsilon", 1e-5))
    )
    return y


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B, S, H*D] -> [B, H, S, D]."""
    batch, seq, width = x.shape
    return x.reshape(batch, seq, heads, width // heads).transpose(0, 2, 1, 3)


@op("Attention")
def attention(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    if node.attr("packed_qkv", 0):  # one [B, S, 3*H*D] input: Q, K, V side by side
        q_in, k_in, v_in = np.split(inputs[0], 3, axis=-1)
    else:
        q_in, k_in, v_in = inputs[0], inputs[1], inputs[2]
    mask = _optional(inputs, 3)
    heads = int(node.attr("num_heads"))
    q, k, v = (split_heads(t, heads) for t in (q_in, k_in, v_in))
    depth = q.shape[-1]
    scale = float(node.attr("scale", 1.0 / np.sqrt(depth)))
    scores = (np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(scale, q_in.dtype)).astype(q_in.dtype, copy=False)
    if mask is not None:
        scores = scores + mask
    p = softmax(scores.astype(q_in.dtype, copy=False), axis=-1)
    out = np.matmul(p, v)  # B, H, Sq, D
    batch, _, seq, _ = out.shape
    return out.transpose(0, 2, 1, 3).reshape(batch, seq, heads * depth).astype(q_in.dtype, copy=False)
