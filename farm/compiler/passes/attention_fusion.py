"""Attention fusion: the multi-head attention subgraph of transformer exports => one Attention node."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.ir.graph import Dim
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, fits_into

SPLIT_HEADS = [0, 2, 1, 3]  # [B, S, H, D] -> [B, H, S, D] (and back)
SPLIT_HEADS_KT = [0, 2, 3, 1]  # [B, S, H, D] -> [B, H, D, S]
SWAP_LAST = [0, 1, 3, 2]
PACKED_QKV = [2, 0, 3, 1, 4]  # [B, S, 3, H, D] -> [3, B, H, S, D]
SEQ_FIRST_MERGE = [2, 0, 1, 3]  # [B, H, S, D] -> [S, B, H, D]
SEQ_FIRST_PACKED = [3, 1, 2, 0, 4]  # [1, S, B, 3, E] -> [3, S, B, 1, E]
SWAP_FIRST = [1, 0, 2]


@dataclass
class Packed:
    """Where a Q, K or V input of Attention comes from: ``source`` itself ([B, S, H*D]), or part
    ``index`` of ``parts`` equal chunks of ``source``'s last axis (a packed QKV projection)."""

    source: str
    heads: int
    head_size: int
    nodes: list[Node]
    index: int = -1
    parts: int = 1
    seq_first: bool = False  # source is [S, B, H*D] (torch.nn.MultiheadAttention's layout)


@dataclass
class AttentionMatch:
    nodes: list[Node] = field(default_factory=list)
    q: Packed | None = None
    k: Packed | None = None
    v: Packed | None = None
    mask: str = ""
    scale: float = 1.0
    output_node: Node | None = None  # the final Reshape, whose output the Attention takes over
    seq_first: bool = False


