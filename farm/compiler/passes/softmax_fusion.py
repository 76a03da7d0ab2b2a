"""Softmax fusion."""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, reduce_axes


@dataclass
class SoftmaxMatch:
    nodes: list[Node]
    x: str
    axis: int


class SoftmaxFusion(RewritePass[SoftmaxMatch]):
    """Exp(x - ReduceMax(x, a)) / ReduceSum(Exp(..), a) => Softmax(x, axis=a) (also without the max
    subtraction) for a single reduction axis with keepdims=1.
    """

    name = "softmax_fusion"
    anchor_ops = ("Exp",)

    def match(self, node: Node, view: GraphView) -> SoftmaxMatch | None:
        e = node.outputs[0]
        if not view.is_internal(e, 2):
            return None
        readers = view.consumers(e)
        total = next((n for n in readers if n.op_type == "ReduceSum"), None)
        divide = next((n for n in readers if n.op_type == "Div"), None)
        if total is None or divide is None or divide.inputs != [e, total.outputs[0]]:
            return None
        if view.only_consumer(total.outputs[0]) is not divide:
            return None
        rank = view.graph.values[e].rank
        axis = _single_axis(total, view, rank)
        if axis is None:
            return None
        nodes = [node, total, divide]
        x = node.inputs[0]
        sub = view.producer_of(x, "Sub")
        if sub is not None and view.only_consumer(x) is node:
            peak = view.producer_of(sub.inputs[1], "ReduceMax")
            if (
                peak is not None
                and peak.inputs[0] == sub.inputs[0]
                and view.only_consumer(peak.outputs[0]) is sub
                and _single_axis(peak, view, rank) == axis
            ):
                nodes = [peak, sub] + nodes
                x = sub.inputs[0]
        if not view.is_float(x):
            return None
        return SoftmaxMatch(nodes, x, axis)

    def rewrite(self, found: SoftmaxMatch, view: GraphView, edit: GraphEdit) -> str:
        last = found.nodes[-1]
        edit.remove(found.nodes)
        edit.new_node("Softmax", [found.x], [last.outputs[0]], {"axis": found.axis}, before=last)
        with_max = found.nodes[0].op_type == "ReduceMax"
        return f"fused Softmax ({'with' if with_max else 'without'} max subtraction)"

    def nodes_of(self, found: SoftmaxMatch) -> list[Node]:
        return found.nodes


def _single_axis(node: Node, view: GraphView, rank: int | None) -> int | None:
    if int(node.attr("keepdims", 1)) != 1 or rank is None:
        return None
    axes = reduce_axes(node, view)
    if axes is None or len(axes) != 1:
        return None
    return axes[0] % rank - rank  # negative, so the fused op does not depend on the rank
