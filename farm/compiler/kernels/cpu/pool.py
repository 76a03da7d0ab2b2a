"""Pooling tactics in numba, FP32: MaxPool, AveragePool (1-D and 2-D) and GlobalAveragePool.

``cpu.pool.window``: one (image, channel) plane per iteration. Each output row is built tap by
tap as whole-row max/add loops over the valid output columns (the same loop shape as the
depthwise conv), so the loops are unit-stride for stride 1. The output size comes from the
output buffer, which already reflects ``ceil_mode``. AveragePool's divisor is separable: the
number of taps inside the counted region along y times along x (the padded region with
``count_include_pad``, the image otherwise), as ONNX Runtime and PyTorch count it.

``cpu.pool.separable``: the same ops reduced separably, rows first into one padded row, then
the column taps on that row's stride phases: one pass over the input and no per-plane phase
copies (ResNet's 3x3 stride-2 stem MaxPool, bench_kernels_vs_ort.py: 0.95 / 0.81 x ONNX Runtime
at batch 1 / 8, against 1.02 / 1.00 for ``window``).

``cpu.pool.global_average``: a vectorized float32 sum per plane.

Pool: numba's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._operands import RunsBound, dense, float32_io
from farm.compiler.kernels.cpu._simd16 import max_into
from farm.compiler.kernels.cpu._threads import bound_call, threads_for
from farm.compiler.kernels.cpu._windows import phase_geometry, phase_planes, pooled_taps, valid_columns
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic


@njit(error_model="numpy", cache=True, nogil=True)
def _tap_counts(out_size, in_size, k, stride, dilation, pad_begin, lo, hi):
    """For each output position, how many of its k taps land in [lo, hi)."""
    counts = np.zeros(out_size, np.float32)
    for o in range(out_size):
        start = o * stride - pad_begin
        for t in range(k):
            p = start + t * dilation
            if lo <= p < hi:
                counts[o] += 1.0
    return counts


@njit(error_model="numpy", cache=True, nogil=True)
def _divisors(h, w, ho, wo, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad):
    """AveragePool's separable divisor: (taps per output row, taps per output column) inside the
    counted region (the padded input with ``count_include_pad``, the input otherwise)."""
    if count_include_pad:
        return _tap_counts(ho, h, kh, sh, dh, pt, -pt, h + pb), _tap_counts(
            wo, w, kw, sw, dw, pl, -pl, w + pr
        )
    return _tap_counts(ho, h, kh, sh, dh, pt, 0, h), _tap_counts(wo, w, kw, sw, dw, pl, 0, w)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def pool_planes(x, out, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, is_max, count_include_pad):
    """Max or average pooling of x [N, C, H, W] into out [N, C, Ho, Wo]."""
    n_count, c_count, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    count_y, count_x = _divisors(h, w, ho, wo, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad)
    for t in prange(n_count * c_count):
        plane = x[t // c_count, t % c_count]
        o = out[t // c_count, t % c_count]
        for oy in range(ho):
            orow = o[oy]
            fill = -np.inf if is_max else 0.0
            for ox in range(wo):
                orow[ox] = fill
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                if iy < 0 or iy >= h:
                    continue
                src = plane[iy]
                for j in range(kw):
                    off = j * dw - pl
                    lo, hi = valid_columns(off, sw, w, wo)
                    window = src[lo * sw + off : lo * sw + off + (hi - lo - 1) * sw + 1 : sw]
                    dst = orow[lo:hi]
                    if is_max:
                        for q in range(hi - lo):
                            dst[q] = max(dst[q], window[q])
                    else:
                        for q in range(hi - lo):
                            dst[q] += window[q]
            if not is_max:
                cy = count_y[oy]
                for ox in range(wo):
                    orow[ox] = orow[ox] / (cy * count_x[ox])


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def pool_planes_phased(x, out, kh, kw, stride, pt, pl, pb, pr, dh, dw, is_max, count_include_pad):
    """Max or average pooling with equal strides on phase planes (see ``_windows``): one long
    vectorized max/add per kernel tap over the whole output plane."""
    n_count, c_count, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    count_y, count_x = _divisors(
        h, w, ho, wo, kh, kw, stride, stride, dh, dw, pt, pl, pb, pr, count_include_pad
    )
    rows, cols = phase_geometry(ho, wo, kh, kw, stride, dh, dw)
    length = ho * cols
    fill = np.float32(-np.inf) if is_max else np.float32(0.0)
    for t in prange(n_count * c_count):
        phases = phase_planes(x[t // c_count, t % c_count], stride, pt, pl, rows, cols, fill)
        acc = pooled_taps(phases, kh, kw, stride, dh, dw, cols, length, is_max)
        o = out[t // c_count, t % c_count]
        for oy in range(ho):
            orow = o[oy]
            src = acc[oy * cols : oy * cols + wo]
            if is_max:
                for q in range(wo):
                    orow[q] = src[q]
            else:
                cy = count_y[oy]
                for q in range(wo):
                    orow[q] = src[q] / (cy * count_x[q])


def _window_geometry(node: Node, rank: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, strides, pads [begin..., end...], dilations) of a pooling node, 2-D form."""
    spatial = rank - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides") or [1] * spatial)
    pads = list(node.attr("pads") or [0] * (2 * spatial))
    dilations = list(node.attr("dilations") or [1] * spatial)
    if spatial == 1:
        return [1, *kernel], [1, *strides], [0, pads[0], 0, pads[1]], [1, *dilations]
    return kernel, strides, pads, dilations


