"""Pipeline step ``inspect``: the facts of an ONNX model, the first stage every job runs.

Facts: IR version and opsets, graph inputs and outputs with shapes and dtypes, a histogram of op
types, the parameter count and bytes, and an estimate of the multiply-accumulates of the
compute-heavy ops (Conv, ConvTranspose, Gemm, MatMul) from ONNX shape inference. Symbolic
dimensions (e.g. ``batch``) count as 1; the facts list which ones were assumed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx import GraphProto, ModelProto, TensorProto, shape_inference

FactsDict = dict[str, Any]
Shape = list[int | str | None]


def inspect_model_file(path: str | Path) -> FactsDict:
    """The facts of the ONNX model at ``path`` (weights in external files next to it are not read)."""
    model = onnx.load(str(path), load_external_data=False)
    return compute_model_facts(model)


def compute_model_facts(model: ModelProto) -> FactsDict:
    """The facts of ``model``: opsets, inputs, outputs, op histogram, parameters and a MAC/FLOP estimate."""
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    histogram: Counter[str] = Counter()
    node_count = 0
    for node in _all_nodes(graph):
        node_count += 1
        histogram[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"] += 1
    parameters = list(_all_initializers(graph))
    parameter_count = sum(_element_count(tensor.dims) for tensor in parameters)
    parameter_bytes = sum(_element_count(tensor.dims) * _itemsize(tensor.data_type) for tensor in parameters)
    return {
        "ir_version": model.ir_version,
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "graph_name": graph.name,
        "opsets": {(entry.domain or "ai.onnx"): entry.version for entry in model.opset_import},
        "inputs": [_describe_value(value) for value in graph.input if value.name not in initializer_names],
        "outputs": [_describe_value(value) for value in graph.output],
        "node_count": node_count,
        "op_histogram": dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
        "parameter_count": parameter_count,
        "parameter_bytes": parameter_bytes,
        "compute": estimate_compute(model),
    }


def estimate_compute(model: ModelProto) -> dict[str, Any]:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul; FLOPs = 2 × MACs.

    Shapes come from ONNX shape inference. A symbolic dimension counts as 1; a node whose shapes
    cannot be inferred is listed under ``unestimated_nodes`` instead of guessed.
    """
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference can fail on exotic models; estimate from declared shapes
        inferred = model
    graph = inferred.graph
    shapes: dict[str, Shape] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shape = _shape_of(value)
        if shape is not None:
            shapes[value.name] = shape
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    symbols: set[str] = set()
    macs_by_op: Counter[str] = Counter()
    unestimated: list[str] = []

    def resolved(name: str) -> list[int] | None:
        shape = shapes.get(name)
        if shape is None or any(dim is None for dim in shape):
            return None
        dims = []
        for dim in shape:
            if isinstance(dim, str):
                symbols.add(dim)
                dims.append(1)
            elif dim is not None:
                dims.append(int(dim))
        return dims

    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        macs = _node_macs(node, resolved)
        if macs is None:
            unestimated.append(node.name or f"{node.op_type}:{node.output[0]}")
        else:
            macs_by_op[node.op_type] += macs
    total = sum(macs_by_op.values())
    return {
        "macs": total,
        "flops": 2 * total,
        "macs_by_op": dict(macs_by_op),
        "symbolic_dims_as_1": sorted(symbols),
        "unestimated_nodes": unestimated,
    }


def _node_macs(node: onnx.NodeProto, resolved: Any) -> int | None:
    output = resolved(node.output[0])
    if node.op_type == "Conv":
        weight = resolved(node.input[1])
        if output is None or weight is None:
            return None
        # each output element: (C_in / group) × kernel volume multiply-accumulates
        return math.prod(output) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        data, weight = resolved(node.input[0]), resolved(node.input[1])
        if data is None or weight is None:
            return None
        # each input element is scattered into (C_out / group) × kernel volume outputs
        return math.prod(data) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a = resolved(node.input[0])
        if output is None or a is None or len(a) != 2:
            return None
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        inner = a[0] if trans_a else a[1]
        return math.prod(output) * inner
    # MatMul: numpy semantics; the inner dimension is the last of A
    a = resolved(node.input[0])
    if output is None or a is None or not a:
        return None
    return math.prod(output) * a[-1]


def _all_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """``graph`` and, recursively, every subgraph of its nodes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attr.graphs:
                    yield from _all_graphs(subgraph)


def _all_nodes(graph: GraphProto) -> Iterator[onnx.NodeProto]:
    for each in _all_graphs(graph):
        yield from each.node


def _all_initializers(graph: GraphProto) -> Iterator[TensorProto]:
    for each in _all_graphs(graph):
        yield from each.initializer


def _element_count(dims: Any) -> int:
    return math.prod(int(dim) for dim in dims)


def _itemsize(data_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except Exception:  # string tensors and types numpy lacks
        return 0


def _dtype_name(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return TensorProto.DataType.Name(elem_type).lower()


def _shape_of(value: onnx.ValueInfoProto) -> Shape | None:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    dims: Shape = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    if value.type.HasField("tensor_type"):
        return {
            "name": value.name,
            "dtype": _dtype_name(value.type.tensor_type.elem_type),
            "shape": _shape_of(value),
        }
    return {"name": value.name, "dtype": value.type.WhichOneof("value") or "unknown", "shape": None}
