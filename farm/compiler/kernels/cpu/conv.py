"""Convolution tactics (FusedConv and plain Conv, 1-D and 2-D, FP32).

The GEMM-based implementations the tuner chooses between per layer (depthwise convs:
``depthwise.py``; 1x1 register-blocked: ``pointwise.py``; output tiles in one pool:
``conv_tiled.py``; Winograd: ``winograd.py``):

* ``cpu.conv.im2col_gemm``: numba im2col of one image, then one BLAS GEMM per group (a stacked
  ``matmul`` [G, M/G, K] x [G, K, P]) straight into the NCHW output, then the fused epilogue.
  Any strides, asymmetric pads, dilations and groups.
* ``cpu.conv.im2col_gemm_batched``: im2col of the whole batch into [K, N*P] and one GEMM, so
  late layers with few output pixels give BLAS a wide matrix; the epilogue scatters the result
  into NCHW (the transpose costs nothing extra: the epilogue reads the output once anyway).
* ``cpu.conv.pointwise_gemm``: 1x1, stride 1, no padding: the input already *is* the im2col
  matrix, so the conv is a plain (grouped) GEMM with no copy.
* ``cpu.conv.im2col_gemm_1t`` / ``cpu.conv.pointwise_gemm_1t``: the same with BLAS held to the
  calling thread (small layers; hosts where BLAS's second thread waits for a core).

Weights are repacked once in ``prepare`` ([G, M/G, K] float32 for the GEMM tactics) and replace
the raw weight in the engine. Pools: the GEMM tactics use numba's pool for im2col and the
epilogue and BLAS's pool for the GEMM, one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    epilogue_channel_rows,
    epilogue_params,
    epilogue_transpose,
    finish_row,
    residual_rows,
    vector_or_dummy,
)
from farm.compiler.kernels.cpu._operands import float32_io, workspace
from farm.compiler.kernels.cpu._threads import SingleThreadBlas, blas_threads_for, threads_for
from farm.compiler.kernels.cpu._windows import (
    copy_window,
    phase_geometry,
    phase_planes,
    tap_window,
    valid_columns,
)
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

CONV_OPS = ("FusedConv", "Conv")


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution's hyper-parameters (1-D convs are 2-D with a height of 1)."""

    kh: int
    kw: int
    sh: int
    sw: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int
    dh: int
    dw: int
    group: int

    @classmethod
    def of(cls, node: Node, weight_shape: Sequence[int]) -> ConvGeometry:
        """Read the attributes of ``node`` (a 1-D or 2-D Conv/FusedConv)."""
        spatial = len(weight_shape) - 2
        kernel = list(node.attr("kernel_shape") or weight_shape[2:])
        strides = list(node.attr("strides") or [1] * spatial)
        dilations = list(node.attr("dilations") or [1] * spatial)
        pads = list(node.attr("pads") or [0] * (2 * spatial))
        if spatial == 1:
            kernel, strides, dilations = [1, *kernel], [1, *strides], [1, *dilations]
            pads = [0, pads[0], 0, pads[1]]
        return cls(
            kh=int(kernel[0]),
            kw=int(kernel[1]),
            sh=int(strides[0]),
            sw=int(strides[1]),
            pad_top=int(pads[0]),
            pad_left=int(pads[1]),
            pad_bottom=int(pads[2]),
            pad_right=int(pads[3]),
            dh=int(dilations[0]),
            dw=int(dilations[1]),
            group=int(node.attr("group", 1)),
        )


def _conv_node_ok(node: Node, graph: Graph) -> bool:
    """Common guard: FP32, 1-D or 2-D, explicit pads, a weight of known rank."""
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "", b"NOTSET"):
        return False
    w = graph.values.get(node.input(1))
    x = graph.values.get(node.input(0))
    if w is None or w.shape is None or len(w.shape) not in (3, 4) or x is None:
        return False
    return float32_io(node, graph)


def _as_4d(x: np.ndarray) -> np.ndarray:
    """NCW -> NC1W; NCHW unchanged."""
    return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if x.ndim == 3 else x


def _weight_4d(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]) if w.ndim == 3 else w


