"""Zero padding folded into the convolution that reads it."""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass

CONVS = ("Conv", "FusedConv")


@dataclass
class PadMatch:
    nodes: list[Node]  # [pad, conv]
    begins: list[int]  # per spatial axis
    ends: list[int]


class PadFusion(RewritePass[PadMatch]):
    """Pad(x; mode="constant", value 0, spatial pads >= 0) -> Conv(·, W, b) => Conv(x, W, b) with
    the Pad's spatial pads added to the Conv's own ``pads``.

    Guards: the Pad's pads (and ``axes``, opset 18) are constants, it pads neither the batch nor
    the channel axis, it does not crop (no negative pad), its fill is absent or 0, and the Conv
    (or FusedConv) is the only reader of its output, through the data input, with ``auto_pad``
    resolved. TensorFlow converters write SAME padding of strided convs and ``tf.pad`` as such
    a Pad, as do PyTorch's ``ZeroPad2d`` and Paddle's exports; left alone it is a copy of the
    whole padded tensor before the conv, which pads its own input anyway.
    """

    name = "pad_fusion"
    anchor_ops = ("Pad",)

    def match(self, node: Node, view: GraphView) -> PadMatch | None:
        if node.attr("mode", "constant") != "constant" or not node.outputs or not node.outputs[0]:
            return None
        out = node.outputs[0]
        conv = view.only_consumer(out)
        if conv is None or conv.op_type not in CONVS or conv.inputs[0] != out or view.is_output(out):
            return None
        if out in conv.inputs[1:] or conv.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
            return None
        pads = view.ints(node.input(1))
        if pads is None or any(p < 0 for p in pads) or len(pads) % 2:
            return None
        if node.input(2):
            fill = view.const(node.input(2))
            if fill is None or fill.size > 1 or (fill.size == 1 and float(fill.reshape(-1)[0]) != 0.0):
                return None
        shape = view.shape(node.inputs[0])
        rank = len(shape) if shape is not None else len(pads) // 2
        if node.input(3):
            axes = view.ints(node.input(3))
            if axes is None or shape is None:
                return None
        else:
            axes = list(range(len(pads) // 2))
        if len(axes) * 2 != len(pads) or rank < 3 or len(pads) // 2 > rank:
            return None
        begins, ends = [0] * rank, [0] * rank
        for i, axis in enumerate(axes):
            axis %= rank
            begins[axis], ends[axis] = pads[i], pads[len(axes) + i]
        if begins[0] or begins[1] or ends[0] or ends[1]:
            return None
        return PadMatch([node, conv], begins[2:], ends[2:])

    def rewrite(self, found: PadMatch, view: GraphView, edit: GraphEdit) -> str | None:
        pad, conv = found.nodes
        spatial = len(found.begins)
        own = [int(p) for p in conv.attr("pads", [0] * (2 * spatial))]
        if len(own) != 2 * spatial:
            return None
        pads = [own[i] + found.begins[i] for i in range(spatial)]
        pads += [own[spatial + i] + found.ends[i] for i in range(spatial)]
        attrs = dict(conv.attrs)
        attrs["pads"] = pads
        attrs.pop("auto_pad", None)
        edit.new_node(
            conv.op_type,
            [pad.inputs[0], *conv.inputs[1:]],
            list(conv.outputs),
            attrs,
            before=conv,
            name_hint=conv.name,
        )
        edit.remove([pad, conv])
        return f"folded Pad into {conv.op_type}"