class AttentionFusion(RewritePass[AttentionMatch]):
    """Reshape/Transpose(Q), (K)ᵀ, (V) -> MatMul(q, kᵀ) -> Div/Mul(scale) -> Add(mask) -> Softmax ->
    MatMul(·, v) -> Transpose -> Reshape => Attention(Q, K, V, mask; num_heads, scale).

    Q, K, V are the packed [B, S, H*D] tensors before the head split (for a packed QKV projection
    reshaped to [B, S, 3, H, D] and picked apart by Gather or Split+Squeeze, the three chunks of a
    new Split of the projection's last axis). Scales may sit on the scores or on
    q and kᵀ (as scaled_dot_product_attention exports); the mask Add is optional and must broadcast
    into [B, H, Sq, Sk] without growing it. torch.nn.MultiheadAttention's sequence-first layout
    ([S, B*H, D] head splits of [S, B, H*D] tensors, merged back with Transpose(2,0,1,3)) is matched
    too: its Q/K/V get a Transpose to [B, S, H*D] and the Attention's result one back.
    """

    name = "attention_fusion"
    anchor_ops = ("Softmax",)

    def match(self, node: Node, view: GraphView) -> AttentionMatch | None:
        rank = view.graph.values[node.inputs[0]].rank
        if rank != 4 or int(node.attr("axis", -1)) not in (-1, 3):
            return None
        found = AttentionMatch()
        if not self._output_side(node, view, found) or not self._score_side(node.inputs[0], view, found):
            return None
        q, k, v = found.q, found.k, found.v
        assert q is not None and k is not None and v is not None
        if len({q.heads, k.heads, v.heads}) != 1 or len({q.head_size, k.head_size, v.head_size}) != 1:
            return None
        if not all(view.is_float(p.source) for p in (q, k, v)):
            return None
        if any(p.seq_first != found.seq_first for p in (q, k, v)):
            return None
        assert found.output_node is not None
        out_shape = view.shape(found.output_node.outputs[0])
        if out_shape is None or out_shape[-1] != q.heads * q.head_size:
            return None
        if len(out_shape) != 3 and not (found.seq_first and len(out_shape) == 2):
            return None
        q_shape = view.shape(q.source) if q.index < 0 and not found.seq_first else None
        if q_shape is not None and any(
            isinstance(a, int) and isinstance(b, int) and a != b
            for a, b in zip(q_shape, out_shape, strict=True)
        ):
            return None
        for part in (q, k, v):
            found.nodes += part.nodes
        return found

    def rewrite(self, found: AttentionMatch, view: GraphView, edit: GraphEdit) -> str:
        last = found.output_node
        assert last is not None
        inputs = []
        splits: dict[str, list[str]] = {}
        batch_first: dict[str, str] = {}
        for part in (found.q, found.k, found.v):
            assert part is not None
            source = part.source
            if part.seq_first:
                if source not in batch_first:
                    batch_first[source] = _transposed(source, view, edit, last)
                source = batch_first[source]
            if part.index < 0:
                inputs.append(source)
                continue
            if source not in splits:
                splits[source] = self._split(source, part, view, edit, before=last)
            inputs.append(splits[source][part.index])
        if found.mask:
            inputs.append(found.mask)
        q = found.q
        assert q is not None
        edit.remove(found.nodes)
        out = last.outputs[0]
        attrs = {"num_heads": q.heads, "scale": found.scale}
        if not found.seq_first:
            edit.new_node("Attention", inputs, [out], attrs, before=last, name_hint="Attention")
            return "fused Attention"
        q_shape = view.shape(inputs[0])
        assert q_shape is not None
        result = edit.new_value("attention_out", view.dtype(out), q_shape)
        edit.new_node("Attention", inputs, [result], attrs, before=last, name_hint="Attention")
        seq_first = _transposed(result, view, edit, last)
        if view.shape(out) == view.shape(seq_first) and not view.is_output(out):
            edit.rename(out, seq_first)
        elif view.shape(out) == view.shape(seq_first):
            edit.new_node("Identity", [seq_first], [out], before=last)
        else:
            target = edit.new_const("attention_shape", np.array([-1, q.heads * q.head_size], dtype=np.int64))
            edit.new_node("Reshape", [seq_first, target], [out], before=last)
        return "fused Attention (sequence-first)"

    def nodes_of(self, found: AttentionMatch) -> list[Node]:
        return found.nodes

    # ---------------------------------------------------------------- matching
    def _output_side(self, softmax: Node, view: GraphView, found: AttentionMatch) -> bool:
        """Softmax -> MatMul(p, v) -> Transpose(0,2,1,3) -> Reshape([B, S, H*D])."""
        context = view.only_consumer(softmax.outputs[0])
        if context is None or context.op_type != "MatMul" or context.inputs[0] != softmax.outputs[0]:
            return False
        merge = view.only_consumer(context.outputs[0])
        if (
            merge is None
            or merge.op_type != "Transpose"
            or merge.attr("perm") not in (SPLIT_HEADS, SEQ_FIRST_MERGE)
        ):
            return False
        found.seq_first = merge.attr("perm") == SEQ_FIRST_MERGE
        reshape = view.only_consumer(merge.outputs[0])
        if reshape is None or reshape.op_type != "Reshape":
            return False
        v = _heads(context.inputs[1], view, transposed=False)
        if v is None:
            return False
        found.v = v
        found.output_node = reshape
        found.nodes = [softmax, context, merge, reshape]
        return True

    def _score_side(self, scores: str, view: GraphView, found: AttentionMatch) -> bool:
        """[Add(mask)] <- [Div/Mul(scale)] <- MatMul(q, kᵀ), with optional scales on q and kᵀ."""
        chain: list[Node] = []
        add = view.producer_of(scores, "Add")
        if add is not None and view.only_consumer(scores) is not None:
            for s, mask in (add.inputs, add.inputs[::-1]):
                if _product_source(s, view) is not None and fits_into(view.shape(mask), view.shape(s)):
                    found.mask = mask
                    chain.append(add)
                    scores = s
                    break
            else:
                return False
        source = _product_source(scores, view)
        if source is None:
            return False
        matmul, scale, scale_nodes = source
        chain += scale_nodes + [matmul]
        q_name, q_scale, q_nodes = _strip_scale(matmul.inputs[0], view)
        k_name, k_scale, k_nodes = _strip_scale(matmul.inputs[1], view)
        q = _heads(q_name, view, transposed=False)
        k = _heads(k_name, view, transposed=True)
        if q is None or k is None:
            return False
        found.q, found.k = q, k
        found.scale = scale * q_scale * k_scale
        found.nodes = chain[::-1] + q_nodes + k_nodes + found.nodes
        return True

    @staticmethod
    def _split(source: str, part: Packed, view: GraphView, edit: GraphEdit, before: Node) -> list[str]:
        shape = view.shape(source)
        assert shape is not None
        width = part.heads * part.head_size
        outputs = [
            edit.new_value(f"{source}_part", view.dtype(source), tuple(shape[:-1]) + (width,))
            for _ in range(part.parts)
        ]
        sizes = edit.new_const(f"{source}_split", np.full(part.parts, width, dtype=np.int64))
        edit.new_node("Split", [source, sizes], outputs, {"axis": -1}, before=before)
        return outputs


