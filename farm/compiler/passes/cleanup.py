"""Identity, cast and reshape cleanup."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass

# Integers a float type represents exactly: 2**mantissa_bits (sign handled separately).
_FLOAT_MANTISSA = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
_FLOAT_EXPONENT = {"float16": 5, "bfloat16": 8, "float32": 8, "float64": 11}
_INT_BITS = {
    "int8": (8, True),
    "uint8": (8, False),
    "int16": (16, True),
    "uint16": (16, False),
    "int32": (32, True),
    "uint32": (32, False),
    "int64": (64, True),
    "uint64": (64, False),
}


def cast_is_exact(src: str, dst: str) -> bool:
    """Whether casting ``src`` to ``dst`` keeps every value exactly (so a later cast can skip it)."""
    if src == dst:
        return True
    if src == "bool":
        return dst in _INT_BITS or dst in _FLOAT_MANTISSA
    if src in _INT_BITS:
        bits, signed = _INT_BITS[src]
        if dst in _INT_BITS:
            dbits, dsigned = _INT_BITS[dst]
            if signed and not dsigned:
                return False
            return dbits > bits or (dbits == bits and signed == dsigned)
        if dst in _FLOAT_MANTISSA:
            return bits - int(signed) <= _FLOAT_MANTISSA[dst]
        return False
    if src in _FLOAT_MANTISSA and dst in _FLOAT_MANTISSA:
        return _FLOAT_MANTISSA[dst] >= _FLOAT_MANTISSA[src] and _FLOAT_EXPONENT[dst] >= _FLOAT_EXPONENT[src]
    return False


@dataclass
class Simplification:
    """One simplification: drop ``nodes[0]`` and either forward ``rename`` or emit ``replacement``."""

    nodes: list[Node]
    action: str
    rename: tuple[str, str] | None = None
    replacement: tuple[str, list[str], dict[str, Any]] | None = None
    new_consts: dict[int, np.ndarray] = field(default_factory=dict)


def _perm(node: Node, view: GraphView) -> list[int] | None:
    perm = node.attr("perm")
    if perm is not None:
        return [int(p) for p in perm]
    rank = view.graph.values[node.inputs[0]].rank
    return None if rank is None else list(range(rank))[::-1]


def _axes(node: Node, view: GraphView) -> list[int] | None:
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = view.ints(node.inputs[1])
    return None if axes is None else [int(a) for a in axes]


class Cleanup(RewritePass[Simplification]):
    """Identity / Dropout / no-op Cast / no-op Reshape / cancelling Transpose or Squeeze-Unsqueeze pair (x) => x;
    Cast(Cast(x)) with an exact inner cast => Cast(x); Reshape(Reshape(x)) => Reshape(x);
    Transpose(Transpose(x, p), q) => Transpose(x, p∘q); Flatten(x) => Reshape(x).
    """

    name = "cleanup"
    anchor_ops = ("Identity", "Dropout", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")

    def match(self, node: Node, view: GraphView) -> Simplification | None:
        if not node.inputs or not node.inputs[0]:
            return None
        found = self._simplify(node, view)
        if found is not None and found.rename is not None and view.is_output(found.rename[0]):
            return None  # forwarding would rename a graph output
        return found

    def _simplify(self, node: Node, view: GraphView) -> Simplification | None:
        x, out = node.inputs[0], node.outputs[0]
        forward = Simplification([node], f"removed {node.op_type}", rename=(out, x))
        op = node.op_type
        if op == "Identity":
            return forward
        if op == "Dropout":
            return forward if self._dropout_is_identity(node, view) else None
        if op == "Cast":
            return self._cast(node, view, forward)
        if op == "Reshape":
            return self._reshape(node, view, forward)
        if op == "Transpose":
            return self._transpose(node, view, forward)
        if op in ("Squeeze", "Unsqueeze"):
            return self._squeeze_pair(node, view)
        if op == "Flatten":
            return self._flatten(node, view)
        return None

    def rewrite(self, found: Simplification, view: GraphView, edit: GraphEdit) -> str:
        node = found.nodes[0]
        edit.remove([node])
        if found.rename is not None:
            edit.rename(*found.rename)
        if found.replacement is not None:
            op, inputs, attrs = found.replacement
            inputs = list(inputs)
            for index, data in found.new_consts.items():
                inputs[index] = edit.new_const(f"{node.name}_const", data)
            edit.new_node(op, inputs, [node.outputs[0]], attrs, before=node)
        return found.action

    def nodes_of(self, found: Simplification) -> list[Node]:
        return found.nodes

    # ---------------------------------------------------------------- the rules
    def _dropout_is_identity(self, node: Node, view: GraphView) -> bool:
        if len(node.outputs) > 1 and node.outputs[1]:
            mask = node.outputs[1]
            if view.consumers(mask) or view.is_output(mask):
                return False
        training = node.input(2)
        if training:
            flag = view.const(training)
            return flag is not None and not bool(flag.reshape(-1)[0])
        return True

    def _cast(self, node: Node, view: GraphView, forward: Simplification) -> Simplification | None:
        x, out = node.inputs[0], node.outputs[0]
        src, dst = view.dtype(x), view.dtype(out)
        if src is None or dst is None:
            return None
        if src == dst:
            return forward
        inner = view.producer_of(x, "Cast")
        if inner is None:
            return None
        origin = inner.inputs[0]
        origin_type = view.dtype(origin)
        if origin_type is None or not cast_is_exact(origin_type, src):
            return None
        if origin_type == dst:
            return Simplification([node, inner], "merged Cast chains", rename=(out, origin))
        return Simplification(
            [node, inner], "merged Cast chains", replacement=("Cast", [origin], dict(node.attrs))
        )

    def _reshape(self, node: Node, view: GraphView, forward: Simplification) -> Simplification | None:
        x, out = node.inputs[0], node.outputs[0]
        in_shape, out_shape = view.shape(x), view.shape(out)
        if in_shape is not None and out_shape is not None and tuple(in_shape) == tuple(out_shape):
            return forward
        inner = view.producer_of(x, "Reshape")
        target = view.ints(node.input(1))
        if inner is None or target is None or 0 in target:
            return None
        # The outer target does not refer to the inner result's dims (no 0 entries), so the
        # inner reshape is irrelevant: reshape the origin directly.
        return Simplification(
            [node, inner],
            "merged Reshape chains",
            replacement=("Reshape", [inner.inputs[0], node.inputs[1]], {}),
        )

    def _transpose(self, node: Node, view: GraphView, forward: Simplification) -> Simplification | None:
        perm = _perm(node, view)
        if perm is None:
            return None
        if perm == list(range(len(perm))):
            return forward
        inner = view.producer_of(node.inputs[0], "Transpose")
        if inner is None:
            return None
        inner_perm = _perm(inner, view)
        if inner_perm is None or len(inner_perm) != len(perm):
            return None
        combined = [inner_perm[p] for p in perm]
        origin = inner.inputs[0]
        if combined == list(range(len(combined))):
            return Simplification([node, inner], "removed Transpose pairs", rename=(node.outputs[0], origin))
        return Simplification(
            [node, inner], "merged Transpose pairs", replacement=("Transpose", [origin], {"perm": combined})
        )

    def _squeeze_pair(self, node: Node, view: GraphView) -> Simplification | None:
        partner_op = "Unsqueeze" if node.op_type == "Squeeze" else "Squeeze"
        inner = view.producer_of(node.inputs[0], partner_op)
        if inner is None:
            return None
        axes, inner_axes = _axes(node, view), _axes(inner, view)
        origin = inner.inputs[0]
        rank = view.graph.values[origin].rank
        if axes is None or inner_axes is None or rank is None:
            return None
        # Both axis lists refer to the higher-rank tensor (Unsqueeze's output / Squeeze's input).
        high_rank = rank + len(inner_axes) if partner_op == "Unsqueeze" else rank
        if sorted(a % high_rank for a in axes) != sorted(a % high_rank for a in inner_axes):
            return None
        return Simplification(
            [node, inner], f"removed {partner_op}/{node.op_type} pairs", rename=(node.outputs[0], origin)
        )

    def _flatten(self, node: Node, view: GraphView) -> Simplification | None:
        shape = view.shape(node.inputs[0])
        if shape is None:
            return None
        rank = len(shape)
        axis = int(node.attr("axis", 1))
        axis = axis + rank if axis < 0 else axis
        head, tail = shape[:axis], shape[axis:]
        if axis == 0:
            target = [1, -1]
        elif axis == 1:
            target = [0, -1]
        elif all(isinstance(d, int) for d in head):
            target = [math.prod(int(d) for d in head), -1]
        elif all(isinstance(d, int) for d in tail):
            target = [-1, math.prod(int(d) for d in tail)]
        else:
            return None
        return Simplification(
            [node],
            "converted Flatten to Reshape",
            replacement=("Reshape", [node.inputs[0], ""], {}),
            new_consts={1: np.array(target, dtype=np.int64)},
        )
