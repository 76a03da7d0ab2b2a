"""LayerNorm fusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.ir.graph import Shape
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, reduce_axes


@dataclass
class LayerNormMatch:
    nodes: list[Node]
    x: str
    axis: int  # negative: normalized over axis..-1
    epsilon: float
    scale: np.ndarray | None  # None: keep ``scale_name``
    scale_name: str
    bias: np.ndarray | None
    bias_name: str


class LayerNormFusion(RewritePass[LayerNormMatch]):
    """(x - m) / Sqrt(ReduceMean((x - m)^2) + eps) * γ + β with m = ReduceMean(x) over trailing axes
    => LayerNorm(x, γ, β; axis, epsilon); ONNX LayerNormalization => LayerNorm.

    Accepts Pow(d, 2) or Mul(d, d) for the square, Div(d, s) or Mul(d, Reciprocal(s)) for the
    division, γ and β in either operand order or absent (γ = 1).
    """

    name = "layernorm_fusion"
    anchor_ops = ("ReduceMean", "LayerNormalization")

    def match(self, node: Node, view: GraphView) -> LayerNormMatch | None:
        if node.op_type == "LayerNormalization":
            return self._onnx_op(node, view)
        return self._decomposed(node, view)

    def rewrite(self, found: LayerNormMatch, view: GraphView, edit: GraphEdit) -> str:
        last = found.nodes[-1]
        scale = found.scale_name
        if found.scale is not None:
            scale = edit.new_const(f"{last.name}_scale", found.scale)
        bias = found.bias_name
        if found.bias is not None:
            bias = edit.new_const(f"{last.name}_bias", found.bias)
        inputs = [found.x, scale] + ([bias] if bias else [])
        edit.remove(found.nodes)
        edit.new_node(
            "LayerNorm",
            inputs,
            [last.outputs[0]],
            {"axis": found.axis, "epsilon": found.epsilon},
            before=last,
            name_hint="LayerNorm",
        )
        return "fused LayerNorm"

    def nodes_of(self, found: LayerNormMatch) -> list[Node]:
        return found.nodes

    # ---------------------------------------------------------------- the two forms
    def _onnx_op(self, node: Node, view: GraphView) -> LayerNormMatch | None:
        extra = [o for o in node.outputs[1:] if o]
        if any(view.consumers(o) or view.is_output(o) for o in extra) or not view.is_float(node.inputs[0]):
            return None
        rank = view.graph.values[node.inputs[0]].rank
        if rank is None:
            return None
        axis = int(node.attr("axis", -1))
        axis = axis - rank if axis >= 0 else axis
        return LayerNormMatch(
            [node],
            node.inputs[0],
            axis,
            float(node.attr("epsilon", 1e-5)),
            None,
            node.inputs[1],
            None,
            node.input(2),
        )

    def _decomposed(self, mean: Node, view: GraphView) -> LayerNormMatch | None:
        x = mean.inputs[0]
        shape = view.shape(x)
        if shape is None or not view.is_float(x) or int(mean.attr("keepdims", 1)) != 1:
            return None
        axes = _trailing_axes(reduce_axes(mean, view), len(shape))
        if axes is None:
            return None
        sub = view.only_consumer(mean.outputs[0])
        if sub is None or sub.op_type != "Sub" or sub.inputs != [x, mean.outputs[0]]:
            return None
        d = sub.outputs[0]
        if not view.is_internal(d, 2):
            return None
        readers = view.consumers(d)
        square = next((n for n in readers if _is_square(n, d, view)), None)
        divide = next((n for n in readers if n is not square), None)
        if square is None or divide is None:
            return None
        var = view.only_consumer(square.outputs[0])
        if var is None or var.op_type != "ReduceMean" or int(var.attr("keepdims", 1)) != 1:
            return None
        if _trailing_axes(reduce_axes(var, view), len(shape)) != axes:
            return None
        add_eps = view.only_consumer(var.outputs[0])
        if add_eps is None or add_eps.op_type != "Add":
            return None
        eps = view.scalar(view.other_input(add_eps, var.outputs[0]) or "")
        sqrt = view.only_consumer(add_eps.outputs[0])
        if eps is None or sqrt is None or sqrt.op_type != "Sqrt":
            return None
        nodes = [mean, sub, square, var, add_eps, sqrt]
        std = sqrt.outputs[0]
        if divide.op_type == "Div" and divide.inputs == [d, std]:
            if view.only_consumer(std) is not divide:
                return None
            nodes.append(divide)
        elif divide.op_type == "Mul":
            recip = view.producer_of(view.other_input(divide, d) or "", "Reciprocal")
            if recip is None or recip.inputs[0] != std or view.only_consumer(std) is not recip:
                return None
            if view.only_consumer(recip.outputs[0]) is not divide:
                return None
            nodes += [recip, divide]
        else:
            return None
        normalized_shape = shape[len(shape) - len(axes) :]
        out = divide.outputs[0]
        scale = self._affine(out, "Mul", len(shape), normalized_shape, view)
        gamma: np.ndarray | None = None
        if scale is not None:
            gamma, mul = scale
            nodes.append(mul)
            out = mul.outputs[0]
        else:
            gamma = _ones(normalized_shape, view.dtype(x))
            if gamma is None:
                return None
        shift = self._affine(out, "Add", len(shape), normalized_shape, view)
        beta: np.ndarray | None = None
        if shift is not None:
            beta, add = shift
            nodes.append(add)
        return LayerNormMatch(nodes, x, -len(axes), eps, gamma, "", beta, "")

    @staticmethod
    def _affine(
        cur: str, op: str, rank: int, normalized_shape: Shape, view: GraphView
    ) -> tuple[np.ndarray, Node] | None:
        """The Mul(γ)/Add(β) after ``cur`` with a constant that varies only over normalized axes."""
        node = view.only_consumer(cur)
        if node is None or node.op_type != op:
            return None
        data = view.const(view.other_input(node, cur) or "")
        if data is None or data.ndim > rank or data.dtype.kind != "f":
            return None
        k = len(normalized_shape)
        full = (1,) * (rank - data.ndim) + data.shape
        if any(d != 1 for d in full[: rank - k]):
            return None
        trailing = data.reshape(full[rank - k :])
        if trailing.shape != tuple(normalized_shape):
            if not all(isinstance(d, int) for d in normalized_shape):
                return None
            try:
                trailing = np.broadcast_to(trailing, tuple(normalized_shape))  # type: ignore[arg-type]
            except ValueError:
                return None
        return np.ascontiguousarray(trailing), node


def _trailing_axes(axes: list[int] | None, rank: int) -> list[int] | None:
    """Sorted normalized axes when they are the last k axes of a rank-``rank`` tensor."""
    if not axes:
        return None
    norm = sorted({a % rank for a in axes})
    return norm if norm == list(range(rank - len(norm), rank)) else None


def _is_square(node: Node, d: str, view: GraphView) -> bool:
    if node.op_type == "Mul":
        return node.inputs == [d, d]
    if node.op_type == "Pow" and node.inputs[0] == d:
        return view.scalar(node.inputs[1]) == 2.0
    return False


def _ones(shape: Shape, dtype: str | None) -> np.ndarray | None:
    if dtype is None or not all(isinstance(s, int) for s in shape):
        return None
    return np.ones(tuple(int(s) for s in shape), dtype=dtype)
