"""The IR graph as JSON plus named tensors (for the engine manifest; no pickle anywhere).

Attributes that are arrays and constant values become tensors in the safetensors part of the
file, referenced from the JSON by key; control-flow bodies nest as JSON graphs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node, Value


def contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order, keeping 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return array if array.flags.c_contiguous else np.array(array, order="C")


class EngineFormatError(ValueError):
    """An engine file is corrupted, truncated, of another format version, or not an engine."""


def _attr_to_json(value: Any, key: str, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, Graph):
        return {"graph": graph_to_json(value, tensors, prefix=f"{key}/", keep_consts=None)}
    if isinstance(value, np.ndarray):
        tensors[key] = contiguous(value)
        return {"tensor": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], Graph):
            return {"graphs": [_attr_to_json(g, f"{key}/{i}", tensors)["graph"] for i, g in enumerate(value)]}
        return [_attr_to_json(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"attribute {key!r} of type {type(value).__name__} cannot be stored in an engine")


def _attr_from_json(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "graph" in value:
            return graph_from_json(value["graph"], tensors)
        if "graphs" in value:
            return [graph_from_json(g, tensors) for g in value["graphs"]]
        if "tensor" in value:
            return tensors[value["tensor"]]
        raise EngineFormatError(f"unknown attribute encoding {sorted(value)}")
    if isinstance(value, list):
        return [_attr_from_json(v, tensors) for v in value]
    return value


def graph_to_json(
    graph: Graph, tensors: dict[str, np.ndarray], *, prefix: str = "", keep_consts: set[str] | None = None
) -> dict[str, Any]:
    """Serialize ``graph``; constant data goes into ``tensors``.

    ``keep_consts``: the constants whose data the runtime needs (None = all). The others keep
    their dtype and shape but no data (their readers use prepared tensors instead).
    """
    values = []
    for v in graph.values.values():
        entry: dict[str, Any] = {
            "name": v.name,
            "dtype": v.dtype,
            "shape": list(v.shape) if v.shape is not None else None,
        }
        if v.const is not None and (keep_consts is None or v.name in keep_consts):
            key = f"{prefix}const/{v.name}"
            tensors[key] = contiguous(v.const)
            entry["const"] = key
        values.append(entry)
    nodes = []
    for n in graph.nodes:
        nodes.append(
            {
                "op_type": n.op_type,
                "name": n.name,
                "domain": n.domain,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "precision": n.precision,
                "attrs": {
                    k: _attr_to_json(a, f"{prefix}attr/{n.name}/{k}", tensors) for k, a in n.attrs.items()
                },
            }
        )
    return {
        "name": graph.name,
        "opset": graph.opset,
        "opsets": graph.opsets,
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        "metadata": dict(graph.metadata),
        "values": values,
        "nodes": nodes,
    }


def graph_from_json(data: dict[str, Any], tensors: dict[str, np.ndarray]) -> Graph:
    """Inverse of :func:`graph_to_json`."""
    try:
        graph = Graph(data["name"], opset=int(data["opset"]), opsets=dict(data["opsets"]))
        graph.metadata = dict(data.get("metadata", {}))
        for entry in data["values"]:
            shape = tuple(entry["shape"]) if entry["shape"] is not None else None
            value = Value(entry["name"], entry["dtype"], shape)
            if "const" in entry:
                value.const = tensors[entry["const"]]
            graph.values[value.name] = value
        for entry in data["nodes"]:
            graph.nodes.append(
                Node(
                    entry["op_type"],
                    list(entry["inputs"]),
                    list(entry["outputs"]),
                    {k: _attr_from_json(a, tensors) for k, a in entry["attrs"].items()},
                    entry["name"],
                    entry.get("domain", ""),
                    entry.get("precision"),
                )
            )
        graph.inputs = list(data["inputs"])
        graph.outputs = list(data["outputs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineFormatError(f"the engine's graph is malformed: {exc!r}") from exc
    return graph
