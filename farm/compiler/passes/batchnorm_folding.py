"""BatchNorm folding into the preceding Conv, ConvTranspose, Gemm or MatMul."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, channel_vector

PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class BatchNormMatch:
    nodes: list[Node]  # [producer, batchnorm]
    scale: np.ndarray | None  # s = gamma / sqrt(var + eps), per output channel (None: a bias Add)
    shift: np.ndarray | None  # t = beta - mean * s (None for a plain per-channel Mul)


class BatchNormFolding(RewritePass[BatchNormMatch]):
    """Conv(x, W, b) -> BatchNorm(γ, β, μ, σ²) => Conv(x, W*s, b*s + t) with s = γ/√(σ²+ε), t = β - μ*s
    (also ConvTranspose, Gemm, and rank-2 MatMul with constant weights, which becomes MatMul + Add);
    Conv/ConvTranspose/Gemm/MatMul(x, W, b) -> Mul(per-channel constant s) => op(x, W*s, b*s);
    Conv/ConvTranspose(x, W, b) -> Add(per-channel constant t) => op(x, W, b + t), the bias
    PaddlePaddle and some TensorFlow converters export as a separate Add, often between the conv
    and its BatchNorm, which can then fold too. (Gemm/MatMul bias Adds are epilogue_fusion's.)
    """

    name = "batchnorm_folding"
    anchor_ops = ("BatchNormalization", "Mul", "Add")

    def match(self, node: Node, view: GraphView) -> BatchNormMatch | None:
        if node.op_type == "Mul":
            return self._channel_scale(node, view)
        if node.op_type == "Add":
            return self._channel_shift(node, view)
        if len([o for o in node.outputs if o]) != 1 or int(node.attr("training_mode", 0)):
            return None
        x = node.inputs[0]
        producer = view.producer_of(x, PRODUCERS)
        if producer is None or view.only_consumer(x) is not node or not view.is_float(x):
            return None
        params = [view.const(node.input(i)) for i in range(1, 5)]
        if any(p is None for p in params):
            return None
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
        eps = float(node.attr("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        if not self._weights_fold(producer, view, scale.size):
            return None
        return BatchNormMatch([producer, node], scale, shift)

    def _channel_scale(self, mul: Node, view: GraphView) -> BatchNormMatch | None:
        for x, c in (mul.inputs, mul.inputs[::-1]):
            producer = view.producer_of(x, PRODUCERS)
            data = view.const(c)
            shape = view.shape(x)
            if producer is None or data is None or shape is None or view.only_consumer(x) is not mul:
                continue
            if data.dtype.kind != "f" or data.dtype != np.dtype(view.dtype(x) or "float32"):
                continue
            axis = 1 if producer.op_type in ("Conv", "ConvTranspose") else len(shape) - 1
            vector = channel_vector(data, len(shape), axis)
            channels = shape[axis]
            if vector is None or not isinstance(channels, int) or vector.size not in (1, channels):
                continue
            if not self._weights_fold(producer, view, channels, any_rank=True):
                continue
            scale = np.broadcast_to(vector.astype(np.float64), (channels,)).copy()
            return BatchNormMatch([producer, mul], scale, None)
        return None

    def _channel_shift(self, add: Node, view: GraphView) -> BatchNormMatch | None:
        for x, c in (add.inputs, add.inputs[::-1]):
            producer = view.producer_of(x, ("Conv", "ConvTranspose"))
            data = view.const(c)
            shape = view.shape(x)
            if producer is None or data is None or shape is None or view.only_consumer(x) is not add:
                continue
            if data.dtype.kind != "f" or data.dtype != np.dtype(view.dtype(x) or "float32"):
                continue
            vector = channel_vector(data, len(shape), 1)
            channels = shape[1]
            if vector is None or not isinstance(channels, int) or vector.size not in (1, channels):
                continue
            if not self._weights_fold(producer, view, channels):
                continue
            shift = np.broadcast_to(vector.astype(np.float64), (channels,)).copy()
            return BatchNormMatch([producer, add], None, shift)
        return None

    def _weights_fold(self, producer: Node, view: GraphView, channels: int, any_rank: bool = False) -> bool:
        w = view.const(producer.input(1))
        if w is None or w.dtype.kind != "f":
            return False
        if producer.op_type == "Conv":
            return w.shape[0] == channels and _bias_ok(view, producer.input(2), channels)
        if producer.op_type == "ConvTranspose":
            return w.shape[1] * int(producer.attr("group", 1)) == channels and _bias_ok(
                view, producer.input(2), channels
            )
        out_rank = view.graph.values[producer.outputs[0]].rank
        if (out_rank != 2 and not any_rank) or w.ndim != 2:
            return False  # BatchNorm's channel axis is 1: only the last axis of a 2-D product
        if producer.op_type == "MatMul":
            return w.shape[1] == channels
        n = w.shape[0] if int(producer.attr("transB", 0)) else w.shape[1]
        c = producer.input(2)
        bias = view.const(c) if c else None
        if c and (bias is None or bias.shape not in ((), (1,), (channels,), (1, channels))):
            return False
        return n == channels

    def rewrite(self, found: BatchNormMatch, view: GraphView, edit: GraphEdit) -> str:
        producer, bn = found.nodes
        w = view.const(producer.input(1))
        assert w is not None
        dtype = w.dtype
        out = bn.outputs[0]
        inputs = list(producer.inputs)
        attrs = dict(producer.attrs)
        op = producer.op_type
        if found.scale is None:  # a bias Add: the weight stays, the bias grows
            assert found.shift is not None and op in ("Conv", "ConvTranspose")
            b_new = (_vector(view, producer.input(2), found.shift.size) + found.shift).astype(dtype)
            inputs = (inputs + [""])[:3]
            inputs[2] = edit.new_const(f"{producer.name}_B_add", b_new)
            edit.remove([producer, bn])
            edit.new_node(op, inputs, [out], attrs, before=bn, name_hint=producer.name)
            return f"folded a channel bias Add into {op}"
        s = found.scale
        t = found.shift if found.shift is not None else np.zeros_like(s)
        if op == "Conv":
            w_new = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            b_old = _vector(view, producer.input(2), s.size)
        elif op == "ConvTranspose":
            group = int(producer.attr("group", 1))
            per_group = w.shape[1]
            grouped = w.reshape((group, w.shape[0] // group) + w.shape[1:])
            w_new = (grouped * s.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))).reshape(w.shape)
            b_old = _vector(view, producer.input(2), s.size)
        elif op == "Gemm":
            alpha, beta = float(producer.attr("alpha", 1.0)), float(producer.attr("beta", 1.0))
            axis = 0 if int(producer.attr("transB", 0)) else 1
            shape = (-1, 1) if axis == 0 else (1, -1)
            w_new = w * alpha * s.reshape(shape)
            b_old = beta * _vector(view, producer.input(2), s.size)
            attrs["alpha"], attrs["beta"] = 1.0, 1.0
        else:  # MatMul
            w_new = w * s.reshape(1, -1)
            b_old = np.zeros(s.size)
        b_new = (b_old * s + t).astype(dtype)
        w_name = edit.new_const(f"{producer.name}_W_bn", w_new.astype(dtype))
        # A bias is needed unless the producer had none and the fold adds no shift.
        has_bias = found.shift is not None or bool(producer.input(2))
        b_name = edit.new_const(f"{producer.name}_B_bn", b_new) if has_bias else ""
        edit.remove([producer, bn])
        if op == "MatMul" and has_bias:
            product = edit.new_value(f"{producer.name}_out", view.dtype(out), view.shape(out))
            edit.new_node("MatMul", [inputs[0], w_name], [product], before=bn, name_hint=producer.name)
            edit.new_node("Add", [product, b_name], [out], before=bn, name_hint=f"{producer.name}_bias")
        elif op == "MatMul":
            edit.new_node("MatMul", [inputs[0], w_name], [out], before=bn, name_hint=producer.name)
        else:
            inputs = (inputs + ["", ""])[:3]
            inputs[1], inputs[2] = w_name, b_name
            while inputs[-1] == "":
                inputs.pop()
            edit.new_node(op, inputs, [out], attrs, before=bn, name_hint=producer.name)
        what = "BatchNormalization" if found.shift is not None else "channel scale Mul"
        return f"folded {what} into {op}"


def _bias_ok(view: GraphView, name: str, channels: int) -> bool:
    return not name or (view.const(name) is not None and view.const(name).size == channels)  # type: ignore[union-attr]


def _vector(view: GraphView, name: str, size: int) -> np.ndarray:
    """A constant bias as a float64 vector of ``size`` (zeros when absent, broadcast when scalar)."""
    data = view.const(name) if name else None
    if data is None:
        return np.zeros(size)
    return np.broadcast_to(np.asarray(data, dtype=np.float64).reshape(-1), (size,)).copy()
