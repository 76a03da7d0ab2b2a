"""Resize in numba, FP32: nearest and linear over the last two axes, from per-axis tables.

``cpu.resize.tables`` splits Resize as the reference does (``reference/resize.py``): the
coordinate transformation, the nearest rounding and the linear weights are computed per axis, in
float64, by the reference's own functions, once per shape when the step is bound; the kernel
then only gathers (nearest) or blends two taps per axis (linear), in parallel over the output
rows of every (image, channel) plane. So every ``coordinate_transformation_mode`` except
``tf_crop_and_resize``, every ``nearest_mode``, ``axes`` and ``keep_aspect_ratio_policy`` give
exactly the reference's source indices (nearest output is bit-exact), and linear differs only
by float32 blending (about 1e-7 relative).

Declined (left to the reference tactic): cubic mode, ``tf_crop_and_resize`` (roi and
extrapolation), antialias when an axis shrinks, a resized axis other than the last two, inputs
other than float32, and scales or sizes that are not constants of the graph (the tables are
made when the step is bound, once per shape).

Pool: numba's (``prange`` over output rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._operands import RunsBound, constant_input, dense, float32_io, memo
from farm.compiler.kernels.cpu._threads import bound_call
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.reference.resize import (
    _nearest,
    interpolation_matrix,
    resize_output_shape,
    source_coordinates,
)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _resize_nearest(x, out, rows, cols):  # pragma: no cover - numba
    """out[p, i, j] = x[p, rows[i], cols[j]]."""
    planes, out_h, out_w = out.shape
    for task in prange(planes * out_h):
        p = task // out_h
        i = task - p * out_h
        src = x[p, rows[i]]
        dst = out[p, i]
        for j in range(out_w):
            dst[j] = src[cols[j]]


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _resize_linear(x, out, r0, r1, rw0, rw1, c0, c1, cw0, cw1):  # pragma: no cover - numba
    """out[p, i, j] = rw0[i] * blend(x[p, r0[i]], j) + rw1[i] * blend(x[p, r1[i]], j), where
    blend(row, j) = cw0[j] * row[c0[j]] + cw1[j] * row[c1[j]]."""
    planes, out_h, out_w = out.shape
    for task in prange(planes * out_h):
        p = task // out_h
        i = task - p * out_h
        top = x[p, r0[i]]
        bottom = x[p, r1[i]]
        wt = rw0[i]
        wb = rw1[i]
        dst = out[p, i]
        for j in range(out_w):
            a = cw0[j] * top[c0[j]] + cw1[j] * top[c1[j]]
            b = cw0[j] * bottom[c0[j]] + cw1[j] * bottom[c1[j]]
            dst[j] = wt * a + wb * b


def _two_taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(index 0, index 1, weight 0, weight 1) per row of an interpolation matrix with at most two
    nonzero weights per row; None when a row has more."""
    rows = matrix.shape[0]
    i0 = np.zeros(rows, np.int64)
    i1 = np.zeros(rows, np.int64)
    w0 = np.zeros(rows, np.float32)
    w1 = np.zeros(rows, np.float32)
    for r in range(rows):
        (taps,) = np.nonzero(matrix[r])
        if taps.size > 2:
            return None
        if taps.size == 0:
            continue
        i0[r] = i1[r] = taps[0]
        w0[r] = matrix[r, taps[0]]
        if taps.size == 2:
            i1[r] = taps[1]
            w1[r] = matrix[r, taps[1]]
    return i0, i1, w0, w1


class _Plan:
    """The Resize of one node for one input shape: output shape and per-axis tables."""

    def __init__(
        self, node: Node, shape: tuple[int, ...], scales: np.ndarray | None, sizes: np.ndarray | None
    ):
        mode = node.attr("mode", "nearest")
        transform = node.attr("coordinate_transformation_mode", "half_pixel")
        out_shape, used = resize_output_shape(
            shape, scales, sizes, node.attr("axes", None), node.attr("keep_aspect_ratio_policy", "stretch")
        )
        self.out_shape = tuple(out_shape)
        rank = len(shape)
        self.ok = rank >= 1 and all(
            shape[a] == out_shape[a] and used[a] == 1.0 for a in range(max(rank - 2, 0))
        )
        self.tables: list[tuple[np.ndarray, ...]] = []
        if not self.ok:
            return
        for axis in range(max(rank - 2, 0), rank):
            in_size, out_size = shape[axis], out_shape[axis]
            if in_size == 0 or out_size == 0:
                self.ok = False
                return
            if in_size == out_size and used[axis] == 1.0:  # the reference leaves such an axis alone
                same = np.arange(in_size, dtype=np.int64)
                ones = np.ones(in_size, np.float32)
                self.tables.append((same,) if mode == "nearest" else (same, same, ones, 0 * ones))
                continue
            coords = source_coordinates(transform, out_size, in_size, used[axis], None)
            if mode == "nearest":
                nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
                index = np.clip(_nearest(coords, nearest_mode), 0, in_size - 1).astype(np.int64)
                self.tables.append((index,))
            else:
                matrix = interpolation_matrix(coords, in_size, used[axis], "linear", -0.75, False, False)
                taps = _two_taps(matrix)
                if taps is None:
                    self.ok = False
                    return
                self.tables.append(taps)
        if rank == 1:  # one axis: a plane of one row
            self.tables.insert(0, (np.zeros(1, np.int64),) if mode == "nearest" else _identity_taps())