def _strip_scale(name: str, view: GraphView) -> tuple[str, float, list[Node]]:
    """A tensor multiplied (or divided) by a scalar constant, with a single reader: (tensor, factor, nodes)."""
    node = view.producer(name)
    if node is None or node.op_type not in ("Mul", "Div") or view.only_consumer(name) is None:
        return name, 1.0, []
    if node.op_type == "Div":
        c = view.scalar(node.inputs[1])
        return (node.inputs[0], 1.0 / c, [node]) if c else (name, 1.0, [])
    for x, c_name in (node.inputs, node.inputs[::-1]):
        c = view.scalar(c_name)
        if c is not None and view.const(x) is None:
            return x, c, [node]
    return name, 1.0, []


def _product_source(name: str, view: GraphView) -> tuple[Node, float, list[Node]] | None:
    """The MatMul behind ``name`` (through one optional scalar scale): (matmul, scale, scale nodes)."""
    inner, scale, nodes = _strip_scale(name, view)
    matmul = view.producer_of(inner, "MatMul")
    if matmul is None or view.only_consumer(inner) is None:
        return None
    return matmul, scale, nodes


def _heads(name: str, view: GraphView, *, transposed: bool) -> Packed | None:
    """Recognize a head split: [B, H, S, D] (or [B, H, D, S] for ``transposed``) made from a packed tensor."""
    if view.only_consumer(name) is None:
        return None
    if not transposed and view.producer_of(name, ("Gather", "Squeeze")) is not None:
        return _packed_qkv_part(name, view)
    if not transposed and view.producer_of(name, "Reshape") is not None:
        return _seq_first_heads(name, view)
    t = view.producer_of(name, "Transpose")
    if t is None:
        return None
    perm = t.attr("perm")
    if transposed and perm == SWAP_LAST:
        inner = _heads(t.inputs[0], view, transposed=False)
        if inner is not None:
            inner.nodes.append(t)
        return inner
    wanted = SPLIT_HEADS_KT if transposed else SPLIT_HEADS
    if perm == wanted:
        reshape = view.producer_of(t.inputs[0], "Reshape")
        if reshape is None or view.only_consumer(t.inputs[0]) is not t:
            return None
        dims = _reshape_dims(reshape, view, 4)
        source_shape = view.shape(reshape.inputs[0])
        if dims is None or source_shape is None or len(source_shape) != 3:
            return None
        heads, size = dims[2], dims[3]
        if source_shape[-1] != heads * size:
            return None
        return Packed(reshape.inputs[0], heads, size, [reshape, t])
    return None


def _packed_qkv_part(name: str, view: GraphView) -> Packed | None:
    """Part i of Transpose(2,0,3,1,4)(Reshape(X, [B, S, n, H, D])), taken by Gather(i, axis=0) or by
    Squeeze(axis 0) of Split/Slice (torch's ``unbind``) -> part i of X's last axis."""
    picker = view.producer_of(name, ("Gather", "Squeeze"))
    if picker is None:
        return None
    if picker.op_type == "Gather":
        index_data = view.const(picker.input(1))
        if int(picker.attr("axis", 0)) != 0 or index_data is None or index_data.ndim != 0:
            return None
        index, stacked = int(index_data), picker.inputs[0]
    else:
        found = _unbound_part(picker, view)
        if found is None:
            return None
        index, stacked = found
    t = view.producer_of(stacked, "Transpose")
    if t is None or t.attr("perm") != PACKED_QKV:
        return None
    reshape = view.producer_of(t.inputs[0], "Reshape")
    if reshape is None:
        return None
    dims = _reshape_dims(reshape, view, 5)
    source_shape = view.shape(reshape.inputs[0])
    if dims is None or source_shape is None or len(source_shape) != 3:
        return None
    parts, heads, size = dims[2], dims[3], dims[4]
    if source_shape[-1] != parts * heads * size or not 0 <= index < parts:
        return None
    return Packed(reshape.inputs[0], heads, size, [picker], index=index, parts=parts)


def _seq_first_heads(name: str, view: GraphView) -> Packed | None:
    """Reshape([B, H, S, D]) of Transpose(1,0,2) of Reshape(P, [S, B*H, D]) with P [S, B, H*D]."""
    merge = view.producer_of(name, "Reshape")
    t = view.producer_of(merge.inputs[0], "Transpose") if merge is not None else None
    if (
        merge is None
        or t is None
        or t.attr("perm") != SWAP_FIRST
        or view.only_consumer(t.outputs[0]) is not merge
    ):
        return None
    split = view.producer_of(t.inputs[0], "Reshape")
    if split is None or view.only_consumer(split.outputs[0]) is not t:
        return None
    heads_shape, flat_shape = view.shape(merge.outputs[0]), view.shape(split.outputs[0])
    source = split.inputs[0]
    source_shape = view.shape(source)
    if heads_shape is None or len(heads_shape) != 4 or flat_shape is None or len(flat_shape) != 3:
        return None
    heads, size = heads_shape[1], heads_shape[3]
    if not isinstance(heads, int) or not isinstance(size, int) or flat_shape[2] != size:
        return None
    if source_shape is None or len(source_shape) != 3 or source_shape[2] != heads * size:
        return None
    nodes = [split, t, merge]
    part = _seq_first_packed_part(source, view)
    if part is None:
        return Packed(source, heads, size, nodes, seq_first=True)
    index, parts, packed, picker = part
    return Packed(packed, heads, size, nodes + [picker], index=index, parts=parts, seq_first=True)


