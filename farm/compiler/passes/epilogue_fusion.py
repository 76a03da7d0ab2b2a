"""Epilogue fusion: bias, activation and residual add folded into Conv / Gemm / MatMul; bias and
activation into ConvTranspose."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, channel_vector, fits_into, is_close

ANCHORS = ("Conv", "FusedConv", "ConvTranspose", "FusedConvTranspose", "MatMul", "FusedGemm")
CHANNEL_OPS = ("FusedConv", "FusedConvTranspose")  # NCHW outputs: the bias runs along axis 1
SIMPLE_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Epilogue:
    """An anchor and what follows it. ``nodes[0]`` is the anchor, the rest are absorbed nodes."""

    nodes: list[Node]
    op: str  # FusedConv, FusedConvTranspose or FusedGemm
    inputs: list[str]  # X, W
    attrs: dict[str, object]
    bias: np.ndarray | None = None
    bias_name: str = ""  # an existing constant bias to keep when unchanged
    residual: str = ""
    residual_mode: str = ""
    activation: str = ""
    act_alpha: float = 0.0
    act_beta: float = 0.0
    absorbed: list[str] = field(default_factory=list)


class EpilogueFusion(RewritePass[Epilogue]):
    """Conv/MatMul/FusedConv/FusedGemm(x, W) -> Add(per-channel constant) -> activation -> Add(R) =>
    FusedConv/FusedGemm(x, W, bias, R; activation, residual="post"); an Add(R) before the activation
    gives residual="pre". Activations: Relu, LeakyRelu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish,
    Gelu (both forms), Silu written as x * Sigmoid(x) and HardSwish written as x * HardSigmoid(x).
    ConvTranspose(x, W) -> Add(per-channel constant) -> activation => FusedConvTranspose(x, W,
    bias; activation): no residual (``ir.fused``).
    """

    name = "epilogue_fusion"
    anchor_ops = ANCHORS

    def match(self, node: Node, view: GraphView) -> Epilogue | None:
        found = self._start(node, view)
        if found is None:
            return None
        out = node.outputs[0]
        while True:
            step = self._extend(found, out, view)
            if step is None:
                break
            out = step
        return found if len(found.nodes) > 1 else None

    def rewrite(self, found: Epilogue, view: GraphView, edit: GraphEdit) -> str:
        anchor, last = found.nodes[0], found.nodes[-1]
        bias = found.bias_name
        if found.bias is not None:
            bias = edit.new_const(f"{anchor.name}_bias", found.bias)
        attrs = dict(found.attrs)
        attrs.update(activation=found.activation, alpha=found.act_alpha, beta=found.act_beta)
        inputs = list(found.inputs) + [bias]
        if found.residual:
            inputs.append(found.residual)
            attrs["residual"] = found.residual_mode
        else:
            attrs.pop("residual", None)
            while inputs[-1] == "":
                inputs.pop()
        edit.remove(found.nodes)
        edit.new_node(found.op, inputs, [last.outputs[0]], attrs, before=last, name_hint=anchor.name)
        return f"fused {found.op} epilogues ({'+'.join(found.absorbed)})"

    def nodes_of(self, found: Epilogue) -> list[Node]:
        return found.nodes

    # ---------------------------------------------------------------- matching
    def _start(self, node: Node, view: GraphView) -> Epilogue | None:
        x, w = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        if not view.is_float(out) or view.shape(out) is None:
            return None
        if node.op_type in ("Conv", "ConvTranspose", "MatMul"):
            if node.op_type == "MatMul" and min(len(view.shape(x) or ()), len(view.shape(w) or ())) < 2:
                return None  # 1-D MatMul operands are not FusedGemm's broadcasting
            if node.op_type == "MatMul":
                return Epilogue([node], "FusedGemm", [x, w], {"transB": 0})
            return Epilogue([node], f"Fused{node.op_type}", [x, w], dict(node.attrs), bias_name=node.input(2))
        found = Epilogue(
            [node],
            node.op_type,
            [x, w],
            dict(node.attrs),
            bias_name=node.input(2),
            residual=node.input(3),
            residual_mode=str(node.attr("residual", "")) if node.input(3) else "",
            activation=str(node.attr("activation", "")),
            act_alpha=float(node.attr("alpha", 0.0)),
            act_beta=float(node.attr("beta", 0.0)),
        )
        return found

    def _extend(self, found: Epilogue, cur: str, view: GraphView) -> str | None:
        """Absorb the next node after ``cur`` when the guard allows; returns the new current value."""
        if found.residual_mode == "post" or (found.activation and found.residual):
            return None
        if not found.activation:
            gated = self._gated(cur, view)
            if gated is not None:
                gate, mul = gated
                found.nodes += [gate, mul]
                found.activation = "Silu" if gate.op_type == "Sigmoid" else "HardSwish"
                found.act_alpha, found.act_beta = 0.0, 0.0
                found.absorbed.append(found.activation)
                return mul.outputs[0]
        nxt = view.only_consumer(cur)
        if nxt is None or view.dtype(nxt.outputs[0]) != view.dtype(cur):
            return None
        if nxt.op_type in SIMPLE_ACTIVATIONS and not found.activation:
            params = activation_params(nxt, view)
            if params is None:
                return None
            found.activation, found.act_alpha, found.act_beta = params
            found.nodes.append(nxt)
            found.absorbed.append(found.activation)
            return nxt.outputs[0]
        if nxt.op_type != "Add" or found.residual:
            return None
        other = view.other_input(nxt, cur)
        if other is None:
            return None
        if not found.activation and self._take_bias(found, other, cur, view):
            found.nodes.append(nxt)
            found.absorbed.append("bias")
            return nxt.outputs[0]
        if found.op == "FusedConvTranspose":
            return None  # no residual input
        if not fits_into(view.shape(other), view.shape(cur)) or view.dtype(other) != view.dtype(cur):
            return None
        found.residual = other
        found.residual_mode = "post" if found.activation else "pre"
        found.nodes.append(nxt)
        found.absorbed.append("residual")
        return nxt.outputs[0]

    def _take_bias(self, found: Epilogue, other: str, cur: str, view: GraphView) -> bool:
        data = view.const(other)
        shape = view.shape(cur)
        if data is None or shape is None or data.ndim > len(shape):
            return False
        channels = self._channels(found, view)
        axis = 1 if found.op in CHANNEL_OPS else len(shape) - 1
        vector = channel_vector(data, len(shape), axis)
        if channels is None or vector is None or vector.size not in (1, channels):
            return False
        existing = (
            found.bias
            if found.bias is not None
            else (view.const(found.bias_name) if found.bias_name else None)
        )
        if found.bias_name and existing is None:
            return False  # a computed bias cannot be merged with a constant at build time
        total = np.broadcast_to(vector, (channels,)).astype(data.dtype)
        if existing is not None:
            total = (existing.reshape(-1) + total).astype(existing.dtype)
        found.bias = np.ascontiguousarray(total)
        return True

    @staticmethod
    def _channels(found: Epilogue, view: GraphView) -> int | None:
        out_shape = view.shape(found.nodes[0].outputs[0])
        if not out_shape:
            return None
        dim = out_shape[1] if found.op in CHANNEL_OPS else out_shape[-1]
        return dim if isinstance(dim, int) else None

    @staticmethod
    def _gated(cur: str, view: GraphView) -> tuple[Node, Node] | None:
        """cur -> Sigmoid (Silu) or HardSigmoid(1/6, 1/2) (HardSwish) -> Mul(cur, gate): cur's only two readers."""
        if not view.is_internal(cur, 2):
            return None
        readers = view.consumers(cur)
        gate = next((n for n in readers if _is_swish_gate(n)), None)
        mul = next((n for n in readers if n.op_type == "Mul"), None)
        if gate is None or mul is None or view.only_consumer(gate.outputs[0]) is not mul:
            return None
        if sorted(mul.inputs) != sorted([cur, gate.outputs[0]]):
            return None
        return gate, mul


def _is_swish_gate(node: Node) -> bool:
    if node.op_type == "Sigmoid":
        return True
    if node.op_type != "HardSigmoid":
        return False
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return is_close(alpha, 1 / 6, 1e-6) and is_close(beta, 0.5, 1e-6)


def activation_params(node: Node, view: GraphView) -> tuple[str, float, float] | None:
    """(activation, alpha, beta) for an activation node, as fused.py names them."""
    op = node.op_type
    if op == "LeakyRelu":
        return op, float(node.attr("alpha", 0.01)), 0.0
    if op == "HardSigmoid":
        return op, float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    if op == "Clip":
        low, high = node.attr("min"), node.attr("max")
        if low is None and node.input(1):
            low = view.scalar(node.input(1))
            if low is None:
                return None
        if high is None and node.input(2):
            high = view.scalar(node.input(2))
            if high is None:
                return None
        return op, float(-FLOAT32_MAX if low is None else low), float(FLOAT32_MAX if high is None else high)
    if op == "Gelu":
        return ("GeluTanh" if node.attr("approximate", "none") == "tanh" else "Gelu"), 0.0, 0.0
    return op, 0.0, 0.0
