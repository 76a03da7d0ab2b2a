"""What every CPU tactic needs around its kernel: the FP32 guard, cached workspaces and values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.registry import Prepared

T = TypeVar("T")
_MISSING = object()


def float32_io(node: Node, graph: Graph, input_count: int | None = None) -> bool:
    """True when the node's outputs and inputs (the first ``input_count``, default all) are
    float32; a value whose dtype the graph does not know passes."""
    inputs = node.inputs if input_count is None else node.inputs[:input_count]
    names = [i for i in inputs if i] + [o for o in node.outputs if o]
    return bool(names) and all(graph.values[n].dtype in ("float32", None) for n in names if n in graph.values)


def workspace(
    prepared: Prepared, key: str, shape: tuple[int, ...], dtype: Any = np.float32, *, zeroed: bool = False
) -> np.ndarray:
    """A buffer (float32 unless ``dtype`` says) kept in ``prepared.scratch`` across runs,
    reallocated when the shape changes (a new batch size): uninitialized, or zeros when it is
    (re)allocated with ``zeroed`` (padding a kernel computes on but never stores must hold
    finite values; later runs see what earlier ones left there)."""
    buf = prepared.scratch.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = prepared.scratch[key] = (np.zeros if zeroed else np.empty)(shape, dtype)
    return buf


def memo(prepared: Prepared, key: Any, make: Callable[[], T]) -> T:
    """``make()`` once per execution context (``prepared.scratch`` is per context), then the kept
    value: for what a tactic derives from the node's attributes or the run's shapes on every run
    (a conv's geometry, its epilogue, a broadcast plan: ~5-20 us of Python per layer, as much as
    a small layer's kernel). ``key`` must name everything the value depends on."""
    value = prepared.scratch.get(key, _MISSING)
    if value is _MISSING:
        value = prepared.scratch[key] = make()
    return value