def _as_planes(shape: Sequence[int]) -> tuple[int, int, int]:
    """(planes, height, width) of ``shape`` seen as a stack of planes."""
    if len(shape) == 1:
        return 1, 1, int(shape[0])
    return int(np.prod(shape[:-2], dtype=np.int64)), int(shape[-2]), int(shape[-1])


def _identity_taps() -> tuple[np.ndarray, ...]:
    zero = np.zeros(1, np.int64)
    return zero, zero, np.ones(1, np.float32), np.zeros(1, np.float32)


@register_tactic
class ResizeTablesTactic(RunsBound, Tactic):
    """Resize, nearest or linear over the last two axes, from per-axis index/weight tables."""

    name = "cpu.resize.tables"
    op_types = ("Resize",)
    priority = 10

    def supports(self, node: Node, graph: Graph) -> bool:
        if not float32_io(node, graph, 1):
            return False
        if node.attr("mode", "nearest") not in ("nearest", "linear"):
            return False
        if node.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
            return False
        if not (constant_input(node, graph, 2)[0] and constant_input(node, graph, 3)[0]):
            return False  # scales and sizes must be constants: the tables are made at bind time
        x = graph.values.get(node.input(0))
        if x is None or x.shape is None:
            return False
        if x.is_static:
            return self._plan(node, graph_inputs(node, graph), tuple(int(d) for d in x.shape)).ok
        # A dynamic shape: only constant scales that keep every leading axis (then any shape runs).
        scales, sizes = graph_inputs(node, graph)
        if scales is None or sizes is not None:
            return False
        rank = len(x.shape)
        ones = (1,) * rank
        _, used = resize_output_shape(ones, scales, None, node.attr("axes", None))
        shrinks = any(u < 1.0 for u in used[max(rank - 2, 0) :])
        antialiased = bool(node.attr("antialias", 0)) and node.attr("mode", "nearest") == "linear"
        return all(u == 1.0 for u in used[: max(rank - 2, 0)]) and not (antialiased and shrinks)

    def _plan(
        self, node: Node, constants: tuple[np.ndarray | None, np.ndarray | None], shape: tuple[int, ...]
    ) -> _Plan:
        scales, sizes = constants
        plan = _Plan(node, shape, scales, sizes)
        if plan.ok and bool(node.attr("antialias", 0)) and node.attr("mode", "nearest") == "linear":
            plan.ok = all(o >= i for o, i in zip(plan.out_shape, shape, strict=True))
        return plan

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays with the tables of this shape. Without ``copies``, None for
        an input or output that is not C-contiguous float32."""
        x, out = inputs[0], outputs[0]
        assert x is not None
        if not copies and (not dense(x) or not out.flags.c_contiguous):
            return None
        scales = inputs[2] if len(inputs) > 2 else None
        sizes = inputs[3] if len(inputs) > 3 else None
        if out.size == 0:
            return lambda: None
        shape = tuple(x.shape)
        key = (
            "resize_plan",
            shape,
            None if scales is None else np.asarray(scales).tobytes(),
            None if sizes is None else np.asarray(sizes).tobytes(),
        )  # once per shape: the tuner times run(), which binds every call
        plan = memo(prepared, key, lambda: self._plan(node, (scales, sizes), shape))
        if not plan.ok or plan.out_shape != tuple(out.shape):
            raise ValueError(
                f"Resize {node.name!r}: this shape is not one cpu.resize.tables runs ({x.shape})"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        src = x.reshape(_as_planes(x.shape))
        dst = out.reshape(_as_planes(out.shape))
        if node.attr("mode", "nearest") == "nearest":
            (rows,), (cols,) = plan.tables
            return bound_call(_resize_nearest, (src, dst, rows, cols), out.size)
        (r0, r1, rw0, rw1), (c0, c1, cw0, cw1) = plan.tables
        return bound_call(_resize_linear, (src, dst, r0, r1, rw0, rw1, c0, c1, cw0, cw1), 4 * out.size)


def graph_inputs(node: Node, graph: Graph) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The node's constant scales and sizes (None when absent or empty)."""
    scales, sizes = constant_input(node, graph, 2)[1], constant_input(node, graph, 3)[1]
    return (
        None if scales is None or scales.size == 0 else scales,
        None if sizes is None or sizes.size == 0 else sizes,
    )
