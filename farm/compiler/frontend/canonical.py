"""One canonical form per op, whatever the model's opset.

ONNX changed how several ops take their parameters between opsets 11 and 21. The frontend
rewrites every node into the form below, so passes, kernels and the reference see one shape of
each op. The canonical IR's semantics do not depend on ``Graph.opset``, which only records the
opset the model was imported with.

===========================================  ===================================================
op                                           canonical form
===========================================  ===================================================
Squeeze, Unsqueeze                           ``axes`` is input 1 (int64 constant when the
                                             model's opset had it as an attribute); no attribute
Reduce* (Mean, Max, Min, Prod, Sum, L1, L2,  ``axes`` is input 1 (absent = all axes unless
LogSum, LogSumExp, SumSquare)                ``noop_with_empty_axes``); attrs ``keepdims``,
                                             ``noop_with_empty_axes``
Split                                        sizes in input 1 (``split``) when given, else the
                                             attribute ``num_outputs`` = number of outputs
                                             (opset-18 meaning: ceil-sized chunks)
Softmax, LogSoftmax, Hardmax                 opset-13 meaning (one ``axis``). Older models'
                                             2-D coercion becomes the plain op when the axis is
                                             the last one, else Flatten -> op(axis=-1) -> Reshape
Upsample                                     Resize(X, "", scales) with ``mode``,
                                             coordinate_transformation_mode="asymmetric",
                                             nearest_mode="floor"
Resize                                       inputs (X, roi, scales, sizes) with empty or
                                             omitted tensors as ""
Dropout                                      Identity (the mask output, when read, is a
                                             ConstantOfShape of true); kept as Dropout only
                                             when ``training_mode`` is not a constant false
Scatter (deprecated)                         ScatterElements
DFT                                          ``axis`` as input 2 (DFT-17's attribute, default 1)
Constant                                     a constant value (``Value.const``), no node
DequantizeLinear with ``output_dtype`` (23)  DequantizeLinear (scale's type) -> Cast
Cast ``round_mode`` (24), QuantizeLinear     dropped: float8e8m0 only / computed in float64
``precision`` (23), Range ``stash_type``
(27), SpaceToDepth ``mode="DCR"`` (28)
Conv, ConvTranspose, MaxPool, AveragePool,   ``auto_pad`` resolved into explicit ``pads`` when
LpPool                                       the spatial input shape allows; Conv gets
                                             ``kernel_shape`` from the weights' shape
Clip, Pad, Slice, TopK, Resize               already input-form from opset 11 on: unchanged
===========================================  ===================================================
"""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Graph, Node

