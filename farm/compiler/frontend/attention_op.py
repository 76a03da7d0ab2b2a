"""ONNX Attention (opset 23+) written as the ops exporters have always used for attention.

Attention-23's function body (:mod:`farm.compiler.frontend.functions`) covers every variant:
masks, causal masking, grouped KV heads, a KV cache, softcap. Its plain case, multi-head
attention with no mask and no cache, is written here instead as the pattern that
``torch.onnx.export`` produced before Attention existed::

    3-D Q [B, Sq, H*D], K/V [B, Sk, H*D]:   Reshape([0, 0, H, D]) -> Transpose to heads,
        MatMul(q, kT) -> Mul(scale) -> Softmax(-1) -> MatMul(., v) -> Transpose -> Reshape([0, 0, H*D])
    4-D Q [B, H, Sq, D], K/V [B, H, Sk, D]:  MatMul(Q, Transpose(K)) -> Mul(scale) -> Softmax -> MatMul(., V)

which the attention fusion pass turns into the fused Attention kernel (3-D), and which computes
the same values as the body: the body's guard against fully masked rows (a Where) cannot fire
without a mask. ``scale`` defaults to 1/sqrt(D) as in the body (which applies its square root to
q and k each: the same value up to rounding).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import NodeProto, TensorProto, TypeProto, helper, numpy_helper

# float16/bfloat16 attention keeps the body, whose rounding (scale split over q and k, softmax
# in float32) the ONNX test data follows to the last bit
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


def _dims(info: TypeProto | None) -> list[int | None] | None:
    if info is None or info.WhichOneof("value") != "tensor_type" or not info.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in info.tensor_type.shape.dim]


def plain_attention(node: NodeProto, types: dict[str, TypeProto]) -> list[NodeProto] | None:
    """The nodes replacing ``node`` (an ONNX Attention) in its plain case, else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input)
    if len(inputs) < 3 or not all(inputs[:3]) or any(inputs[3:]):  # a mask, a cache or nonpad lengths
        return None
    if not node.output or not node.output[0] or any(node.output[1:]):
        return None
    if attrs.get("is_causal", 0) or attrs.get("softcap", 0.0) or attrs.get("left_window_size", -1) != -1:
        return None
    if attrs.get("right_window_size", -1) != -1:
        return None
    q, k, v = (types.get(name) for name in inputs[:3])
    elem = {t.tensor_type.elem_type if t is not None else 0 for t in (q, k, v)}
    if len(elem) != 1 or next(iter(elem)) not in FLOAT_TYPES:
        return None
    shapes = [_dims(t) for t in (q, k, v)]
    if any(s is None for s in shapes) or len({len(s) for s in shapes if s is not None}) != 1:
        return None
    qs, ks, vs = shapes
    assert qs is not None and ks is not None and vs is not None
    if len(qs) == 3:
        heads, kv_heads = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
        width = qs[2]
        if (
            not heads
            or heads != kv_heads
            or width is None
            or width % heads
            or ks[2] != width
            or vs[2] != width
        ):
            return None
        size = width // heads
    elif len(qs) == 4:
        heads, size = qs[1], qs[3]
        if (
            heads is None
            or size is None
            or ks[1] != heads
            or vs[1] != heads
            or ks[3] != size
            or vs[3] != size
        ):
            return None
    else:
        return None
    scale = attrs.get("scale") or 1.0 / math.sqrt(size)
    return _nodes(node, len(qs), heads, size, float(scale), next(iter(elem)))


def _nodes(node: NodeProto, rank: int, heads: int, size: int, scale: float, elem: int) -> list[NodeProto]:
    base = node.output[0]
    q, k, v = node.input[:3]
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    scale_value = np.array(scale, dtype=dtype)
    out: list[NodeProto] = []

    def add(op: str, ins: list[str], name: str, **attrs: object) -> str:
        out.append(helper.make_node(op, ins, [f"{base}/{name}"], name=f"{base}/{name}", **attrs))  # type: ignore[arg-type]
        return f"{base}/{name}"

    def const(name: str, value: np.ndarray) -> str:
        return add("Constant", [], name, value=numpy_helper.from_array(value))

    factor = const("scale", scale_value)
    if rank == 3:
        split = const("split_shape", np.array([0, 0, heads, size], np.int64))
        qh = add("Transpose", [add("Reshape", [q, split], "q_split")], "q_heads", perm=[0, 2, 1, 3])
        kt = add("Transpose", [add("Reshape", [k, split], "k_split")], "k_heads_t", perm=[0, 2, 3, 1])
        vh = add("Transpose", [add("Reshape", [v, split], "v_split")], "v_heads", perm=[0, 2, 1, 3])
    else:
        qh, vh = q, v
        kt = add("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
    scores = add("Mul", [add("MatMul", [qh, kt], "scores"), factor], "scaled")
    weighted = add("MatMul", [add("Softmax", [scores], "probs", axis=-1), vh], "context")
    if rank == 3:
        merged = add("Transpose", [weighted], "context_t", perm=[0, 2, 1, 3])
        merge = const("merge_shape", np.array([0, 0, heads * size], np.int64))
        out.append(helper.make_node("Reshape", [merged, merge], [base], name=f"{base}/merge"))
    else:
        out[-1].output[0] = base
    return out
