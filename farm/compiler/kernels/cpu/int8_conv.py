"""INT8 convolution tactic (FusedConv / Conv, group 1, 1-D or 2-D).

``cpu.int8.conv_im2col``: one numba pass gathers each output pixel's receptive field from the
FP32 input and quantizes it on the way (padding becomes the zero point, i.e. the quantized 0.0)
into a [N*P, C*kh*kw] int8/uint8 matrix; the int8 GEMM of ``int8_gemm`` multiplies it by the
int8 weight [M, C*kh*kw] with int32 accumulation and dequantizes (``(acc - zp*colsum) * s_x *
s_w[m]``); the shared conv epilogue scatters the result into NCHW while adding bias, residual
and the activation. Depthwise and grouped convolutions have no INT8 tactic: they stay in FP32
(they are memory-bound; INT8 would save little).

Pool: numba's only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    NO_MATRIX,
    RES_NONE,
    epilogue_params,
    epilogue_transpose,
    residual_rows,
)
from farm.compiler.kernels.cpu._operands import memo, workspace
from farm.compiler.kernels.cpu._threads import threads_for
from farm.compiler.kernels.cpu.conv import ConvGeometry, _as_4d, _conv_node_ok, _out_4d
from farm.compiler.kernels.cpu.int8_gemm import MAX_K, int8_gemm, int8_operands, pack_int8_weight
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.precision.quantize import activation_quant, is_quantizable


@njit(parallel=True, cache=True, nogil=True)
def im2col_quantize(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, inv_scale, zero_point, qmin, qmax):
    """``cols[n*P + oy*wo + ox, (c*kh + i)*kw + j] = quantize(x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw])``
    with out-of-image taps quantized from 0.0."""
    c_count, h, w = x.shape[1], x.shape[2], x.shape[3]
    p = ho * wo
    pad_q = min(max(np.float32(zero_point), qmin), qmax)
    for r in prange(x.shape[0] * p):
        n = r // p
        oy = (r % p) // wo
        ox = r % wo
        dst = cols[r]
        col = 0
        for c in range(c_count):
            plane = x[n, c]
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                for j in range(kw):
                    ix = ox * sw - pl + j * dw
                    if iy < 0 or iy >= h or ix < 0 or ix >= w:
                        dst[col] = pad_q
                    else:
                        q = np.rint(plane[iy, ix] * inv_scale) + zero_point
                        dst[col] = min(max(q, qmin), qmax)
                    col += 1


@register_tactic
class Int8Im2colConv(Tactic):
    """Quantizing im2col + int8 GEMM + dequantizing conv epilogue."""

    name = "cpu.int8.conv_im2col"
    op_types = ("FusedConv", "Conv")
    precisions = ("int8",)
    priority = -20

    def supports(self, node: Node, graph: Graph) -> bool:
        if (
            activation_quant(node) is None
            or not is_quantizable(node, graph)
            or not _conv_node_ok(node, graph)
        ):
            return False
        if int(node.attr("group", 1)) != 1:
            return False
        w = graph.const(node.input(1))
        if w is None or int(np.prod(w.shape[1:])) > MAX_K:
            return False  # the int32 sums could overflow
        bias = graph.values.get(node.input(2)) if node.input(2) else None
        return bias is None or bias.is_const

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return pack_int8_weight(node, graph)

    @staticmethod
    def epilogue_and_geometry(
        node: Node, prepared: Prepared
    ) -> tuple[tuple[int, float, float, int], ConvGeometry]:
        """The node's fused epilogue and conv geometry, derived once per context."""
        return memo(
            prepared,
            "epilogue",
            lambda: (epilogue_params(node), ConvGeometry.of(node, prepared.params["weight_shape"])),
        )

    def fill_product(
        self, x: np.ndarray, geo: ConvGeometry, ho: int, wo: int, prepared: Prepared, product: np.ndarray
    ) -> None:
        """``product`` [N*P, M] = the dequantized product of the quantized receptive fields of
        the 4-D input ``x`` and the weight (no bias: the conv epilogue adds it)."""
        dtype = np.dtype(prepared.params["input_dtype"])
        info = np.iinfo(dtype)
        cols = workspace(
            prepared, "cols", (product.shape[0], int(np.prod(prepared.params["weight_shape"][1:]))), dtype
        )
        zero_point = prepared.params["input_zero_point"]
        with threads_for(cols.size):
            im2col_quantize(
                x, cols, geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw, ho, wo,
                np.float32(1.0 / prepared.params["input_scale"]), np.float32(zero_point),
                np.float32(info.min), np.float32(info.max),
            )  # fmt: skip
        w, wsum, col_scale, bias, _ = int8_operands(prepared)
        with threads_for(product.size * w.shape[1] // 16):
            int8_gemm(
                cols, w, wsum, np.int32(zero_point), col_scale, bias, False, NO_MATRIX, RES_NONE, 0, 0.0, 0.0, product
            )  # fmt: skip

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        x_raw = inputs[0]
        assert x_raw is not None
        x = _as_4d(np.ascontiguousarray(x_raw, dtype=np.float32))
        out = _out_4d(outputs[0])
        (act, alpha, beta, mode), geo = self.epilogue_and_geometry(node, prepared)
        n_img, m = x.shape[0], int(prepared.params["weight_shape"][0])
        ho, wo = out.shape[2], out.shape[3]
        p = ho * wo
        product = workspace(prepared, "product", (n_img * p, m))
        self.fill_product(x, geo, ho, wo, prepared, product)
        _, _, _, bias, has_bias = int8_operands(prepared)
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, n_img * m)
        target = out.reshape(n_img * m, p) if out.flags.c_contiguous else np.empty((n_img * m, p), np.float32)
        with threads_for(target.size):
            epilogue_transpose(product.T, target, bias, has_bias, residual, mode, act, alpha, beta)
        if not out.flags.c_contiguous:
            out[...] = target.reshape(out.shape)
