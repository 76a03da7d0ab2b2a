"""Pad in numba from per-axis source tables: every mode, crops, any rank.

``cpu.pad.tables`` maps every output index of an axis to its source index with numpy's own
``np.pad`` applied to ``arange(in)`` (so ``reflect``, ``edge`` and ``wrap`` follow exactly what the
reference computes, which is ``np.pad`` on the data), and -1 for a constant fill; a negative pad
crops first, as the reference does. The leading axes' tables are combined once into one source
row (or -1) per output row of the array seen as ``[rows, last axis]``; the kernel then copies
each row through the last axis' table, in parallel over rows. The tables are made when the step
is bound, once per shape, so pads, fill and axes must be constants of the graph.

Exporters write Pad before convolutions (reflect padding of audio front ends and style-transfer
nets; the zero padding that ``pad_fusion`` cannot fold because something else reads the padded
tensor too): Silero VAD's reflect Pad of a 512-sample chunk took 45 us in the numpy reference,
most of it ``np.pad``'s own overhead.

Pool: numba's (``prange`` over output rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._operands import RunsBound, constant_input, memo
from farm.compiler.kernels.cpu._threads import bound_call
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

DTYPES = ("float32", "float64", "int64", "int32", "int8", "uint8")


@njit(parallel=True, cache=True, nogil=True)
def _pad_rows(x, out, rows, cols, fill):  # pragma: no cover - numba
    """out[r, j] = x[rows[r], cols[j]], or ``fill`` where either index is -1."""
    n_rows, width = out.shape
    for r in prange(n_rows):
        s = rows[r]
        dst = out[r]
        if s < 0:
            for j in range(width):
                dst[j] = fill
            continue
        src = x[s]
        for j in range(width):
            c = cols[j]
            dst[j] = fill if c < 0 else src[c]


def axis_table(size: int, begin: int, end: int, mode: str) -> np.ndarray:
    """Source index (or -1: the fill) of every output index along one axis."""
    index = np.arange(size, dtype=np.int64)[max(0, -begin) : size - max(0, -end)]
    widths = (max(0, begin), max(0, end))
    if mode == "constant":
        return np.pad(index, widths, mode="constant", constant_values=-1)
    return np.pad(index, widths, mode=mode)  # type: ignore[call-overload]


def _ints(value: np.ndarray | None) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


@register_tactic
class PadTablesTactic(RunsBound, Tactic):
    """Pad, any mode and rank, from per-axis source tables."""

    name = "cpu.pad.tables"
    op_types = ("Pad",)
    priority = 10

    def supports(self, node: Node, graph: Graph) -> bool:
        x = graph.values.get(node.input(0))
        if x is None or x.dtype not in DTYPES or x.shape is None or not x.shape:
            return False
        if node.attr("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
            return False
        if not node.input(1) or not all(constant_input(node, graph, i)[0] for i in (1, 2, 3)):
            return False
        if x.is_static:  # reflect/edge/wrap of an empty axis, or reflect past the axis: the reference's error
            try:
                self._tables(node, tuple(int(d) for d in x.shape), *self._params(node, graph))
            except ValueError:
                return False
        return True

    @staticmethod
    def _params(node: Node, graph: Graph) -> tuple[list[int], list[int] | None]:
        return _ints(constant_input(node, graph, 1)[1]) or [], _ints(constant_input(node, graph, 3)[1])

    @staticmethod
    def _tables(
        node: Node, shape: tuple[int, ...], pads: list[int], axes: list[int] | None
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """(source row per output row, last-axis table, output shape)."""
        rank = len(shape)
        axes = [a % rank for a in axes] if axes else list(range(rank))
        if len(pads) != 2 * len(axes):
            raise ValueError(f"Pad {node.name!r}: {len(pads)} pads for {len(axes)} axes")
        begins, ends = [0] * rank, [0] * rank
        for i, axis in enumerate(axes):
            begins[axis], ends[axis] = pads[i], pads[len(axes) + i]
        mode = node.attr("mode", "constant")
        tables = [axis_table(shape[a], begins[a], ends[a], mode) for a in range(rank)]
        out_shape = tuple(t.size for t in tables)
        rows = np.zeros(1, np.int64)
        for axis in range(rank - 1):  # combine the leading axes: row-major source row, -1 sticks
            table = tables[axis]
            combined = rows[:, None] * shape[axis] + table[None, :]
            rows = np.where((rows[:, None] < 0) | (table[None, :] < 0), -1, combined).reshape(-1)
        return rows, tables[-1], out_shape

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays with the tables of this shape. Without ``copies``, None for
        an input or output that is not C-contiguous."""
        x, out = inputs[0], outputs[0]
        assert x is not None
        if not copies and (not x.flags.c_contiguous or not out.flags.c_contiguous):
            return None
        pads = _ints(inputs[1]) or []
        axes = _ints(inputs[3]) if len(inputs) > 3 else None
        fill_input = inputs[2] if len(inputs) > 2 else None
        fill = fill_input.reshape(-1)[0] if fill_input is not None and fill_input.size else 0
        shape = tuple(x.shape)
        rows, cols, out_shape = memo(  # once per shape: the tuner times run(), which binds every call
            prepared,
            ("pad_tables", shape, tuple(pads), tuple(axes) if axes else None),
            lambda: self._tables(node, shape, pads, axes),
        )
        if out_shape != tuple(out.shape):
            raise ValueError(f"Pad {node.name!r}: output {out.shape}, tables give {out_shape}")
        if out.size == 0:
            return lambda: None
        x = np.ascontiguousarray(x)
        src = x.reshape(-1, x.shape[-1]) if x.size else np.zeros((1, 1), x.dtype)
        dst = out.reshape(-1, out.shape[-1])
        return bound_call(_pad_rows, (src, dst, rows, cols, out.dtype.type(fill)), out.size)