REDUCE_OPS = (
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
SOFTMAX_OPS = ("Softmax", "LogSoftmax", "Hardmax")
PADDED_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def _axes_to_input(node: Node, graph: Graph, key: str = "axes") -> None:
    """Move an int-list attribute into a new int64 constant input 1."""
    axes = node.attrs.pop(key, None)
    if axes is None:
        return
    const = graph.add_const(graph.fresh_name(f"{node.name or node.op_type}_{key}"), np.array(axes, dtype=np.int64))
    while len(node.inputs) < 1:
        node.inputs.append("")
    node.inputs[1:2] = [const.name]


def canonicalize_node(node: Node, graph: Graph, opset: int) -> list[Node]:
    """Rewrite one freshly imported node into canonical form; returns the nodes replacing it.

    May add constants to ``graph``. Nodes that need shapes (legacy Softmax, auto_pad) are
    handled later by :func:`canonicalize_with_shapes`.
    """
    op = node.op_type
    if op in ("Squeeze", "Unsqueeze") and opset < 13 or op in REDUCE_OPS and (opset < 18 if op != "ReduceSum" else opset < 13):
        _axes_to_input(node, graph)
    elif op == "Split":
        if opset < 13 and "split" in node.attrs:
            _axes_to_input(node, graph, "split")
        if not node.input(1) and "num_outputs" not in node.attrs:
            node.attrs["num_outputs"] = len(node.outputs)
        if node.input(1):
            node.attrs.pop("num_outputs", None)
    elif op == "Upsample":
        mode = node.attrs.get("mode", "nearest")
        node.op_type = "Resize"
        node.inputs = [node.input(0), "", node.input(1)]
        node.attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif op == "Resize":
        inputs = [node.input(i) for i in range(4)]
        for i in (1, 2, 3):
            data = graph.const(inputs[i]) if inputs[i] else None
            if data is not None and data.size == 0:
                inputs[i] = ""
        while inputs and not inputs[-1]:
            inputs.pop()
        node.inputs = inputs
    elif op == "DFT" and opset < 20:
        axis = node.attrs.pop("axis", 1)
        const = graph.add_const(graph.fresh_name(f"{node.name}_axis"), np.array(axis, dtype=np.int64))
        node.inputs = [node.input(0), node.input(1), const.name]
    elif op == "Scatter":
        node.op_type = "ScatterElements"
    elif op == "Dropout":
        training = graph.const(node.input(2)) if node.input(2) else np.array(False)
        if training is not None and not bool(np.asarray(training).reshape(-1)[0]):
            return _dropout_to_identity(node, graph)
    elif op in ("Cast", "CastLike"):
        node.attrs.pop("round_mode", None)  # Cast-24: only casts to float8e8m0 read it
    elif op == "QuantizeLinear":
        node.attrs.pop("precision", None)  # QuantizeLinear-23: the division runs in float64 here
    elif op == "Range":
        node.attrs.pop("stash_type", None)  # Range-27: the reference accumulates in float64
    elif op == "SpaceToDepth" and node.attrs.get("mode", "DCR") == "DCR":
        node.attrs.pop("mode", None)  # SpaceToDepth-28's default; CRD is kept
    elif op == "DequantizeLinear" and node.attrs.get("output_dtype"):
        return _dequantize_then_cast(node, graph)
    return [node]


def _dequantize_then_cast(node: Node, graph: Graph) -> list[Node]:
    """DequantizeLinear-23's ``output_dtype`` as a Cast of the scale-typed result."""
    to = int(node.attrs.pop("output_dtype"))
    real = graph.fresh_name(f"{node.outputs[0]}_real")
    graph.add_value(real)
    cast = Node("Cast", [real], [node.outputs[0]], {"to": to}, graph.fresh_name(f"{node.name}_cast"))
    node.outputs = [real]
    return [node, cast]


def _dropout_to_identity(node: Node, graph: Graph) -> list[Node]:
    out = [Node("Identity", [node.input(0)], [node.outputs[0]], {}, node.name)]
    if len(node.outputs) > 1 and node.outputs[1]:
        shape = graph.fresh_name(f"{node.name}_shape")
        graph.add_value(shape)
        out.append(Node("Shape", [node.input(0)], [shape], {}, graph.fresh_name(f"{node.name}_Shape")))
        out.append(
            Node(
                "ConstantOfShape",
                [shape],
                [node.outputs[1]],
                {"value": np.array([True])},
                graph.fresh_name(f"{node.name}_mask"),
            )
        )
    return out


def canonicalize_legacy_softmax(node: Node, graph: Graph) -> list[Node]:
    """Opset < 13 Softmax/LogSoftmax/Hardmax coerce the input to 2-D at ``axis`` (default 1).

    When ``axis`` is the last axis this is the opset-13 op; otherwise it becomes
    Flatten(axis) -> op(axis=-1) -> Reshape(back to the input's shape).
    """
    axis = int(node.attrs.get("axis", 1))
    x = graph.values.get(node.input(0))
    rank = x.rank if x is not None else None
    if rank is not None and (axis == -1 or axis == rank - 1 or rank == 0):
        node.attrs["axis"] = -1
        return [node]
    if rank is not None and axis < 0:
        axis += rank
    flat = graph.fresh_name(f"{node.name}_2d")
    soft = graph.fresh_name(f"{node.name}_2d_out")
    shape = graph.fresh_name(f"{node.name}_in_shape")
    for name in (flat, soft, shape):
        graph.add_value(name)
    return [
        Node("Flatten", [node.input(0)], [flat], {"axis": axis}, graph.fresh_name(f"{node.name}_flatten")),
        Node(node.op_type, [flat], [soft], {"axis": -1}, node.name),
        Node("Shape", [node.input(0)], [shape], {}, graph.fresh_name(f"{node.name}_shape")),
        Node("Reshape", [soft, shape], [node.outputs[0]], {}, graph.fresh_name(f"{node.name}_reshape")),
    ]


def resolve_auto_pad(node: Node, graph: Graph) -> None:
    """Replace ``auto_pad`` SAME_UPPER/SAME_LOWER/VALID by explicit ``pads`` where shapes allow,
    and give Conv/ConvTranspose an explicit ``kernel_shape`` from the weights."""
    if node.op_type in ("Conv", "ConvTranspose") and "kernel_shape" not in node.attrs:
        w = graph.values.get(node.input(1))
        if w is not None and w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]):
            node.attrs["kernel_shape"] = [int(d) for d in w.shape[2:]]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        node.attrs.pop("auto_pad", None)
        return
    kernel = node.attrs.get("kernel_shape")
    x = graph.values.get(node.input(0))
    if kernel is None or x is None or x.shape is None:
        return
    n = len(kernel)
    if auto_pad == "VALID":
        node.attrs["pads"] = [0] * (2 * n)
        node.attrs.pop("auto_pad")
        return
    spatial = x.shape[2:]
    if len(spatial) != n:
        return
    strides = node.attrs.get("strides", [1] * n)
    dilations = node.attrs.get("dilations", [1] * n)
    totals: list[int] = []
    for i in range(n):
        effective = (kernel[i] - 1) * dilations[i] + 1
        size = spatial[i]
        if node.op_type == "ConvTranspose":
            if not isinstance(size, int):
                return
            out_pad = node.attrs.get("output_padding", [0] * n)[i]
            out_size = size * strides[i]
            totals.append(max(0, strides[i] * (size - 1) + out_pad + effective - out_size))
        elif strides[i] == 1:
            totals.append(effective - 1)
        elif isinstance(size, int):
            out_size = -(-size // strides[i])
            totals.append(max(0, (out_size - 1) * strides[i] + effective - size))
        else:
            return
    begins, ends = [], []
    for total in totals:
        small, large = total // 2, total - total // 2
        # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning (Conv and ConvTranspose).
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    node.attrs["pads"] = begins + ends
    node.attrs.pop("auto_pad")
