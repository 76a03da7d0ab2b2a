"""Expand ONNX function ops into the ops of their function bodies.

ONNX defines many newer ops as functions of older ones: the schema carries the body, either fixed
(Swish-24: ``X * Sigmoid(alpha * X)``) or built for one node from its attributes and input types
(a "context-dependent" function: Attention-23 builds a different graph for 3-D and 4-D inputs,
with or without a mask or a KV cache). The body *is* the specification, so an op the frontend
does not run natively (:func:`farm.compiler.frontend.versions.runs_natively`) but that has a
body is replaced by that body, inlined with onnx's own inliner, and compiled like the model's
own ops. Plain multi-head Attention (no mask, no cache) is written instead as the pattern the
attention fusion pass knows (:mod:`.attention_op`); the other variants run as their body's
MatMul, Softmax and MatMul (the fusion does not match the body's guard for fully masked rows).

Rule: for every default-domain node whose op does not run natively and whose schema has a
function at the model's opset, build the body (context-dependent bodies get the node's input
types from onnx shape inference), make it a model-local function called by that node alone, and
inline every such function. Bodies may use function ops themselves, so this repeats (at most
:data:`MAX_ROUNDS` times). The body is read at the model's opset: its ops are then checked like
the model's own.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import FunctionProto, ModelProto, NodeProto, TypeProto, helper

from farm.compiler.frontend.attention_op import plain_attention
from farm.compiler.frontend.attributes import all_graphs, replace_nodes
from farm.compiler.frontend.errors import ModelError
from farm.compiler.frontend.versions import function_versions, has_function, runs_natively, schema

EXPANDED_DOMAIN = "farm.expanded"
MAX_ROUNDS = 6
DEFAULT_DOMAINS = ("", "ai.onnx")


def _expandable(proto: ModelProto, opset: int, supported: frozenset[str]) -> list[NodeProto]:
    return [
        node
        for g in all_graphs(proto.graph)
        for node in g.node
        if node.domain in DEFAULT_DOMAINS
        and not runs_natively(node.op_type, opset, supported)
        and has_function(node.op_type, opset)
    ]


def _lower_plain_attention(
    proto: ModelProto, opset: int, supported: frozenset[str], types: dict[str, TypeProto]
) -> bool:
    """Rewrite each plain ONNX Attention node (:mod:`.attention_op`) in place; True if any was.

    Innermost graphs first: rebuilding a graph's node list copies its nodes, bodies included."""

    def lower(node: NodeProto) -> list[NodeProto] | None:
        if node.domain not in DEFAULT_DOMAINS or node.op_type != "Attention":
            return None
        return None if runs_natively(node.op_type, opset, supported) else plain_attention(node, types)

    changed = False
    for graph in reversed(list(all_graphs(proto.graph))):
        changed |= replace_nodes(graph, lower)
    return changed


def value_types(proto: ModelProto) -> dict[str, TypeProto]:
    """Every value's type as onnx shape inference sees it (all graphs, subgraphs included)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as exc:
        raise ModelError(f"cannot infer the value types that writing out its function or contrib ops needs: {exc}") from None
    types: dict[str, TypeProto] = {}
    for g in all_graphs(inferred.graph):
        for init in g.initializer:
            types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
        for info in list(g.input) + list(g.value_info) + list(g.output):
            if info.type.WhichOneof("value") is not None:
                types[info.name] = info.type
    return types


def _body(node: NodeProto, opset: int, types: dict[str, TypeProto] | None) -> FunctionProto:
    found: Any = schema(node.op_type, opset)  # onnx's type stubs lack the function accessors
    where = f"node {node.name or node.output[0]!r} ({node.op_type}-{found.since_version})"
    plain, context = function_versions(node.op_type, opset)
    body = FunctionProto()
    try:
        if plain is not None:
            body.ParseFromString(found.get_function_with_opset_version(plain))
        else:
            assert types is not None
            input_types = []
            for name in node.input:
                if name and name not in types:
                    raise ModelError(
                        f"{where}: the type of input {name!r} is unknown, so its ONNX function cannot be built"
                    )
                input_types.append((types[name] if name else TypeProto()).SerializeToString())
            built = found.get_context_dependent_function_with_opset_version(
                context, node.SerializeToString(), input_types
            )
            body.ParseFromString(built)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{where}: cannot build its ONNX function body: {exc}") from None
    if not body.node:
        raise ModelError(f"{where}: ONNX gives no function body for these attributes and input types")
    del body.opset_import[:]
    body.opset_import.append(helper.make_opsetid("", opset))
    return body


def _add_default_attributes(node: NodeProto, opset: int) -> None:
    """Give the node every attribute it omits that its schema has a default for.

    A body refers to the node's attributes (``value_float: @alpha``); onnx's inliner drops a
    reference to an attribute the call does not set, where the op's meaning is its default.
    """
    found = schema(node.op_type, opset)
    given = {a.name for a in node.attribute}
    for name, spec in found.attributes.items() if found is not None else ():
        if name not in given and spec.default_value.type != onnx.AttributeProto.UNDEFINED:
            default = onnx.AttributeProto()
            default.CopyFrom(spec.default_value)
            default.name = name
            node.attribute.append(default)


def expand_function_ops(proto: ModelProto, opset: int, supported: frozenset[str]) -> ModelProto:
    """``proto`` with every non-native function op replaced by its body (see the module doc)."""
    from onnx import inliner

    count = 0
    for _ in range(MAX_ROUNDS):
        found = _expandable(proto, opset, supported)
        if not found:
            break
        needs_types = any(function_versions(n.op_type, opset)[0] is None for n in found)
        types = value_types(proto) if needs_types else None
        if types is not None and _lower_plain_attention(proto, opset, supported, types):
            continue  # the graphs changed: look again for what is left to expand
        for node in found:
            _add_default_attributes(node, opset)
            body = _body(node, opset, types)
            count += 1
            body.name = f"{node.op_type}__{count}"
            body.domain = EXPANDED_DOMAIN
            node.op_type, node.domain = body.name, EXPANDED_DOMAIN
            proto.functions.append(body)
        if not any(o.domain == EXPANDED_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(EXPANDED_DOMAIN, 1))
        try:
            proto = inliner.inline_local_functions(proto)
        except Exception as exc:
            raise ModelError(
                f"cannot inline the ONNX function bodies of the model's function ops: {exc}"
            ) from None
    kept = [o for o in proto.opset_import if o.domain != EXPANDED_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto
