"""GELU fusion."""

from __future__ import annotations

import math
from dataclasses import dataclass

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, is_close

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@dataclass
class GeluMatch:
    nodes: list[Node]
    x: str
    approximate: str  # "none" or "tanh"


class GeluFusion(RewritePass[GeluMatch]):
    """0.5 * x * (1 + Erf(x / √2)) => Gelu(x); 0.5 * x * (1 + Tanh(√(2/π) (x + 0.044715 x³))) =>
    Gelu(x, approximate="tanh"). The products may come in any order the exporters use
    ((x*a)*0.5, (x*0.5)*a, x*(a*0.5)); x/√2 may be x*(1/√2); x³ may be Pow(x, 3) or x*x*x.
    (ONNX's own Gelu op already is the fused op.)
    """

    name = "gelu_fusion"
    anchor_ops = ("Erf", "Tanh")

    def match(self, node: Node, view: GraphView) -> GeluMatch | None:
        inner = view.producer(node.inputs[0])
        if inner is None or view.only_consumer(node.inputs[0]) is not node:
            return None
        if node.op_type == "Erf":
            found = self._erf_argument(inner, view)
            approximate = "none"
        else:
            found = self._tanh_argument(inner, view)
            approximate = "tanh"
        if found is None:
            return None
        x, head = found
        if not view.is_float(x):
            return None
        tail = _one_plus_times_half_x(node.outputs[0], x, view)
        if tail is None:
            return None
        return GeluMatch(head + [node] + tail, x, approximate)

    def rewrite(self, found: GeluMatch, view: GraphView, edit: GraphEdit) -> str:
        last = found.nodes[-1]
        edit.remove(found.nodes)
        edit.new_node(
            "Gelu",
            [found.x],
            [last.outputs[0]],
            {"approximate": found.approximate},
            before=last,
            name_hint="Gelu",
        )
        return f"fused Gelu ({'erf' if found.approximate == 'none' else 'tanh'} form)"

    def nodes_of(self, found: GeluMatch) -> list[Node]:
        return found.nodes

    @staticmethod
    def _erf_argument(node: Node, view: GraphView) -> tuple[str, list[Node]] | None:
        """x / √2 or x * (1/√2) -> (x, [node])."""
        if node.op_type == "Div" and is_close(view.scalar(node.inputs[1]), SQRT2):
            return node.inputs[0], [node]
        if node.op_type == "Mul":
            for x, c in (node.inputs, node.inputs[::-1]):
                if is_close(view.scalar(c), 1.0 / SQRT2) and view.const(x) is None:
                    return x, [node]
        return None

    @staticmethod
    def _tanh_argument(node: Node, view: GraphView) -> tuple[str, list[Node]] | None:
        """√(2/π) * (x + 0.044715 * x³) -> (x, nodes)."""
        inner = _times_constant(node, SQRT_2_OVER_PI, view)
        add = view.producer_of(inner or "", "Add")
        if add is None or view.only_consumer(add.outputs[0]) is not node:
            return None
        for x, cubic_term in (add.inputs, add.inputs[::-1]):
            scaled = view.producer_of(cubic_term, "Mul")
            if scaled is None or view.only_consumer(cubic_term) is not add:
                continue
            cube = view.producer(_times_constant(scaled, 0.044715, view) or "")
            if cube is None or view.only_consumer(cube.outputs[0]) is not scaled:
                continue
            cube_nodes = _cube_of(cube, x, view)
            if cube_nodes is not None:
                return x, cube_nodes + [scaled, add, node]
        return None


def _times_constant(node: Node, constant: float, view: GraphView) -> str | None:
    """For Mul(v, c) or Mul(c, v) with c ≈ ``constant``: v."""
    if node.op_type != "Mul":
        return None
    for v, c in (node.inputs, node.inputs[::-1]):
        if is_close(view.scalar(c), constant):
            return v
    return None


def _cube_of(node: Node, x: str, view: GraphView) -> list[Node] | None:
    """Pow(x, 3), Mul(x, Mul(x, x)) or Mul(Mul(x, x), x) -> the nodes."""
    if node.op_type == "Pow":
        return [node] if node.inputs[0] == x and view.scalar(node.inputs[1]) == 3.0 else None
    if node.op_type != "Mul" or x not in node.inputs:
        return None
    other = view.other_input(node, x)
    square = view.producer_of(other or "", "Mul")
    if square is None or square.inputs != [x, x] or view.only_consumer(square.outputs[0]) is not node:
        return None
    return [square, node]


def _one_plus_times_half_x(e: str, x: str, view: GraphView) -> list[Node] | None:
    """From e = Erf/Tanh output: Add(e, 1) then 0.5 * x * (1 + e) in an exporter's order."""
    add = view.only_consumer(e)
    if add is None or add.op_type != "Add" or view.scalar(view.other_input(add, e) or "") != 1.0:
        return None
    a = add.outputs[0]
    first = view.only_consumer(a)
    if first is None or first.op_type != "Mul":
        return None
    other = view.other_input(first, a)
    if other is None:
        return None
    if other == x or is_close(view.scalar(other), 0.5):
        second = view.only_consumer(first.outputs[0])
        if second is None or second.op_type != "Mul":
            return None
        want_half = other == x
        rest = view.other_input(second, first.outputs[0])
        if rest is None or (is_close(view.scalar(rest), 0.5) if want_half else rest == x) is False:
            return None
        return [add, first, second]
    half_x = view.producer_of(other, "Mul")
    if half_x is None or view.only_consumer(other) is not first:
        return None
    if _times_constant(half_x, 0.5, view) != x:
        return None
    return [half_x, add, first]
