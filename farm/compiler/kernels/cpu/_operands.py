"""What every CPU tactic needs around its kernel: the FP32 guard, cached workspaces and values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def constant_input(node: Node, graph: Graph, index: int) -> tuple[bool, np.ndarray | None]:
    """(whether the node's input ``index`` is absent or a constant of the graph, its value: None
    when absent or not a constant), for tactics whose tables are made from side inputs such as
    pads, scales and sizes."""
    name = node.input(index)
    if not name:
        return True, None
    value = graph.const(name)
    return value is not None, value


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


def dense(x: np.ndarray | None, shape: tuple[int, ...] | None = None) -> bool:
    """Whether a kernel can read ``x`` in place as a C-contiguous float32 array (of ``shape``
    when given): the test a tactic's ``bind`` makes before it keeps a reference to ``x``, since a
    copy made while binding would go stale on the next run."""
    return (
        x is not None
        and x.dtype == np.float32
        and x.flags.c_contiguous
        and (shape is None or tuple(x.shape) == tuple(shape))
    )


def nothing() -> None:
    """The bound call of a node with an empty output."""


def in_order(*calls: Callable[[], None]) -> Callable[[], None]:
    """One bound call that makes ``calls`` one after the other (a tactic's pack, product and
    epilogue kernels)."""
    if len(calls) == 1:
        return calls[0]

    def run_all() -> None:
        for call in calls:
            call()

    return run_all


class RunsBound:
    """Mixin for a tactic whose ``bind`` takes ``copies``: ``run`` binds with copies allowed and
    calls the result once, so the tactic's per-call Python lives in ``bind`` alone. Its
    ``bind(..., copies=True)`` copies what must be copied and never returns None."""

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """Compute ``node`` once: ``bind(..., copies=True)`` then the call."""
        call = self.bind(node, inputs, outputs, prepared, copies=True)  # type: ignore[attr-defined]
        assert call is not None
        call()
