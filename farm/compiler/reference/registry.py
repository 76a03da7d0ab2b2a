"""The table that maps op types to their numpy implementations.

Each op family lives in its own module and registers its ops with :func:`op`::

    @op("Relu")
    def relu(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
        return np.maximum(inputs[0], 0)

An implementation receives the node (for its attributes), one array per input (``None`` for an
omitted optional input) and the :class:`Context`, and returns one array or a sequence of arrays
(one per output). Implementations follow the canonical forms of ``farm.compiler.frontend.canonical``
whatever the graph's opset; where ONNX semantics differ by opset in ways canonicalization cannot
remove, an op registers several implementations with ``since=`` and :func:`lookup` picks the newest
one not newer than the graph's opset.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from farm.compiler.ir.fused import FUSED_OPS
from farm.compiler.ir.graph import Node

if TYPE_CHECKING:
    from farm.compiler.ir.graph import Graph

# One array per node input, None for an omitted optional one (Any: each op knows which it requires).
Inputs = Sequence[Any]
OpResult = np.ndarray | Sequence[np.ndarray]
OpImpl = Callable[[Node, Inputs, "Context"], OpResult]

FAMILIES = (
    "elementwise",
    "activations",
    "linear",
    "nn_conv",
    "pooling",
    "normalization",
    "reduce",
    "shape_ops",
    "indexing",
    "resize",
    "detection",
    "quantization",
    "recurrent",
    "sampling",
    "signal",
    "losses",
    "strings",
    "control_flow",
    "fused",
)


@dataclass
class Context:
    """What an op implementation may need beyond its inputs: the graph it belongs to (for its
    opset), and the values of the enclosing scopes (for If/Loop/Scan bodies)."""

    graph: Graph | None = None
    scope: dict[str, Any] = field(default_factory=dict)

    @property
    def opset(self) -> int:
        return self.graph.opset if self.graph is not None else 21


class OpNotImplementedError(NotImplementedError):
    """The reference has no implementation for an op type; the message lists those it has."""


_TABLE: dict[str, list[tuple[int, OpImpl]]] = {}
_loaded = False


def op(*op_types: str, since: int = 1) -> Callable[[OpImpl], OpImpl]:
    """Register the decorated function as the implementation of ``op_types`` from opset ``since``."""

    def register(fn: OpImpl) -> OpImpl:
        for op_type in op_types:
            versions = _TABLE.setdefault(op_type, [])
            versions.append((since, fn))
            versions.sort(key=lambda entry: entry[0])
        return fn

    return register


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for family in FAMILIES:
            importlib.import_module(f"farm.compiler.reference.{family}")


def lookup(op_type: str, opset: int = 21) -> OpImpl:
    """The implementation of ``op_type`` for ``opset``, or :class:`OpNotImplementedError`."""
    _ensure_loaded()
    versions = _TABLE.get(op_type)
    if not versions:
        raise OpNotImplementedError(
            f"the reference has no implementation of {op_type!r}; available: {', '.join(sorted(_TABLE))}"
        )
    chosen = versions[0][1]
    for since, fn in versions:
        if since <= opset:
            chosen = fn
    return chosen


def available_ops() -> list[str]:
    """Every op type the reference implements (ONNX and fused), sorted."""
    _ensure_loaded()
    return sorted(_TABLE)


def onnx_op_types() -> list[str]:
    """The ONNX (default-domain) op types the reference implements, fused ops excluded."""
    return [name for name in available_ops() if name not in FUSED_OPS or name == "Gelu"]
