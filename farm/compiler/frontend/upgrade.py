"""Upgrade a model of an old default-domain opset (below 11) to opset 11.

Older exporters still write opsets 7 to 10: paddle2onnx's long-standing default is 9, and many
published models (the ONNX model zoo's classic CNNs and detectors) are opset 7 to 10. The
frontend's canonical forms start at opset 11, so such a model is first rewritten by onnx's own
``version_converter`` (attribute forms of Slice, Pad, Clip, TopK, Split and the Upsample scales
become inputs; BatchNormalization loses ``spatial``; and so on).

Two nodes whose meaning the converter loses are refused with a :class:`ModelError`: Scan before
opset 9 (batch axis, ``sequence_lens``) and BatchNormalization with ``spatial=0``. One rule the
converter gets wrong is repaired here. Upsample (7-9) and Resize-10 computed
source coordinates as ``x_out / scale`` ("asymmetric"), and a nearest neighbour by truncation
when upsampling and by rounding up when downsampling (ONNX Runtime's reading of those versions,
which the frontend's own Upsample form follows too). The converter turns them into Resize-11
nodes with Resize-11's defaults ("half_pixel", "round_prefer_floor"): a different result. Each
such node gets ``coordinate_transformation_mode="asymmetric"`` and, in nearest mode,
``nearest_mode`` "floor" (all scales >= 1, or scales not constant) or "ceil" (all scales <= 1).
A nearest Resize-10 that enlarges one axis and shrinks another cannot be written as one Resize-11
node and is a :class:`ModelError`.
"""

from __future__ import annotations

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, helper, numpy_helper

from farm.compiler.frontend.attributes import all_graphs
from farm.compiler.frontend.errors import ModelError

TARGET_OPSET = 11
RESAMPLE_OPS = ("Upsample", "Resize")


def _constant_scales(node: NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "scales":  # Upsample-7's attribute form
            return np.asarray(helper.get_attribute_value(attr), dtype=np.float64)
    if len(node.input) > 1 and node.input[1] in constants:
        return np.asarray(constants[node.input[1]], dtype=np.float64).reshape(-1)
    return None


def _nearest_rounding(node: NodeProto, scales: np.ndarray | None) -> str:
    if scales is None or bool(np.all(scales >= 1.0)):
        return "floor"
    if bool(np.all(scales <= 1.0)):
        return "ceil"
    raise ModelError(
        f"node {node.name or node.output[0]!r} ({node.op_type}, nearest) enlarges some axes and shrinks "
        f"others (scales {scales.tolist()}): its opset-10 rounding has no single Resize-11 equivalent"
    )


def _resample_rules(graph: GraphProto) -> dict[str, dict[str, str]]:
    """Resize-11 attributes for the output of every Upsample/Resize node of the old model."""
    rules: dict[str, dict[str, str]] = {}
    for g in all_graphs(graph):
        wanted = {n.input[1] for n in g.node if n.op_type in RESAMPLE_OPS and len(n.input) > 1}
        constants = {  # only the scales: a large model's weights are not copied
            t.name: numpy_helper.to_array(t)
            for t in g.initializer
            if t.name in wanted and t.data_location != t.EXTERNAL
        }
        for node in g.node:
            if node.op_type == "Constant" and node.output and node.output[0] in wanted:
                for attr in node.attribute:
                    if attr.name == "value":
                        constants[node.output[0]] = numpy_helper.to_array(attr.t)
        for node in g.node:
            if node.op_type not in RESAMPLE_OPS or node.domain not in ("", "ai.onnx") or not node.output:
                continue
            mode = next(
                (helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"nearest"
            )
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            rule = {"coordinate_transformation_mode": "asymmetric"}
            if mode == "nearest":
                rule["nearest_mode"] = _nearest_rounding(node, _constant_scales(node, constants))
            rules[node.output[0]] = rule
    return rules


def _refuse_lossy(graph: GraphProto, version: int) -> None:
    """Nodes whose meaning the converter does not carry over: an error, never a silently wrong model."""
    for g in all_graphs(graph):
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            where = (
                f"node {node.name or node.output[0]!r} ({node.op_type}-{version})"
                if node.output
                else node.op_type
            )
            if node.op_type == "Scan" and version < 9:
                raise ModelError(
                    f"{where}: Scan before opset 9 has a batch axis and a sequence_lens input that onnx's "
                    "version converter does not carry over; re-export the model at opset 9 or newer"
                )
            spatial = next((a.i for a in node.attribute if a.name == "spatial"), 1)
            if node.op_type == "BatchNormalization" and spatial == 0:
                raise ModelError(
                    f"{where}: spatial=0 (statistics per activation, not per channel) has no opset-9+ "
                    "form; re-export the model with per-channel statistics"
                )


def upgrade_opset(proto: ModelProto, version: int) -> ModelProto:
    """``proto`` (default-domain opset ``version`` < 11) rewritten to opset 11; see the module doc."""
    from onnx import version_converter

    _refuse_lossy(proto.graph, version)
    rules = _resample_rules(proto.graph)
    try:
        upgraded = version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot upgrade this opset-{version} model to opset {TARGET_OPSET} (onnx's version converter: "
            f"{message}); re-export it at opset {TARGET_OPSET} or newer"
        ) from None
    for g in all_graphs(upgraded.graph):
        for node in g.node:
            rule = rules.get(node.output[0]) if node.op_type == "Resize" and node.output else None
            if rule is None:
                continue
            kept = [a for a in node.attribute if a.name not in rule]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.extend(helper.make_attribute(k, v) for k, v in rule.items())
    return upgraded
