"""GEMM layout: drop the Transposes and Reshapes that only move rows around a row-wise GEMM."""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass


@dataclass
class LayoutMatch:
    nodes: list[Node]  # [before, gemm, after]: before stays when something else reads its output
    source: str
    kind: str


class GemmLayout(RewritePass[LayoutMatch]):
    """Transpose(x, p) -> FusedGemm(·, W) -> Transpose(·, p⁻¹) => FusedGemm(x, W) when p keeps the last
    axis; Reshape(x, [M, K]) -> FusedGemm(·, W) -> Reshape(back to x's leading dims) => FusedGemm(x, W).

    A FusedGemm with a 2-D constant B, a constant bias and no residual acts on each row of its input
    independently, so permuting or flattening the leading (row) axes commutes with it. This removes
    the layout shuffles of sequence-first exports (torch.nn.MultiheadAttention's in- and out-projection).
    """

    name = "gemm_layout"
    anchor_ops = ("FusedGemm",)

    def match(self, node: Node, view: GraphView) -> LayoutMatch | None:
        w = view.const(node.inputs[1])
        if w is None or w.ndim != 2 or node.input(3) or (node.input(2) and view.const(node.input(2)) is None):
            return None
        before = view.producer_of(node.inputs[0], ("Transpose", "Reshape"))
        after = view.only_consumer(node.outputs[0])
        if before is None or after is None or after.op_type != before.op_type:
            return None
        x = before.inputs[0]
        x_shape, out_shape = view.shape(x), view.shape(after.outputs[0])
        if x_shape is None or out_shape is None or len(x_shape) < 2:
            return None
        if before.op_type == "Transpose":
            perm, back = before.attr("perm"), after.attr("perm")
            rank = len(x_shape)
            if perm is None or back is None or perm[-1] != rank - 1 or len(back) != rank:
                return None
            if [perm[b] for b in back] != list(range(rank)):
                return None
            return LayoutMatch([before, node, after], x, "Transpose")
        flat_shape = view.shape(node.inputs[0])
        if flat_shape is None or len(flat_shape) != 2 or flat_shape[-1] != x_shape[-1]:
            return None  # the first Reshape must only merge the leading axes
        n_cols = view.shape(node.outputs[0])
        if n_cols is None or tuple(out_shape) != tuple(x_shape[:-1]) + (n_cols[-1],):
            return None
        return LayoutMatch([before, node, after], x, "Reshape")

    def rewrite(self, found: LayoutMatch, view: GraphView, edit: GraphEdit) -> str:
        before, gemm, after = found.nodes
        edit.remove([gemm, after])
        inputs = [found.source] + gemm.inputs[1:]
        edit.new_node(
            "FusedGemm", inputs, [after.outputs[0]], dict(gemm.attrs), before=after, name_hint=gemm.name
        )
        return f"removed {found.kind} pairs around FusedGemm"

    def nodes_of(self, found: LayoutMatch) -> list[Node]:
        return found.nodes[1:]