@register_tactic
class WindowPool(RunsBound, Tactic):
    """MaxPool / AveragePool over 1-D or 2-D windows (strides, asymmetric pads, dilations, ceil_mode)."""

    name = "cpu.pool.window"
    op_types = ("MaxPool", "AveragePool")
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        x = graph.values.get(node.input(0))
        return (
            float32_io(node, graph)
            and len([o for o in node.outputs if o]) == 1
            and node.attr("auto_pad", "NOTSET") in ("NOTSET", "", "VALID")
            and x is not None
            and x.rank in (3, 4)
            and node.attr("kernel_shape") is not None
        )

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays, the attributes read once. Without ``copies`` (the runtime's
        binding), None for an input or output that is not C-contiguous float32. Bound, a small
        pool costs its kernel alone: YOLO's SPPF 5x5 MaxPool on 128 x 10 x 10 spent about as
        long in ``run``'s Python as in the kernel."""
        x, out = inputs[0], outputs[0]
        if not copies and (not dense(x) or not out.flags.c_contiguous):
            return None
        x = np.ascontiguousarray(x, dtype=np.float32)
        kernel, strides, pads, dilations = _window_geometry(node, x.ndim)
        if x.ndim == 3:
            x = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
            out = out.reshape(out.shape[0], out.shape[1], 1, out.shape[2])
        is_max = node.op_type == "MaxPool"
        include_pad = bool(node.attr("count_include_pad", 0))
        elements = out.size * kernel[0] * kernel[1]
        with threads_for(elements):  # a task plan sees the thread count the kernel runs with
            fn, args = self._kernel(x, out, kernel, strides, pads, dilations, is_max, include_pad)
        return bound_call(fn, args, elements)

    def _kernel(
        self, x: np.ndarray, out: np.ndarray, kernel: list[int], strides: list[int], pads: list[int],
        dilations: list[int], is_max: bool, include_pad: bool,
    ) -> tuple[Callable[..., None], tuple]:  # fmt: skip
        """The kernel function and its arguments for 4-D x and out."""
        if strides[0] == strides[1]:
            return pool_planes_phased, (
                x, out, kernel[0], kernel[1], strides[0],
                pads[0], pads[1], pads[2], pads[3], dilations[0], dilations[1], is_max, include_pad,
            )  # fmt: skip
        return pool_planes, (
            x, out, kernel[0], kernel[1], strides[0], strides[1],
            pads[0], pads[1], pads[2], pads[3], dilations[0], dilations[1], is_max, include_pad,
        )  # fmt: skip


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def pool_planes_separable(x, out, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, is_max, count_include_pad):
    """Max or average pooling of x [N, C, H, W] into out [N, C, Ho, Wo], separably: per output
    row, the kh input rows reduce into one padded row (contiguous, vectorized), which is split
    into its sw column phases; each column tap then reads one phase contiguously. One pass over
    the input, no per-plane phase copies."""
    n_count, c_count, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    count_y, count_x = _divisors(h, w, ho, wo, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad)
    span = (wo - 1) * sw + (kw - 1) * dw + 1  # padded columns the windows touch
    phase_len = (span + sw - 1) // sw
    fill = np.float32(-np.inf) if is_max else np.float32(0.0)
    lo = min(pl, span)  # padded column u holds input column u - pl
    hi = max(lo, min(span, w + pl))
    for t in prange(n_count * c_count):
        plane = x[t // c_count, t % c_count]
        o = out[t // c_count, t % c_count]
        row = np.empty(span, np.float32)
        phases = np.empty((sw, phase_len), np.float32)
        for oy in range(ho):
            for u in range(span):
                row[u] = fill
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                if iy < 0 or iy >= h:
                    continue
                src = plane[iy, lo - pl : hi - pl]
                dst = row[lo:hi]
                if is_max:
                    max_into(dst, src)
                else:
                    for q in range(hi - lo):
                        dst[q] += src[q]
            for b in range(sw):
                ph = phases[b]
                for q in range(phase_len):
                    u = q * sw + b
                    ph[q] = row[u] if u < span else fill
            orow = o[oy]
            first = phases[0]
            for q in range(wo):
                orow[q] = first[q]
            for j in range(1, kw):
                off = j * dw
                tap = phases[off % sw, off // sw : off // sw + wo]
                if is_max:
                    max_into(orow, tap)
                else:
                    for q in range(wo):
                        orow[q] += tap[q]
            if not is_max:
                cy = count_y[oy]
                for q in range(wo):
                    orow[q] = orow[q] / (cy * count_x[q])


@register_tactic
class SeparableWindowPool(WindowPool):
    """MaxPool / AveragePool reduced separably (:func:`pool_planes_separable`): rows first into
    one padded row, then the column taps on its stride phases; one pass over the input. Same
    attributes as ``cpu.pool.window``."""

    name = "cpu.pool.separable"
    priority = 21

    def _kernel(
        self, x: np.ndarray, out: np.ndarray, kernel: list[int], strides: list[int], pads: list[int],
        dilations: list[int], is_max: bool, include_pad: bool,
    ) -> tuple[Callable[..., None], tuple]:  # fmt: skip
        return pool_planes_separable, (
            x, out, kernel[0], kernel[1], strides[0], strides[1],
            pads[0], pads[1], pads[2], pads[3], dilations[0], dilations[1], is_max, include_pad,
        )  # fmt: skip


@njit(error_model="numpy", parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def global_average(x, out):
    """out[r] = mean(x[r]) for rows of x [R, L] (reassociated float32 sum: it vectorizes)."""
    rows, length = x.shape
    for r in prange(rows):
        total = np.float32(0.0)
        src = x[r]
        for j in range(length):
            total += src[j]
        out[r] = total / np.float32(length)


@register_tactic
class GlobalAveragePoolTactic(RunsBound, Tactic):
    """GlobalAveragePool: the mean of every (image, channel) plane."""

    name = "cpu.pool.global_average"
    op_types = ("GlobalAveragePool",)
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        x = graph.values.get(node.input(0))
        return float32_io(node, graph) and x is not None and x.rank is not None and x.rank >= 3

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays. Without ``copies`` (the runtime's binding), None for an
        input that is not C-contiguous float32."""
        x = inputs[0]
        if not copies and (not dense(x) or not outputs[0].flags.c_contiguous):
            return None
        x = np.ascontiguousarray(x, dtype=np.float32)
        planes = x.shape[0] * x.shape[1]
        return bound_call(global_average, (x.reshape(planes, -1), outputs[0].reshape(planes)), x.size)