def _pack_gemm_weight(w: np.ndarray, group: int) -> np.ndarray:
    """[M, C/G, kh, kw] -> C-contiguous float32 [G, M/G, C/G*kh*kw]."""
    w = _weight_4d(w)
    m = w.shape[0]
    return np.ascontiguousarray(w.reshape(group, m // group, -1), dtype=np.float32)


@njit(error_model="numpy", cache=True, nogil=True)
def axpy_window(dst, weight, src, start, stride):
    """dst[t] += weight * src[start + t*stride]."""
    n = dst.shape[0]
    if stride == 1:
        window = src[start : start + n]
        for t in range(n):
            dst[t] += weight * window[t]
    else:
        strided = src[start : start + (n - 1) * stride + 1 : stride]
        for t in range(n):
            dst[t] += weight * strided[t]


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def im2col(x, cols, n_first, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """Fill ``cols`` [C*kh*kw, nimg*ho*wo] from images ``n_first ..`` of ``x`` [N, C, H, W].

    Row ``(c*kh + i)*kw + j`` holds input channel c shifted by kernel tap (i, j); padding is 0.
    """
    c_count, h, w = x.shape[1], x.shape[2], x.shape[3]
    p = ho * wo
    nimg = cols.shape[1] // p
    rows = c_count * kh * kw
    for r in prange(rows):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        off_x = j * dw - pl
        lo, hi = valid_columns(off_x, sw, w, wo)
        for k in range(nimg):
            plane = x[n_first + k, c]
            base = k * p
            for oy in range(ho):
                iy = oy * sh - pt + i * dh
                dst = cols[r, base + oy * wo : base + (oy + 1) * wo]
                if iy < 0 or iy >= h:
                    dst[:] = 0.0
                    continue
                dst[:lo] = 0.0
                copy_window(dst[lo:hi], plane[iy], lo * sw + off_x, sw)
                dst[hi:] = 0.0


class _GemmConvBase(Tactic):
    """Shared prepare/supports for the GEMM-based conv tactics."""

    op_types = CONV_OPS

    def supports(self, node: Node, graph: Graph) -> bool:
        return _conv_node_ok(node, graph)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        prepared = Prepared(params={"weight_shape": _weight_shape(node, graph)})
        w = graph.const(node.input(1))
        if w is not None:
            geo = ConvGeometry.of(node, w.shape)
            prepared.tensors["weight"] = _pack_gemm_weight(w, geo.group)
        b = graph.const(node.input(2))
        if b is not None:
            prepared.tensors["bias"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        prepared.replaces = frozenset(i for i, k in ((1, "weight"), (2, "bias")) if k in prepared.tensors)
        return prepared

    @staticmethod
    def operands(
        node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> tuple[ConvGeometry, np.ndarray, np.ndarray, bool]:
        """(geometry, packed weight [G, M/G, K], bias vector, has bias) for this run.

        Cached in ``prepared.scratch`` when both come from ``prepare`` (constants)."""
        cached = prepared.scratch.get("operands")
        if cached is not None:
            return cached
        raw_w = inputs[1]
        geo = ConvGeometry.of(node, prepared.params.get("weight_shape") or raw_w.shape)  # type: ignore[union-attr]
        if "weight" in prepared.tensors:
            packed = np.ascontiguousarray(prepared.tensors["weight"], dtype=np.float32)
        else:
            packed = _pack_gemm_weight(raw_w, geo.group)  # type: ignore[arg-type]
        raw_b = prepared.tensors.get("bias", inputs[2] if len(inputs) > 2 else None)
        bias, has_bias = vector_or_dummy(raw_b)
        result = (geo, packed, bias, has_bias)
        if "weight" in prepared.tensors and (not node.input(2) or "bias" in prepared.tensors):
            prepared.scratch["operands"] = result
        return result


def _weight_shape(node: Node, graph: Graph) -> list[int]:
    """The raw weight's shape (the packed weight loses the kernel size)."""
    return [int(d) for d in (graph.values[node.input(1)].shape or ())]


def _out_4d(out: np.ndarray) -> np.ndarray:
    return out.reshape(out.shape[0], out.shape[1], 1, out.shape[2]) if out.ndim == 3 else out


@register_tactic
class Im2colGemmConv(_GemmConvBase):
    """im2col per image + a stacked BLAS GEMM per group into the NCHW output + fused epilogue."""

    name = "cpu.conv.im2col_gemm"
    priority = 10

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        geo, weight, bias, has_bias = self.operands(node, inputs, prepared)
        x = _as_4d(inputs[0])  # type: ignore[arg-type]
        out = _out_4d(outputs[0])
        n, m, ho, wo = out.shape
        p = ho * wo
        g, mg, kg = weight.shape
        cols = workspace(prepared, "cols", (g * kg, p))
        with threads_for(cols.size):
            for k in range(n):
                im2col(
                    x,
                    cols,
                    k,
                    geo.kh,
                    geo.kw,
                    geo.sh,
                    geo.sw,
                    geo.pad_top,
                    geo.pad_left,
                    geo.dh,
                    geo.dw,
                    ho,
                    wo,
                )
                with blas_threads_for(2 * weight.size * p):
                    np.matmul(weight, cols.reshape(g, kg, p), out=out[k].reshape(g, mg, p))
        _run_epilogue(node, inputs, out, outputs[0].shape, bias, has_bias)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def im2col_wide(x, n, cols, kh, kw, stride, pt, pl, dh, dw, ho, wo):
    """im2col of image ``n`` on the padded-width grid, from phase planes (see ``_windows``).

    ``cols`` is [C*kh*kw, ho*grid_cols]; row (c, i, j) is one contiguous copy of tap (i, j)'s
    window of channel c's phase planes, so the whole im2col is C*kh*kw long copies instead of
    C*kh*kw*ho short ones. Columns ox >= wo of each output row are junk the epilogue drops.
    """
    c_count = x.shape[1]
    rows, grid_cols = phase_geometry(ho, wo, kh, kw, stride, dh, dw)
    length = ho * grid_cols
    for c in prange(c_count):
        phases = phase_planes(x[n, c], stride, pt, pl, rows, grid_cols, np.float32(0.0))
        for i in range(kh):
            for j in range(kw):
                window = tap_window(phases, i, j, stride, dh, dw, grid_cols, length)
                dst = cols[(c * kh + i) * kw + j]
                for q in range(length):
                    dst[q] = window[q]


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def epilogue_compact(wide, out_rows, grid_cols, bias, has_bias, residual, res_mode, act, alpha, beta):
    """out_rows[m*Ho + oy] = epilogue(wide[m, oy*grid_cols : oy*grid_cols + Wo]): drops the junk
    columns of the padded-width GEMM result while applying bias, residual and activation."""
    rows, wo = out_rows.shape
    ho = rows // wide.shape[0]
    for r in prange(rows):
        m = r // ho
        oy = r % ho
        row = out_rows[r]
        src = wide[m, oy * grid_cols : oy * grid_cols + wo]
        for q in range(wo):
            row[q] = src[q]
        b = bias[m] if has_bias else np.float32(0.0)
        res = residual[r] if res_mode != 0 else residual[0]
        finish_row(row, b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


@register_tactic
class WideIm2colGemmConv(_GemmConvBase):
    """im2col on the padded-width grid from phase planes (long copies), one GEMM per image, and
    an epilogue that drops the grid's extra columns. Equal strides, no groups; pays when the
    output is wide (the grid adds (kw-1)*dw/stride columns per row to the GEMM)."""

    name = "cpu.conv.im2col_gemm_wide"
    priority = 12

    def supports(self, node: Node, graph: Graph) -> bool:
        if not super().supports(node, graph) or int(node.attr("group", 1)) != 1:
            return False
        w = graph.values[node.input(1)]
        geo = ConvGeometry.of(node, w.shape)  # type: ignore[arg-type]
        return geo.sh == geo.sw and (geo.kh, geo.kw) != (1, 1)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        geo, weight, bias, has_bias = self.operands(node, inputs, prepared)
        x = np.ascontiguousarray(_as_4d(inputs[0]))  # type: ignore[arg-type]
        out = _out_4d(outputs[0])
        n, m, ho, wo = out.shape
        grid_cols = wo + ((geo.kw - 1) * geo.dw) // geo.sw
        kg = weight.shape[2]
        cols = workspace(prepared, "cols", (kg, ho * grid_cols))
        wide = workspace(prepared, "wide", (m, ho * grid_cols))
        act, alpha, beta, mode = epilogue_params(node)
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, outputs[0].shape, n * m * ho)
        per_image = m * ho
        with threads_for(cols.size):
            for k in range(n):
                im2col_wide(
                    x, k, cols, geo.kh, geo.kw, geo.sh, geo.pad_top, geo.pad_left, geo.dh, geo.dw, ho, wo
                )
                with blas_threads_for(2 * weight.size * cols.shape[1]):
                    np.matmul(weight[0], cols, out=wide)
                res = residual[k * per_image : (k + 1) * per_image] if mode != 0 else residual
                epilogue_compact(
                    wide,
                    out[k].reshape(per_image, wo),
                    grid_cols,
                    bias,
                    has_bias,
                    res,
                    mode,
                    act,
                    alpha,
                    beta,
                )


@register_tactic
class BatchedIm2colGemmConv(_GemmConvBase):
    """im2col of the whole batch + one GEMM [M, K] x [K, N*P] + an epilogue that scatters to NCHW."""

    name = "cpu.conv.im2col_gemm_batched"
    priority = 5

    def supports(self, node: Node, graph: Graph) -> bool:
        return super().supports(node, graph) and int(node.attr("group", 1)) == 1

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        geo, weight, bias, has_bias = self.operands(node, inputs, prepared)
        x = _as_4d(inputs[0])  # type: ignore[arg-type]
        out = _out_4d(outputs[0])
        n, m, ho, wo = out.shape
        p = ho * wo
        kg = weight.shape[2]
        cols = workspace(prepared, "cols", (kg, n * p))
        tmp = workspace(prepared, "gemm_out", (m, n * p))
        act, alpha, beta, mode = epilogue_params(node)
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, outputs[0].shape, n * m)
        with threads_for(cols.size):
            im2col(
                x, cols, 0, geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw, ho, wo
            )
            with blas_threads_for(2 * weight.size * cols.shape[1]):
                np.matmul(weight[0], cols, out=tmp)
            epilogue_transpose(tmp, out.reshape(n * m, p), bias, has_bias, residual, mode, act, alpha, beta)


@register_tactic
class PointwiseGemmConv(_GemmConvBase):
    """1x1 conv, stride 1, no padding: a (grouped) GEMM on the input as it lies, no im2col."""

    name = "cpu.conv.pointwise_gemm"
    priority = 20

    def supports(self, node: Node, graph: Graph) -> bool:
        if not super().supports(node, graph):
            return False
        w = graph.values[node.input(1)]
        geo = ConvGeometry.of(node, w.shape)  # type: ignore[arg-type]
        return (geo.kh, geo.kw, geo.sh, geo.sw) == (1, 1, 1, 1) and not any(
            (geo.pad_top, geo.pad_left, geo.pad_bottom, geo.pad_right)
        )

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        _, weight, bias, has_bias = self.operands(node, inputs, prepared)
        x = _as_4d(inputs[0])  # type: ignore[arg-type]
        out = _out_4d(outputs[0])
        n = x.shape[0]
        g, mg, cg = weight.shape
        p = x.shape[2] * x.shape[3]
        xs = np.ascontiguousarray(x).reshape(n, g, cg, p)
        with blas_threads_for(2 * weight.size * p * n):
            np.matmul(weight, xs, out=out.reshape(n, g, mg, p))
        _run_epilogue(node, inputs, out, outputs[0].shape, bias, has_bias)


@register_tactic
class SingleThreadPointwiseGemmConv(SingleThreadBlas, PointwiseGemmConv):
    """``cpu.conv.pointwise_gemm`` with BLAS on the calling thread only (small 1x1 convs)."""

    name = "cpu.conv.pointwise_gemm_1t"
    priority = 18


@register_tactic
class SingleThreadIm2colGemmConv(SingleThreadBlas, Im2colGemmConv):
    """``cpu.conv.im2col_gemm`` with BLAS on the calling thread only (small convs, busy hosts)."""

    name = "cpu.conv.im2col_gemm_1t"
    priority = 8


def _run_epilogue(
    node: Node,
    inputs: Sequence[np.ndarray | None],
    out: np.ndarray,
    out_shape: tuple[int, ...],
    bias: np.ndarray,
    has_bias: bool,
) -> None:
    """Bias + activation + residual over the NCHW ``out`` in place (skipped when there is none)."""
    act, alpha, beta, mode = epilogue_params(node)
    if not has_bias and act == 0 and mode == 0:
        return
    n, m = out.shape[0], out.shape[1]
    rows = out.reshape(n * m, -1)
    residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out_shape, n * m)
    with threads_for(rows.size):
        epilogue_channel_rows(rows, bias, m, has_bias, residual, mode, act, alpha, beta)