def _seq_first_packed_part(name: str, view: GraphView) -> tuple[int, int, str, Node] | None:
    """Gather(i) of Squeeze(3) of Transpose(3,1,2,0,4) of Unsqueeze(0) of Reshape(X, [S, B, n, E])."""
    gather = view.producer_of(name, "Gather")
    if gather is None or int(gather.attr("axis", 0)) != 0 or view.only_consumer(name) is None:
        return None
    index_data = view.const(gather.input(1))
    squeeze = view.producer_of(gather.inputs[0], "Squeeze")
    if index_data is None or index_data.ndim != 0 or squeeze is None or view.ints(squeeze.input(1)) != [3]:
        return None
    t = view.producer_of(squeeze.inputs[0], "Transpose")
    unsqueeze = view.producer_of(t.inputs[0], "Unsqueeze") if t is not None else None
    if t is None or t.attr("perm") != SEQ_FIRST_PACKED or unsqueeze is None:
        return None
    reshape = view.producer_of(unsqueeze.inputs[0], "Reshape")
    if view.ints(unsqueeze.input(1)) != [0] or reshape is None:
        return None
    stacked, packed_shape = view.shape(reshape.outputs[0]), view.shape(reshape.inputs[0])
    if stacked is None or len(stacked) != 4 or packed_shape is None or len(packed_shape) != 3:
        return None
    parts, width = stacked[2], stacked[3]
    if not isinstance(parts, int) or not isinstance(width, int) or packed_shape[2] != parts * width:
        return None
    index = int(index_data)
    return (index, parts, reshape.inputs[0], gather) if 0 <= index < parts else None


def _transposed(name: str, view: GraphView, edit: GraphEdit, before: Node) -> str:
    """A new Transpose(1, 0, 2) of a rank-3 value (sequence-first <-> batch-first)."""
    shape = view.shape(name)
    assert shape is not None and len(shape) == 3
    out = edit.new_value(f"{name}_t", view.dtype(name), (shape[1], shape[0], shape[2]))
    edit.new_node("Transpose", [name], [out], {"perm": SWAP_FIRST}, before=before)
    return out


def _unbound_part(squeeze: Node, view: GraphView) -> tuple[int, str] | None:
    """Squeeze(axis 0) of output i of Split(axis 0, ones), or of Slice(i:i+1 on axis 0): (i, sliced)."""
    if view.ints(squeeze.input(1)) != [0]:
        return None
    part = squeeze.inputs[0]
    split = view.producer_of(part, "Split")
    if split is not None:
        sizes = view.ints(split.input(1)) if split.input(1) else [1] * len(split.outputs)
        if int(split.attr("axis", 0)) != 0 or sizes != [1] * len(split.outputs):
            return None
        return split.outputs.index(part), split.inputs[0]
    sliced = view.producer_of(part, "Slice")
    if sliced is None:
        return None
    starts, ends = view.ints(sliced.input(1)), view.ints(sliced.input(2))
    axes = view.ints(sliced.input(3)) if sliced.input(3) else [0]
    steps = view.ints(sliced.input(4)) if sliced.input(4) else [1]
    if starts is None or ends is None or len(starts) != 1 or axes != [0] or steps != [1]:
        return None
    if starts[0] < 0 or ends[0] != starts[0] + 1:
        return None
    return starts[0], sliced.inputs[0]


def _reshape_dims(reshape: Node, view: GraphView, rank: int) -> list[int] | None:
    """The static trailing dims (all but the first two) of a head-split Reshape's result."""
    shape: tuple[Dim, ...] | None = view.shape(reshape.outputs[0])
    target = view.ints(reshape.input(1))
    if (shape is None or len(shape) != rank) and target is not None and len(target) == rank:
        shape = tuple(target)
    if shape is None or len(shape) != rank:
        return None
    tail = shape[2:]
    if not all(isinstance(d, int) and d > 0 for d in tail):
        return None
    return [0, 0] + [int(d) for d in tail]
