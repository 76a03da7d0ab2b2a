"""ONNX AttributeProto -> python values (GRAPH attributes are converted by a callback), a walk
over the graphs nested in GRAPH attributes, and node replacement in one of those graphs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnx import AttributeProto, GraphProto, NodeProto, SparseTensorProto

from farm.compiler.frontend.errors import ModelError, UnsupportedModelError
from farm.compiler.frontend.tensors import check_dims, tensor_to_array
from farm.compiler.ir.graph import Graph

GraphConverter = Callable[[GraphProto], Graph]


MAX_DENSIFIED_ELEMENTS = 2**28
"""A sparse tensor declares its size without holding it; densifying is capped (1 GiB of float32)."""


def all_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """``graph`` and every graph nested in its nodes' GRAPH/GRAPHS attributes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_graphs(attr.g)
            for g in attr.graphs:
                yield from all_graphs(g)


def replace_nodes(graph: GraphProto, replacement: Callable[[NodeProto], list[NodeProto] | None]) -> bool:
    """Rebuild ``graph``'s node list with every node for which ``replacement`` gives a list of
    nodes replaced by that list; True if any was (else the graph is left as it was). Rebuilding
    copies the other nodes, bodies included: rewrite the innermost graphs first."""
    rebuilt: list[NodeProto] = []
    hit = False
    for node in graph.node:
        nodes = replacement(node)
        if nodes is None:
            copy = NodeProto()
            copy.CopyFrom(node)
            rebuilt.append(copy)
        else:
            rebuilt.extend(nodes)
            hit = True
    if hit:
        del graph.node[:]
        graph.node.extend(rebuilt)
    return hit


def sparse_to_array(sparse: SparseTensorProto, base_dir: Path | None, what: str) -> np.ndarray:
    """Densify a SparseTensorProto (COO indices, flat or per-axis)."""
    count = check_dims(list(sparse.dims), what)
    if count > MAX_DENSIFIED_ELEMENTS:
        raise ModelError(f"{what} is a sparse tensor of {count} elements, too large to densify")
    values = tensor_to_array(sparse.values, base_dir, what + " values")
    indices = tensor_to_array(sparse.indices, base_dir, what + " indices").astype(np.int64)
    dense = np.zeros(count, dtype=values.dtype)
    shape = tuple(int(d) for d in sparse.dims)
    if indices.ndim == 1:
        flat = indices
    elif indices.ndim == 2 and indices.shape[1] == len(shape):
        flat = np.ravel_multi_index(tuple(indices.T), shape) if len(indices) else indices[:, 0] if indices.size else np.zeros(0, np.int64)
    else:
        raise ModelError(f"{what} has indices of shape {indices.shape}, which does not fit dims {list(shape)}")
    if flat.size != values.size or (flat.size and (flat.min() < 0 or flat.max() >= count)):
        raise ModelError(f"{what} has indices out of range or not matching its values")
    dense[flat] = values.ravel()
    return dense.reshape(shape)


def convert_attribute(attr: AttributeProto, base_dir: Path | None, convert_graph: GraphConverter, where: str) -> Any:
    """The python value of one attribute: int, float, str, list, np.ndarray or Graph."""
    what = f"attribute {attr.name!r} of {where}"
    if attr.ref_attr_name:
        raise ModelError(f"{what} refers to a function attribute {attr.ref_attr_name!r} outside a function")
    kind = attr.type
    if kind == AttributeProto.FLOAT:
        return float(attr.f)
    if kind == AttributeProto.INT:
        return int(attr.i)
    if kind == AttributeProto.STRING:
        return attr.s.decode("utf-8", "replace")
    if kind == AttributeProto.TENSOR:
        return tensor_to_array(attr.t, base_dir, what)
    if kind == AttributeProto.SPARSE_TENSOR:
        return sparse_to_array(attr.sparse_tensor, base_dir, what)
    if kind == AttributeProto.GRAPH:
        return convert_graph(attr.g)
    if kind == AttributeProto.FLOATS:
        return [float(x) for x in attr.floats]
    if kind == AttributeProto.INTS:
        return [int(x) for x in attr.ints]
    if kind == AttributeProto.STRINGS:
        return [s.decode("utf-8", "replace") for s in attr.strings]
    if kind == AttributeProto.TENSORS:
        return [tensor_to_array(t, base_dir, what) for t in attr.tensors]
    if kind == AttributeProto.GRAPHS:
        return [convert_graph(g) for g in attr.graphs]
    if kind == AttributeProto.SPARSE_TENSORS:
        return [sparse_to_array(t, base_dir, what) for t in attr.sparse_tensors]
    if kind in (AttributeProto.TYPE_PROTO, AttributeProto.TYPE_PROTOS):
        raise UnsupportedModelError(f"{what} is a type attribute, which the compiler does not support")
    raise ModelError(f"{what} has no valid type ({kind})")
