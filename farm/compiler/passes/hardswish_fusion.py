"""HardSwish / HardSigmoid written as Add, Clip, Mul and Div: one activation node."""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, is_close
from farm.compiler.passes.epilogue_fusion import activation_params

# HardSigmoid(x; 1/6, 1/2) = Clip(x + 3, 0, 6) / 6 exactly (ONNX HardSwish is x * that).
SIXTH = 1.0 / 6.0


@dataclass
class HardSwishMatch:
    nodes: list[Node]
    x: str
    op: str  # "HardSwish" or "HardSigmoid"


class HardSwishFusion(RewritePass[HardSwishMatch]):
    """x * Clip(x + 3, 0, 6) / 6 => HardSwish(x) (PaddlePaddle's hard_swish as paddle2onnx writes
    it, with the division last; also * (1/6)); Clip(x + 3, 0, 6) / 6 => HardSigmoid(x; 1/6, 1/2)
    (the gate of ``x * (Clip(x + 3, 0, 6) / 6)``, which epilogue_fusion then takes as HardSwish).
    Each intermediate value must have no other reader, and the result x's shape and dtype.
    PP-OCR's models hold 18-61 of these four-node chains, each a pass over the activation.
    """

    name = "hardswish_fusion"
    anchor_ops = ("Clip",)

    def match(self, node: Node, view: GraphView) -> HardSwishMatch | None:
        if activation_params(node, view) != ("Clip", 0.0, 6.0):  # relu6 bounds, as inputs or attributes
            return None
        add = view.producer_of(node.inputs[0], "Add")
        if add is None or view.only_consumer(node.inputs[0]) is not node:
            return None
        x = next((v for v, c in (add.inputs, add.inputs[::-1]) if is_close(view.scalar(c), 3.0)), None)
        if x is None or view.const(x) is not None or not view.is_float(x):
            return None
        gate = node.outputs[0]
        nxt = view.only_consumer(gate)
        if nxt is None:
            return None
        found: HardSwishMatch | None = None
        if nxt.op_type == "Mul" and sorted(nxt.inputs) == sorted([x, gate]):
            last = view.only_consumer(nxt.outputs[0])
            if last is not None and _divides_by_six(last, nxt.outputs[0], view):
                found = HardSwishMatch([add, node, nxt, last], x, "HardSwish")
        elif _divides_by_six(nxt, gate, view):
            found = HardSwishMatch([add, node, nxt], x, "HardSigmoid")
        if found is None:
            return None
        out = found.nodes[-1].outputs[0]
        if view.shape(out) != view.shape(x) or view.dtype(out) != view.dtype(x):
            return None  # a constant that broadcasts x to a larger shape or another dtype
        return found

    def rewrite(self, found: HardSwishMatch, view: GraphView, edit: GraphEdit) -> str:
        last = found.nodes[-1]
        attrs = {"alpha": SIXTH, "beta": 0.5} if found.op == "HardSigmoid" else {}
        edit.remove(found.nodes)
        edit.new_node(found.op, [found.x], [last.outputs[0]], attrs, before=last, name_hint=found.op)
        return f"fused {found.op} (Add, Clip{', Mul' if found.op == 'HardSwish' else ''}, Div)"

    def nodes_of(self, found: HardSwishMatch) -> list[Node]:
        return found.nodes


def _divides_by_six(node: Node, value: str, view: GraphView) -> bool:
    """``node`` is ``value / 6`` or ``value * (1/6)`` (either operand order for the product)."""
    if node.op_type == "Div":
        return node.inputs[0] == value and is_close(view.scalar(node.inputs[1]), 6.0)
    if node.op_type == "Mul":
        other = view.other_input(node, value)
        return other is not None and is_close(view.scalar(other), SIXTH)
    return False
