"""Packed-QKV attention: an Attention reads its Q, K and V straight from a fused QKV projection."""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass


@dataclass
class PackedMatch:
    attention: Node
    split: Node
    source: str


class PackedAttention(RewritePass[PackedMatch]):
    """Split(X, axis=last, three equal parts) -> Attention(q, k, v, mask?) where q, k, v are the
    Split's outputs in that order and nothing else reads them => Attention(X, "", "", mask?;
    packed_qkv=1): the attention reads its heads from the packed [B, S, 3*H*D] projection in place
    instead of from three copies (at batch 8 the ViT's four Splits cost more than its LayerNorms).
    """

    name = "packed_attention"
    anchor_ops = ("Attention",)

    def match(self, node: Node, view: GraphView) -> PackedMatch | None:
        if node.attr("packed_qkv", 0) or len(node.inputs) < 3:
            return None
        q, k, v = node.inputs[:3]
        split = view.producer_of(q, "Split") if q else None
        if split is None or split.outputs != [q, k, v] or len(set(node.inputs)) != len(node.inputs):
            return None
        if any(view.only_consumer(o) is not node or view.is_output(o) for o in (q, k, v)):
            return None
        source = split.inputs[0]
        shape = view.shape(source)
        if not shape or not view.is_float(source):
            return None
        width = shape[-1]
        if int(split.attr("axis", 0)) % len(shape) != len(shape) - 1 or not isinstance(width, int):
            return None
        sizes = view.ints(split.input(1)) if split.input(1) else split.attr("split")
        parts = [int(s) for s in sizes] if sizes is not None else [width // 3] * 3
        if width % 3 or parts != [width // 3] * 3:
            return None
        return PackedMatch(node, split, source)

    def rewrite(self, found: PackedMatch, view: GraphView, edit: GraphEdit) -> str:
        node = found.attention
        edit.remove([found.split, node])
        attrs = dict(node.attrs, packed_qkv=1)
        edit.new_node("Attention", [found.source, "", "", *node.inputs[3:]], list(node.outputs), attrs,
                      before=node, name_hint=node.name)  # fmt: skip
        return "packed Attention inputs"

    def nodes_of(self, found: PackedMatch) -> list[Node]:
        return [found.split, found.attention]
