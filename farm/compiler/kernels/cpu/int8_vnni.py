"""INT8 GEMM on AVX-512 VNNI register tiles: ``cpu.int8.gemm_vnni`` (``cpu.int8.conv_vnni`` and
``cpu.int8.conv_tiles`` in ``int8_conv_tiles`` use the same instruction).

The int8 dot products of ``int8_gemm`` run in int32 lanes, four products per lane per
instruction at best, so there INT8 loses to FP32. Here one ``vpdpbusd`` multiplies 64 unsigned
activation bytes by 64 signed weight bytes and adds them into sixteen int32 sums, 4x an FP32
FMA's work, and the micro-kernel keeps a 12-row x 32-column tile in 24 ``zmm`` accumulators
(the 12 x 32 shape of ``_microgemm``'s FP32 tile):

* the weight [N, K] is packed once at build time into panels of 16 output columns, each step of
  four K values one 64-byte vector (column ``c``'s four bytes in lane ``c``), K padded to a
  multiple of 4 and N to one of 16 with zeros;
* the activation rows are quantized into uint8 rows of the padded length (an int8 input, the
  symmetric scheme, is moved to uint8 by adding 128 to its codes and its zero point: the same
  numbers), and each step broadcasts one row's four bytes to all lanes;
* the epilogue subtracts ``zero_point * colsum(w)`` in int32 (exact), converts, scales by
  ``s_x * s_w[n]`` and adds the bias in one FMA, and stores the tile's valid rows and columns;
  activation and residual follow in the row or conv epilogue as in the plain tactics.

The results equal ``int8_gemm``'s bit for bit up to the float rounding of the dequantization.
Offered only where the host has AVX-512 VNNI (:data:`~._vnni.VNNI`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    NO_VECTOR,
    RES_NONE,
    epilogue_params,
    epilogue_vector_rows,
    residual_rows,
)
from farm.compiler.kernels.cpu._operands import memo, workspace
from farm.compiler.kernels.cpu._simd16 import called_tile, vfma16, vload16, vstore16_masked
from farm.compiler.kernels.cpu._threads import threads_for
from farm.compiler.kernels.cpu._vnni import (
    VNNI,
    vbroadcast_bytes4,
    vcvt_f32x16,
    vdpbusd,
    vload_bytes64,
    vload_i32x16,
    vsub_i32x16,
    vzero_i32x16,
)
from farm.compiler.kernels.cpu.int8_gemm import Int8Gemm, int8_operands, quantize_rows
from farm.compiler.kernels.registry import Prepared, register_tactic

MR = 12  # rows of a tile
PANEL = 16  # output columns of a packed weight panel (one vector)

OFFERED: bool = VNNI
"""Whether the VNNI tactics are offered on this host."""


def pack_vnni_weight(w: np.ndarray) -> np.ndarray:
    """int8 ``w`` [N, K] as flat panels ``[ceil(N/16), ceil(K/4), 16, 4]``: panel ``p``, step
    ``q`` holds columns ``16p .. 16p+15`` x ``K`` values ``4q .. 4q+3`` (zeros past N and K)."""
    n, k = w.shape
    kp = -(-k // 4) * 4
    np_ = -(-n // PANEL) * PANEL
    padded = np.zeros((np_, kp), np.int8)
    padded[:n, :k] = w
    return np.ascontiguousarray(
        padded.reshape(np_ // PANEL, PANEL, kp // 4, 4).transpose(0, 2, 1, 3)
    ).reshape(-1)


@njit(cache=True, nogil=True, error_model="numpy", inline="always", fastmath={"contract"})
def _store_row(c, z, s, b, out, at, count):
    """Dequantize one accumulator vector and store its first ``count`` (1 .. 16) lanes."""
    vstore16_masked(out, at, vfma16(vcvt_f32x16(vsub_i32x16(c, z)), s, b), count)


@called_tile
def tile_12x32(a, ao, rs, qs, w, wo, panel, kq, out, oo, ldo, rows, cols, zw, scale, bias, n0):
    """12 rows of ``a`` (``rows`` of them stored; row r's four bytes of step q at
    ``ao + r*rs + q*qs``) x the two weight panels at ``wo`` and ``wo + panel`` (``cols`` of their
    17 .. 32 columns stored) over ``kq`` steps of four K values:
    ``out[oo + r*ldo + c] = (a_r . w_c - zw[n0+c]) * scale[n0+c] + bias[n0+c]``."""
    z = vzero_i32x16()
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = z
    c60 = c61 = c70 = c71 = c80 = c81 = c90 = c91 = ca0 = ca1 = cb0 = cb1 = z
    wq = wo
    x = ao
    for _ in range(kq):
        b0 = vload_bytes64(w, wq)
        b1 = vload_bytes64(w, wq + panel)
        v = vbroadcast_bytes4(a, x)
        c00 = vdpbusd(c00, v, b0)
        c01 = vdpbusd(c01, v, b1)
        v = vbroadcast_bytes4(a, x + rs)
        c10 = vdpbusd(c10, v, b0)
        c11 = vdpbusd(c11, v, b1)
        v = vbroadcast_bytes4(a, x + 2 * rs)
        c20 = vdpbusd(c20, v, b0)
        c21 = vdpbusd(c21, v, b1)
        v = vbroadcast_bytes4(a, x + 3 * rs)
        c30 = vdpbusd(c30, v, b0)
        c31 = vdpbusd(c31, v, b1)
        v = vbroadcast_bytes4(a, x + 4 * rs)
        c40 = vdpbusd(c40, v, b0)
        c41 = vdpbusd(c41, v, b1)
        v = vbroadcast_bytes4(a, x + 5 * rs)
        c50 = vdpbusd(c50, v, b0)
        c51 = vdpbusd(c51, v, b1)
        v = vbroadcast_bytes4(a, x + 6 * rs)
        c60 = vdpbusd(c60, v, b0)
        c61 = vdpbusd(c61, v, b1)
        v = vbroadcast_bytes4(a, x + 7 * rs)
        c70 = vdpbusd(c70, v, b0)
        c71 = vdpbusd(c71, v, b1)
        v = vbroadcast_bytes4(a, x + 8 * rs)
        c80 = vdpbusd(c80, v, b0)
        c81 = vdpbusd(c81, v, b1)
        v = vbroadcast_bytes4(a, x + 9 * rs)
        c90 = vdpbusd(c90, v, b0)
        c91 = vdpbusd(c91, v, b1)
        v = vbroadcast_bytes4(a, x + 10 * rs)
        ca0 = vdpbusd(ca0, v, b0)
        ca1 = vdpbusd(ca1, v, b1)
        v = vbroadcast_bytes4(a, x + 11 * rs)
        cb0 = vdpbusd(cb0, v, b0)
        cb1 = vdpbusd(cb1, v, b1)
        wq += 64
        x += qs
    z0, z1 = vload_i32x16(zw, n0), vload_i32x16(zw, n0 + 16)
    s0, s1 = vload16(scale, n0), vload16(scale, n0 + 16)
    d0, d1 = vload16(bias, n0), vload16(bias, n0 + 16)
    tail = cols - 16
    _store_row(c00, z0, s0, d0, out, oo, 16)
    _store_row(c01, z1, s1, d1, out, oo + 16, tail)
    if rows > 1:
        _store_row(c10, z0, s0, d0, out, oo + ldo, 16)
        _store_row(c11, z1, s1, d1, out, oo + ldo + 16, tail)
    if rows > 2:
        _store_row(c20, z0, s0, d0, out, oo + 2 * ldo, 16)
        _store_row(c21, z1, s1, d1, out, oo + 2 * ldo + 16, tail)
    if rows > 3:
        _store_row(c30, z0, s0, d0, out, oo + 3 * ldo, 16)
        _store_row(c31, z1, s1, d1, out, oo + 3 * ldo + 16, tail)
    if rows > 4:
        _store_row(c40, z0, s0, d0, out, oo + 4 * ldo, 16)
        _store_row(c41, z1, s1, d1, out, oo + 4 * ldo + 16, tail)
    if rows > 5:
        _store_row(c50, z0, s0, d0, out, oo + 5 * ldo, 16)
        _store_row(c51, z1, s1, d1, out, oo + 5 * ldo + 16, tail)
    if rows > 6:
        _store_row(c60, z0, s0, d0, out, oo + 6 * ldo, 16)
        _store_row(c61, z1, s1, d1, out, oo + 6 * ldo + 16, tail)
    if rows > 7:
        _store_row(c70, z0, s0, d0, out, oo + 7 * ldo, 16)
        _store_row(c71, z1, s1, d1, out, oo + 7 * ldo + 16, tail)
    if rows > 8:
        _store_row(c80, z0, s0, d0, out, oo + 8 * ldo, 16)
        _store_row(c81, z1, s1, d1, out, oo + 8 * ldo + 16, tail)
    if rows > 9:
        _store_row(c90, z0, s0, d0, out, oo + 9 * ldo, 16)
        _store_row(c91, z1, s1, d1, out, oo + 9 * ldo + 16, tail)
    if rows > 10:
        _store_row(ca0, z0, s0, d0, out, oo + 10 * ldo, 16)
        _store_row(ca1, z1, s1, d1, out, oo + 10 * ldo + 16, tail)
    if rows > 11:
        _store_row(cb0, z0, s0, d0, out, oo + 11 * ldo, 16)
        _store_row(cb1, z1, s1, d1, out, oo + 11 * ldo + 16, tail)


@called_tile
def tile_12x16(a, ao, rs, qs, w, wo, kq, out, oo, ldo, rows, cols, zw, scale, bias, n0):
    """:func:`tile_12x32` for the last, odd panel: ``cols`` (1 .. 16) columns of one panel."""
    z = vzero_i32x16()
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = ca = cb = z
    wq = wo
    x = ao
    for _ in range(kq):
        b = vload_bytes64(w, wq)
        c0 = vdpbusd(c0, vbroadcast_bytes4(a, x), b)
        c1 = vdpbusd(c1, vbroadcast_bytes4(a, x + rs), b)
        c2 = vdpbusd(c2, vbroadcast_bytes4(a, x + 2 * rs), b)
        c3 = vdpbusd(c3, vbroadcast_bytes4(a, x + 3 * rs), b)
        c4 = vdpbusd(c4, vbroadcast_bytes4(a, x + 4 * rs), b)
        c5 = vdpbusd(c5, vbroadcast_bytes4(a, x + 5 * rs), b)
        c6 = vdpbusd(c6, vbroadcast_bytes4(a, x + 6 * rs), b)
        c7 = vdpbusd(c7, vbroadcast_bytes4(a, x + 7 * rs), b)
        c8 = vdpbusd(c8, vbroadcast_bytes4(a, x + 8 * rs), b)
        c9 = vdpbusd(c9, vbroadcast_bytes4(a, x + 9 * rs), b)
        ca = vdpbusd(ca, vbroadcast_bytes4(a, x + 10 * rs), b)
        cb = vdpbusd(cb, vbroadcast_bytes4(a, x + 11 * rs), b)
        wq += 64
        x += qs
    z0, s0, d0 = vload_i32x16(zw, n0), vload16(scale, n0), vload16(bias, n0)
    _store_row(c0, z0, s0, d0, out, oo, cols)
    if rows > 1:
        _store_row(c1, z0, s0, d0, out, oo + ldo, cols)
    if rows > 2:
        _store_row(c2, z0, s0, d0, out, oo + 2 * ldo, cols)
    if rows > 3:
        _store_row(c3, z0, s0, d0, out, oo + 3 * ldo, cols)
    if rows > 4:
        _store_row(c4, z0, s0, d0, out, oo + 4 * ldo, cols)
    if rows > 5:
        _store_row(c5, z0, s0, d0, out, oo + 5 * ldo, cols)
    if rows > 6:
        _store_row(c6, z0, s0, d0, out, oo + 6 * ldo, cols)
    if rows > 7:
        _store_row(c7, z0, s0, d0, out, oo + 7 * ldo, cols)
    if rows > 8:
        _store_row(c8, z0, s0, d0, out, oo + 8 * ldo, cols)
    if rows > 9:
        _store_row(c9, z0, s0, d0, out, oo + 9 * ldo, cols)
    if rows > 10:
        _store_row(ca, z0, s0, d0, out, oo + 10 * ldo, cols)
    if rows > 11:
        _store_row(cb, z0, s0, d0, out, oo + 11 * ldo, cols)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def vnni_gemm(a, m, rs, qs, w, kq, n, zw, scale, bias, out, ldo):
    """``out[r*ldo + c] = (a_r . w[:, c] - zw[c]) * scale[c] + bias[c]`` for r < ``m``, c < ``n``.

    ``a``: flat uint8, row r's four bytes of K step q at ``r*rs + q*qs`` (rows of length
    4 * ``kq``: ``rs`` = 4 * kq, ``qs`` = 4; the conv quads ``[Kq, R, 4]``: ``rs`` = 4, ``qs`` = 4R),
    readable up to the next multiple of 12 rows; ``w``: :func:`pack_vnni_weight`'s panels; ``zw``,
    ``scale``, ``bias``: padded to a multiple of 32. The tasks are the (12-row block, 32-column
    pair of panels) tiles, rows outermost: each thread's run of tasks reuses its row blocks across
    all panels."""
    panels = (n + PANEL - 1) // PANEL
    pairs = (panels + 1) // 2
    blocks = (m + MR - 1) // MR
    panel = kq * 64
    for t in prange(blocks * pairs):
        r0 = (t // pairs) * MR
        c0 = (t % pairs) * 2 * PANEL
        rows = min(MR, m - r0)
        cols = min(2 * PANEL, n - c0)
        if cols > PANEL:
            tile_12x32(a, r0 * rs, rs, qs, w, c0 * kq * 4, panel, kq, out, r0 * ldo + c0, ldo, rows, cols,
                       zw, scale, bias, c0)  # fmt: skip
        else:
            tile_12x16(a, r0 * rs, rs, qs, w, c0 * kq * 4, kq, out, r0 * ldo + c0, ldo, rows, cols,
                       zw, scale, bias, c0)  # fmt: skip


def _padded(v: np.ndarray, length: int, dtype: Any) -> np.ndarray:
    out = np.zeros(length, dtype)
    out[: v.size] = v
    return out


def vnni_prepare(prepared: Prepared, pack: Callable[[np.ndarray], np.ndarray] = pack_vnni_weight) -> Prepared:
    """``pack_int8_weight``'s result with the weight [N, K] repacked by ``pack`` (the GEMM's
    column panels by default; ``vnni_n``, ``vnni_k``: its N and K)."""
    w = prepared.tensors["weight"]
    prepared.params["vnni_n"], prepared.params["vnni_k"] = int(w.shape[0]), int(w.shape[1])
    prepared.tensors["weight"] = pack(w)
    return prepared


def vnni_operands(
    prepared: Prepared,
) -> tuple[np.ndarray, int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(packed weight, kq, n, zero-point column term, scale, bias, zeros) with the vectors padded
    to a multiple of 32 columns, built once per engine. The zero point is the uint8 one (an int8
    input's plus 128); ``bias`` is zeros when the layer has none."""
    cached = prepared.scratch.get("vnni_operands")
    if cached is None:
        n, k = prepared.params["vnni_n"], prepared.params["vnni_k"]
        w, wsum, col_scale, bias, has_bias = int8_operands(prepared)
        length = -(-n // 32) * 32
        zp = uint8_quant(prepared)[1]
        cached = (
            w,
            -(-k // 4),
            n,
            _padded((zp * wsum.astype(np.int64)).astype(np.int32), length, np.int32),
            _padded(col_scale, length, np.float32),
            _padded(bias if has_bias else np.zeros(n, np.float32), length, np.float32),
            np.zeros(length, np.float32),
        )
        prepared.scratch["vnni_operands"] = cached
    return cached


def uint8_quant(prepared: Prepared) -> tuple[np.float32, int, np.float32, np.float32]:
    """(1/scale, zero point, qmin, qmax) of the layer's input quantized as uint8 codes."""
    zp = int(prepared.params["input_zero_point"])
    info = np.iinfo(np.dtype(prepared.params["input_dtype"]))
    shift = -int(info.min)  # 128 for int8, 0 for uint8
    return (
        np.float32(1.0 / prepared.params["input_scale"]),
        zp + shift,
        np.float32(info.min + shift),
        np.float32(info.max + shift),
    )


def quantized_rows(prepared: Prepared, rows: int, key: str) -> np.ndarray:
    """A per-node uint8 scratch matrix [rows rounded up to 12, K rounded up to 4]. What the
    padding holds never reaches a stored result (the weight's padded K is zeros, padded rows are
    not stored)."""
    return workspace(prepared, key, (-(-rows // MR) * MR, 4 * -(-prepared.params["vnni_k"] // 4)), np.uint8)


def multiply(
    a_q: np.ndarray, rows: int, prepared: Prepared, out: np.ndarray, with_bias: bool, quads: bool = False
) -> None:
    """``out`` [rows, N] (C-contiguous) = the dequantized product of the quantized rows and
    the layer's weight, with its bias added when ``with_bias``. ``a_q``: uint8 rows [>= rows, 4Kq],
    or with ``quads`` the conv gather's ``[Kq, R, 4]`` (row r's bytes of step q at ``[q, r]``)."""
    w, kq, n, zw, scale, bias, zeros = vnni_operands(prepared)
    rs, qs = (4, 4 * a_q.shape[1]) if quads else (4 * kq, 4)
    with threads_for(rows * n * kq):
        vnni_gemm(a_q.reshape(-1), rows, rs, qs, w, kq, n, zw, scale, bias if with_bias else zeros,
                  out.reshape(-1), n)  # fmt: skip


class VnniTactic:
    """Mixin for a tactic compiled with ``vpdpbusd``: offered, and loadable from an engine file,
    only where the CPU has AVX-512 VNNI. ``class X(VnniTactic, Int8Gemm)``."""

    host_ok = OFFERED

    def supports(self, node: Node, graph: Graph) -> bool:
        """The parent tactic's rule, on a CPU with VNNI."""
        return OFFERED and super().supports(node, graph)  # type: ignore[misc]


@register_tactic
class Int8VnniGemm(VnniTactic, Int8Gemm):
    """int8 GEMM on VNNI register tiles, dequantizing epilogue in the tile."""

    name = "cpu.int8.gemm_vnni"
    priority = -10

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return vnni_prepare(super().prepare(node, graph))

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        x = inputs[0]
        assert x is not None
        out = outputs[0]
        a = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        m, n = a.shape[0], prepared.params["vnni_n"]
        a_q = quantized_rows(prepared, m, "a_q")
        inv_scale, zp, qmin, qmax = uint8_quant(prepared)
        with threads_for(a.size):
            quantize_rows(a, a_q, inv_scale, np.float32(zp), qmin, qmax)
        rows = out.reshape(-1, n) if out.flags.c_contiguous else np.empty((m, n), np.float32)
        multiply(a_q, m, prepared, rows, with_bias=True)
        act, alpha, beta, mode = memo(prepared, "epilogue", lambda: epilogue_params(node))
        if act or mode != RES_NONE:
            residual = residual_rows(inputs[3] if len(inputs) > 3 else None, out.shape, m)
            with threads_for(rows.size):
                epilogue_vector_rows(rows, NO_VECTOR, False, residual, mode, act, alpha, beta)
        if not out.flags.c_contiguous:
            out[...] = rows.reshape(out.shape)
