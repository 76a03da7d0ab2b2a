"""Models stored in float16 or bfloat16 compute in float32 on the CPU.

Exporters write half-precision models for GPUs (``model.half()`` before ``torch.onnx.export``,
``optimum`` with ``--fp16``, YOLO's ``half=True``): every weight, activation and graph input and
output is float16. The CPU has no fast float16 arithmetic (docs/PRECISION.md), and the CPU
tactics run float32, so such a graph is rewritten once before optimization (ONNX Runtime's CPU
provider inserts casts around its float32 kernels the same way):

* each float16/bfloat16 graph input is cast to float32 where the graph starts, and each such
  graph output is cast back from float32 where it ends, so the engine's bindings keep the
  model's own element types;
* every other float16/bfloat16 value, in the graph and in its control-flow bodies, becomes
  float32 (constants converted exactly: float32 holds every float16 and bfloat16 value);
* casts to float16/bfloat16 inside the graph (mixed-precision exports) cast to float32, and
  ``ConstantOfShape``/``EyeLike`` fill in float32.

The results differ from a float16 computation by float16's own rounding, at most: the float32
compute rounds less (the tests bound it against ONNX Runtime's float16 run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.ir.graph import subgraphs

HALF_ENUMS = {"float16": 10, "bfloat16": 16}  # onnx.TensorProto element types
FLOAT = 1


def _all_graphs(graph: Graph) -> list[Graph]:
    found = [graph]
    for node in graph.nodes:
        for sub in subgraphs(node):
            found.extend(_all_graphs(sub))
    return found


def has_half_values(graph: Graph) -> bool:
    """Whether any value of ``graph`` or its bodies is float16 or bfloat16."""
    return any(v.dtype in HALF_ENUMS for g in _all_graphs(graph) for v in g.values.values())


def _widen_attrs(node: Node) -> None:
    to = node.attrs.get("to")
    if node.op_type == "Cast" and (to in HALF_ENUMS.values() or to in HALF_ENUMS):
        node.attrs["to"] = FLOAT
    if node.op_type == "EyeLike" and node.attrs.get("dtype") in HALF_ENUMS.values():
        node.attrs["dtype"] = FLOAT
    value = node.attrs.get("value")
    if node.op_type == "ConstantOfShape" and isinstance(value, np.ndarray) and value.dtype.kind == "f":
        node.attrs["value"] = value.astype(np.float32)


def widen_half_model(graph: Graph) -> dict[str, Any]:
    """Rewrite ``graph`` (in place) to compute in float32; see the module doc. Returns what
    changed (empty when the graph has no float16/bfloat16 value)."""
    if not has_half_values(graph):
        return {}
    boundary: list[Node] = []
    cast_inputs = 0
    for name in list(graph.inputs):
        value = graph.values[name]
        if value.dtype not in HALF_ENUMS or value.const is not None:
            continue
        wide = graph.fresh_name(f"{name}_fp32")
        graph.add_value(wide, "float32", value.shape)
        outputs = list(graph.outputs)
        graph.replace_all_uses(name, wide)
        graph.outputs = outputs  # an input that is also an output passes through as it is
        cast = Node("Cast", [name], [wide], {"to": FLOAT}, graph.fresh_name(f"{name}_to_fp32"))
        graph.nodes.insert(0, cast)
        boundary.append(cast)
        cast_inputs += 1
    cast_outputs = 0
    producers = graph.producers()
    for name in dict.fromkeys(graph.outputs):
        value = graph.values[name]
        producer = producers.get(name)
        if value.dtype not in HALF_ENUMS or producer is None or any(producer is c for c in boundary):
            continue
        wide = graph.fresh_name(f"{name}_fp32")
        graph.add_value(wide, "float32", value.shape)
        outputs = list(graph.outputs)
        graph.replace_all_uses(name, wide)
        graph.outputs = outputs
        producer.outputs = [wide if o == name else o for o in producer.outputs]
        cast = Node(
            "Cast", [wide], [name], {"to": HALF_ENUMS[value.dtype]}, graph.fresh_name(f"{name}_to_half")
        )
        graph.nodes.append(cast)
        boundary.append(cast)
        cast_outputs += 1
    kept = {n for c in boundary for n in (c.inputs[0], c.outputs[0])}
    widened = 0
    for g in _all_graphs(graph):
        for name, value in g.values.items():
            if value.dtype in HALF_ENUMS and not (g is graph and name in kept):
                value.dtype = "float32"
                if value.const is not None:
                    value.const = value.const.astype(np.float32)
                widened += 1
        for node in g.nodes:
            if not any(node is c for c in boundary):
                _widen_attrs(node)
    return {"inputs_cast": cast_inputs, "outputs_cast": cast_outputs, "values_widened": widened}
