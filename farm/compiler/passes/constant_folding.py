"""Constant folding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Graph, Node, numpy_dtype, subgraphs
from farm.compiler.ir.graph import Dim
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass

# Ops whose result is not a function of their inputs, or that must survive as graph structure
# (Q/DQ carry the quantization of QAT models into precision lowering).
NEVER_FOLD = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
    }
)


@dataclass
class Folding:
    """How one node folds: ``outputs`` are the constants replacing its results, or ``reshape_target``
    is the constant shape replacing a computed Reshape shape input."""

    nodes: list[Node]
    action: str
    outputs: list[np.ndarray] | None = None
    reshape_target: np.ndarray | None = None


class ConstantFolding(RewritePass[Folding]):
    """op(c1, ..., cn) with constant inputs => constant; Shape/Size(x) of a static x => constant;
    Gather/Slice of Shape(x) picking static dims => constant; Reshape(x, computed shape) with a known
    output shape => Reshape(x, constant shape using 0 for copied dims and -1 for one unknown).

    A fold is skipped when its outputs would be larger than ``max(inputs' bytes, max_bytes)``, so that
    Expand/Tile/ConstantOfShape of big shapes do not bloat the model with constants.
    """

    name = "constant_folding"

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes

    def match(self, node: Node, view: GraphView) -> Folding | None:
        if node.op_type in NEVER_FOLD or subgraphs(node) or not node.outputs:
            return None
        if node.op_type in ("Shape", "Size"):
            return self._shape_of(node, view)
        if node.op_type in ("Gather", "Slice") and view.producer_of(node.inputs[0], "Shape"):
            found = self._pick_from_shape(node, view)
            if found is not None:
                return found
        if node.op_type == "Reshape" and view.const(node.input(1)) is None:
            return self._constant_reshape_target(node, view)
        inputs = [i for i in node.inputs if i]
        if not inputs or any(view.const(i) is None for i in inputs):
            return None
        from farm.compiler.reference import OpNotImplementedError, run_node

        arrays = [view.const(i) if i else None for i in node.inputs]
        try:
            results = run_node(node, arrays, view.graph)
        except OpNotImplementedError:
            return None  # an op the reference lacks stays for the kernels to run
        outputs = [self._as_recorded(view.graph, o, r) for o, r in zip(node.outputs, results, strict=False)]
        in_bytes = sum(a.nbytes for a in arrays if a is not None)
        if sum(r.nbytes for r in outputs) > max(in_bytes, self.max_bytes):
            return None
        return Folding([node], f"folded {node.op_type}", outputs=outputs)

    def rewrite(self, found: Folding, view: GraphView, edit: GraphEdit) -> str:
        node = found.nodes[0]
        if found.reshape_target is not None:
            edit.remove([node])
            target = edit.new_const(f"{node.name}_shape", found.reshape_target)
            edit.new_node(
                "Reshape", [node.inputs[0], target], [node.outputs[0]], dict(node.attrs), before=node
            )
            return found.action
        assert found.outputs is not None
        edit.remove([node])
        for name, data in zip(node.outputs, found.outputs, strict=False):
            if name:
                view.graph.add_const(name, data)
        return found.action

    def nodes_of(self, found: Folding) -> list[Node]:
        return found.nodes

    # ---------------------------------------------------------------- shape arithmetic
    def _shape_of(self, node: Node, view: GraphView) -> Folding | None:
        dims = _shape_entries(node, view)
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        if node.op_type == "Size":
            data = np.array(math.prod(int(d) for d in dims), dtype=np.int64)
        else:
            data = np.array(dims, dtype=np.int64)
        return Folding([node], f"folded {node.op_type}", outputs=[data])

    def _pick_from_shape(self, node: Node, view: GraphView) -> Folding | None:
        shape_node = view.producer(node.inputs[0])
        assert shape_node is not None
        dims = _shape_entries(shape_node, view)
        if dims is None:
            return None
        picked: list[Dim]
        if node.op_type == "Gather":
            indices = view.const(node.input(1))
            if indices is None or int(node.attr("axis", 0)) != 0:
                return None
            flat = [dims[int(i)] for i in indices.reshape(-1)]
            if not all(isinstance(d, int) for d in flat):
                return None
            data = np.array(flat, dtype=np.int64).reshape(indices.shape)
            return Folding([node], "folded Gather of Shape", outputs=[data])
        params = [view.ints(node.input(i)) if node.input(i) else None for i in range(1, 5)]
        starts, ends, axes, steps = params
        if (
            starts is None
            or ends is None
            or (node.input(3) and axes is None)
            or (node.input(4) and steps is None)
        ):
            return None
        if axes not in (None, [0], [-1]):
            return None
        step = steps[0] if steps else 1
        picked = list(dims)[slice(starts[0], ends[0], step)]
        if not all(isinstance(d, int) for d in picked):
            return None
        return Folding([node], "folded Slice of Shape", outputs=[np.array(picked, dtype=np.int64)])

    def _constant_reshape_target(self, node: Node, view: GraphView) -> Folding | None:
        in_shape, out_shape = view.shape(node.inputs[0]), view.shape(node.outputs[0])
        if in_shape is None or out_shape is None:
            return None
        # With allowzero=0 a 0 entry copies the input's dim (so a symbolic dim kept in place is
        # written as 0); with allowzero=1 a 0 is a literal 0 and only one -1 may stand for symbols.
        copy_ok = not int(node.attr("allowzero", 0))
        target: list[int] = []
        unknown = 0
        for i, d in enumerate(out_shape):
            if isinstance(d, int):
                target.append(d)
            elif copy_ok and i < len(in_shape) and in_shape[i] == d:
                target.append(0)
            else:
                target.append(-1)
                unknown += 1
        if unknown > 1 or (copy_ok and 0 in [d for d in out_shape if isinstance(d, int)]):
            return None
        return Folding(
            [node], "made Reshape shapes constant", reshape_target=np.array(target, dtype=np.int64)
        )

    @staticmethod
    def _as_recorded(graph: Graph, name: str, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data)
        v = graph.values.get(name)
        if v is not None and v.dtype is not None and v.dtype != "string":
            want = numpy_dtype(v.dtype)
            if data.dtype != want:
                data = data.astype(want)
        return data


def _shape_entries(node: Node, view: GraphView) -> list[Dim] | None:
    """The (possibly symbolic) entries a Shape node produces, honouring ``start``/``end``."""
    shape = view.shape(node.inputs[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return list(shape)
    rank = len(shape)
    start = int(node.attr("start", 0))
    end = node.attr("end")
    start = max(0, min(rank, start + rank if start < 0 else start))
    stop = rank if end is None else int(end)
    stop = max(0, min(rank, stop + rank if stop < 0 else stop))
    return list(shape[start:stop])
