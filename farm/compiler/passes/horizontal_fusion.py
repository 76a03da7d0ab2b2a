"""Horizontal fusion: sibling GEMMs or convolutions reading one input become one op and a Split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.passes.base import GraphEdit, GraphView, Pass, PassResult

CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "group")
EPILOGUE_ATTRS = ("activation", "alpha", "beta")


@dataclass
class Sibling:
    node: Node
    kind: str  # "gemm" or "conv"
    signature: tuple[object, ...]
    weight: np.ndarray
    bias: np.ndarray | None
    width: int  # output channels (conv) or columns (gemm)


class HorizontalFusion(Pass):
    """op(x, W1, b1), ..., op(x, Wn, bn) with constant weights => Split(op(x, concat(W), concat(b)))
    for MatMul/FusedGemm siblings (same transB and activation, no residual) and Conv/FusedConv siblings
    (same kernel, strides, pads, dilations, group=1 and activation, no residual). The Split's outputs
    keep the siblings' output names.
    """

    name = "horizontal_fusion"

    def run(self, graph: Graph) -> PassResult:
        result = PassResult()
        view = GraphView(graph)
        edit = GraphEdit(graph)
        for x in list(graph.values):
            groups: dict[tuple[object, ...], list[Sibling]] = {}
            for node in view.consumers(x):
                sibling = _sibling(node, x, view)
                if sibling is not None:
                    groups.setdefault((sibling.kind, sibling.signature), []).append(sibling)
            for members in groups.values():
                if len(members) >= 2 and not edit.any_claimed(m.node for m in members):
                    self._fuse(x, members, view, edit)
                    kind = members[0].kind.upper()
                    result.add(f"fused {kind} sibling groups")
                    result.add(f"merged {kind} siblings", len(members))
        edit.apply()
        return result

    @staticmethod
    def _fuse(x: str, members: list[Sibling], view: GraphView, edit: GraphEdit) -> None:
        members.sort(key=lambda m: view.position(m.node))
        first = members[0].node
        kind = members[0].kind
        trans_b = bool(first.attr("transB", 0)) if kind == "gemm" else False
        weight_axis = 0 if kind == "conv" or trans_b else 1
        weight = np.concatenate([m.weight for m in members], axis=weight_axis)
        biases = [m.bias if m.bias is not None else np.zeros(m.width, dtype=m.weight.dtype) for m in members]
        has_bias = any(m.bias is not None for m in members)
        out0 = first.outputs[0]
        out_shape = list(view.shape(out0) or ())
        split_axis = 1 if kind == "conv" else -1
        out_shape[split_axis] = sum(m.width for m in members)
        fused_out = edit.new_value(f"{first.name}_fused", view.dtype(out0), out_shape)
        w_name = edit.new_const(f"{first.name}_W_fused", weight)
        inputs = [x, w_name]
        if has_bias:
            inputs.append(edit.new_const(f"{first.name}_B_fused", np.concatenate(biases)))
        op = first.op_type
        attrs = dict(first.attrs)
        if kind == "gemm":
            fused_gemm = has_bias or any(m.node.op_type == "FusedGemm" for m in members)
            op = "FusedGemm" if fused_gemm else "MatMul"
            attrs = {} if op == "MatMul" else {"transB": int(trans_b)}
            if op == "FusedGemm":
                attrs.update(activation=first.attr("activation", ""), alpha=first.attr("alpha", 0.0))
                attrs["beta"] = first.attr("beta", 0.0)
        edit.remove(m.node for m in members)
        edit.new_node(op, inputs, [fused_out], attrs, before=first, name_hint=f"{first.name}_fused")
        sizes = edit.new_const(f"{first.name}_split", np.array([m.width for m in members], dtype=np.int64))
        edit.new_node(
            "Split",
            [fused_out, sizes],
            [m.node.outputs[0] for m in members],
            {"axis": split_axis},
            before=first,
        )


def _sibling(node: Node, x: str, view: GraphView) -> Sibling | None:
    """The node as a horizontal-fusion candidate reading ``x`` as its data input, or None."""
    if not node.inputs or node.inputs[0] != x or node.inputs.count(x) != 1 or node.input(3):
        return None
    weight = view.const(node.input(1))
    if (
        weight is None
        or weight.dtype.kind != "f"
        or not view.is_float(x)
        or view.shape(node.outputs[0]) is None
    ):
        return None
    bias = view.const(node.input(2)) if node.input(2) else None
    if node.input(2) and bias is None:
        return None
    epilogue = tuple(node.attr(k, d) for k, d in zip(EPILOGUE_ATTRS, ("", 0.0, 0.0), strict=True))
    x_rank = len(view.shape(x) or ())
    if node.op_type in ("MatMul", "FusedGemm"):
        if weight.ndim != 2 or x_rank < 2:
            return None
        trans_b = int(node.attr("transB", 0))
        width = weight.shape[0] if trans_b else weight.shape[1]
        signature = (trans_b, *epilogue, weight.shape[1] if trans_b else weight.shape[0], view.dtype(x))
        return Sibling(node, "gemm", signature, weight, _flat(bias, width), width)
    if node.op_type in ("Conv", "FusedConv"):
        if int(node.attr("group", 1)) != 1:
            return None
        conv = tuple(_hashable(node.attr(k)) for k in CONV_ATTRS)
        signature = (*conv, *epilogue, weight.shape[1:], view.dtype(x))
        return Sibling(node, "conv", signature, weight, _flat(bias, weight.shape[0]), weight.shape[0])
    return None


def _flat(bias: np.ndarray | None, width: int) -> np.ndarray | None:
    if bias is None:
        return None
    return np.broadcast_to(bias.reshape(-1), (width,)).copy()


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list | tuple | np.ndarray) else value
