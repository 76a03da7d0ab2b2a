"""Fused epilogues shared by the CPU tactics: bias + activation + residual in one pass.

The activation table is ``farm.compiler.ir.fused``'s; each activation has an integer code (its
index in ``ACTIVATIONS``) so one compiled kernel serves every activation. The branch on the code
sits outside the element loop (:func:`activate_row`), so each loop stays a tight, vectorizable
loop. An epilogue works row by row: a row (one output channel plane of a conv, one output row of
a GEMM) is still in L1 when bias, residual and activation are applied, so the output is read
from memory once.

Pool: numba's (``prange`` over rows).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from farm.compiler.ir import ACTIVATIONS, Node
from farm.compiler.kernels.cpu import _threads  # noqa: F401  (thread policy before numba runs)
from farm.compiler.kernels.cpu import _vecmath as _vm
from farm.compiler.kernels.cpu._simd16 import (
    LANES,
    vadd16,
    vdiv16,
    vexp16,
    vfma16,
    vload16,
    vload16_masked,
    vmax16,
    vmin16,
    vmul16,
    vsplat16,
    vstore16,
    vstore16_masked,
    vsub16,
)

ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_CLIP, ACT_SIGMOID, ACT_TANH = 0, 1, 2, 3, 4, 5
ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_SILU, ACT_GELU, ACT_GELU_TANH = 6, 7, 8, 9, 10
assert ACTIVATIONS[ACT_GELU_TANH] == "GeluTanh" and ACTIVATIONS[ACT_HARDSWISH] == "HardSwish"
# activate_row, activate16 and _transcendental16 branch on every code above: an activation added to
# ir.fused.ACTIVATIONS needs its own branch there (the transcendental branch would take it for SiLU)
assert len(ACTIVATIONS) == ACT_GELU_TANH + 1, "a new activation needs its branches in _epilogue.py"

RES_NONE, RES_PRE, RES_POST = 0, 1, 2


# Dummy arrays for absent optional operands: one fixed type per argument keeps one specialization.
NO_VECTOR = np.zeros(1, np.float32)
NO_MATRIX = np.zeros((1, 1), np.float32)

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT2_PI = math.sqrt(2.0 / math.pi)


def activation_code(name: str) -> int:
    """The integer code of an epilogue activation name (``""`` is the identity)."""
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS[1:])}") from None


def epilogue_params(node: Node) -> tuple[int, float, float, int]:
    """(activation code, alpha, beta, residual mode) of a FusedConv/FusedGemm node.

    ``alpha``/``beta`` default to 0 as in the reference interpreter (the passes always set them).
    A node with a residual input but no ``residual`` attribute uses ``pre`` (``act(z + R)``), as
    the reference does.
    """
    act = activation_code(node.attr("activation", "") or "")
    alpha = float(node.attr("alpha", 0.0))
    beta = float(node.attr("beta", 0.0))
    mode = RES_NONE
    if node.input(3):
        mode = RES_PRE if node.attr("residual", "pre") == "pre" else RES_POST
    return act, alpha, beta, mode


_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_HALF = np.float32(0.5)
_SIXTH = np.float32(1.0 / 6.0)
_SQRT1_2_F = np.float32(_SQRT1_2)
_GELU_TANH_C = np.float32(-2.0 * _SQRT2_PI)
_GELU_TANH_K = np.float32(0.044715)


@njit(error_model="numpy", cache=True, nogil=True)
def activate_row(row, act, alpha, beta):
    """Apply activation ``act`` in place to the 1-D float32 array ``row``.

    All arithmetic stays in float32 (a float64 literal would halve the vector width). Every
    activation but LeakyRelu runs on 16-lane vectors through :func:`activate16` (the transcendental
    ones through ``_vecmath``'s rows allocated three temporaries a call and took 1.2 ns an element
    against 0.3). The clamps are ``vmax16``/``vmin16``, not a scalar ``row[i] = max(row[i], 0)``:
    without AVX-512 LLVM turns a store of a select between a value and the one loaded from the
    same place into a masked store (``vmaskmovps``, microcoded on AMD; 4x the time of the plain
    loop over a ReLU'd row). LeakyRelu multiplies by a select of two constants for the same reason.
    """
    n = row.shape[0]
    if act == ACT_NONE:
        return
    if act == ACT_LEAKY:
        a = np.float32(alpha)
        for i in range(n):
            v = row[i]
            row[i] = v * (_F1 if v >= _F0 else a)
        return
    activate_into(row, row, act, alpha, beta)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def activate_into(src, dst, act, alpha, beta):
    """``dst = act(src)`` over 1-D float32 arrays of one length (``src`` may be ``dst``), for the
    activations of :func:`activate_row` but LeakyRelu: whole 16-lane vectors with plain loads
    and stores, the ragged tail masked (a masked store on every step, even one of all lanes,
    kept a large ReLU at 1.3x ONNX Runtime's time)."""
    n = src.shape[0]
    ep = vector_epilogue(RES_NONE, act, alpha, beta)
    whole = n - n % LANES
    for q in range(0, whole, LANES):
        vstore16(dst, q, activate16(vload16(src, q), ep))
    if whole < n:
        vstore16_masked(dst, whole, activate16(vload16_masked(src, whole, n - whole), ep), n - whole)


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def activate_value(v, act, alpha, beta):
    """One float32 value through a piecewise-linear activation (``alpha``/``beta`` float32), for
    epilogues fused into a kernel's store loop; the transcendental ones are not handled (identity):
    those kernels take the vector path (:data:`VECTOR_ACTS`) for them."""
    if act == ACT_RELU:
        return max(v, np.float32(0.0))
    if act == ACT_LEAKY:
        return v if v >= np.float32(0.0) else alpha * v
    if act == ACT_CLIP:
        return min(max(v, alpha), beta)
    if act == ACT_HARDSIGMOID:
        return max(np.float32(0.0), min(np.float32(1.0), alpha * v + beta))
    if act == ACT_HARDSWISH:
        return v * max(np.float32(0.0), min(np.float32(1.0), v * np.float32(1.0 / 6.0) + np.float32(0.5)))
    return v


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def finish_value(v, bias, res, res_mode, act, alpha, beta):
    """One output value's epilogue (the scalar form of :func:`finish_row`): ``bias`` added, the
    residual ``res`` before or after a piecewise-linear activation; for the store loops of
    kernels with narrow tiles (``alpha``/``beta`` float32)."""
    v += bias
    if res_mode == RES_PRE:
        v += res
    v = activate_value(v, act, alpha, beta)
    if res_mode == RES_POST:
        v += res
    return v


@njit(error_model="numpy", cache=True, nogil=True)
def finish_row(row, bias_scalar, bias_row, bias_mode, res_row, res_mode, act, alpha, beta):
    """Bias, residual and activation on one output row, in place.

    ``bias_mode``: 0 none, 1 the scalar ``bias_scalar`` (a conv channel), 2 the vector ``bias_row``
    (a GEMM's bias over the last axis).
    """
    n = row.shape[0]
    if bias_mode == 1:
        for i in range(n):
            row[i] += bias_scalar
    elif bias_mode == 2:
        for i in range(n):
            row[i] += bias_row[i]
    if res_mode == RES_PRE:
        for i in range(n):
            row[i] += res_row[i]
    activate_row(row, act, alpha, beta)
    if res_mode == RES_POST:
        for i in range(n):
            row[i] += res_row[i]


# the activations computed through ``exp``/``erf`` (:func:`_transcendental16`)
TRANSCENDENTAL_ACTS = (ACT_SIGMOID, ACT_TANH, ACT_SILU, ACT_GELU, ACT_GELU_TANH)
# the activations ``finish16`` applies to float32x16 vectors before their store; the rest (LeakyRelu)
# run per plane afterwards or through ``finish_value``
VECTOR_ACTS = (ACT_NONE, ACT_RELU, ACT_CLIP, ACT_HARDSIGMOID, ACT_HARDSWISH, *TRANSCENDENTAL_ACTS)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def finish16(v, oplane, at, count, res, ep):
    """The epilogue ``ep`` = (residual mode, activation, lo, hi, slope, offset) on ``v`` with the
    residual row ``res``, its first ``count`` lanes stored at oplane[at:] (an array inside the
    tuple would make numba pass the tuple through memory: 2x slower). The activation is one of
    :data:`VECTOR_ACTS`: a clamp to [lo, hi] for the first three, ``slope``/``offset`` HardSigmoid's
    alpha and beta; the residual res[at:] is added before or after it."""
    res_mode = ep[0]
    if res_mode == RES_PRE:
        v = vadd16(v, vload16_masked(res, at, count))
    v = activate16(v, ep)
    if res_mode == RES_POST:
        v = vadd16(v, vload16_masked(res, at, count))
    vstore16_masked(oplane, at, v, count)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def activate16(v, ep):
    """The activation of the epilogue ``ep`` (:func:`vector_epilogue`) on ``v``, lane by lane."""
    act, lov, hiv, slope, offset = ep[1], ep[2], ep[3], ep[4], ep[5]
    if act in TRANSCENDENTAL_ACTS:
        return _transcendental16(v, act)
    if act == ACT_HARDSWISH:
        gate = vfma16(v, vsplat16(_SIXTH), vsplat16(_HALF))
        return vmul16(v, vmax16(vmin16(gate, vsplat16(_F1)), vsplat16(_F0)))
    if act == ACT_HARDSIGMOID:
        return vmax16(vmin16(vfma16(v, slope, offset), vsplat16(_F1)), vsplat16(_F0))
    return vmin16(vmax16(v, lov), hiv)


@njit(error_model="numpy", cache=True, nogil=True, inline="always", fastmath={"contract"})
def _transcendental16(v, act):
    """Sigmoid, tanh, SiLU, GELU (erf) or tanh-GELU of ``v`` lane by lane: ``x / (1 + exp(c u))``
    through ``vexp16`` (sigmoid ``1 / (1 + exp(-x))``, tanh ``2 sigmoid(2x) - 1``, tanh-GELU ``x
    sigmoid(2u)``), erf by ``_vecmath``'s rational approximation. The one definition of these
    activations for every epilogue: :func:`activate16` in the tiles' stores, :func:`activate_row`
    over finished rows."""
    one = vsplat16(_F1)
    if act == ACT_GELU:
        x = vmul16(v, vsplat16(_SQRT1_2_F))
        x = vmax16(vmin16(x, vsplat16(_vm._ERF_CLAMP)), vsplat16(-_vm._ERF_CLAMP))
        x2 = vmul16(x, x)
        p = vfma16(x2, vsplat16(_vm._ERF_A13), vsplat16(_vm._ERF_A11))
        p = vfma16(x2, p, vsplat16(_vm._ERF_A9))
        p = vfma16(x2, p, vsplat16(_vm._ERF_A7))
        p = vfma16(x2, p, vsplat16(_vm._ERF_A5))
        p = vfma16(x2, p, vsplat16(_vm._ERF_A3))
        p = vfma16(x2, p, vsplat16(_vm._ERF_A1))
        q = vfma16(x2, vsplat16(_vm._ERF_B8), vsplat16(_vm._ERF_B6))
        q = vfma16(x2, q, vsplat16(_vm._ERF_B4))
        q = vfma16(x2, q, vsplat16(_vm._ERF_B2))
        q = vfma16(x2, q, vsplat16(_vm._ERF_B0))
        erf = vdiv16(vmul16(x, p), q)
        return vmul16(vmul16(vsplat16(_HALF), v), vadd16(one, erf))
    if act == ACT_TANH:  # tanh(x) = 2 sigmoid(2x) - 1
        e = vexp16(vmul16(v, vsplat16(-_F2)), _vm._EXP_LO)
        return vsub16(vdiv16(vsplat16(_F2), vadd16(one, e)), one)
    if act == ACT_GELU_TANH:  # 0.5 x (1 + tanh(u)) = x sigmoid(2u)
        u = vmul16(vfma16(vmul16(vmul16(v, v), v), vsplat16(_GELU_TANH_K), v), vsplat16(_GELU_TANH_C))
        return vdiv16(v, vadd16(one, vexp16(u, _vm._EXP_LO)))
    e = vexp16(vsub16(vsplat16(_F0), v), _vm._EXP_LO)  # sigmoid and SiLU: exp(-x)
    if act == ACT_SIGMOID:
        return vdiv16(one, vadd16(one, e))
    return vdiv16(v, vadd16(one, e))


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def vector_epilogue(res_mode, act, alpha, beta):
    """The ``ep`` tuple of ``_finish``: the activation and residual mode when the activation is
    one of :data:`VECTOR_ACTS`, else none (the caller then runs ``finish_row`` over the finished
    output). Not returned with a flag: numba's parfor analysis rejects the unpacking."""
    vector = act in VECTOR_ACTS
    lo = (
        np.float32(alpha)
        if act == ACT_CLIP
        else (np.float32(0.0) if act == ACT_RELU else -np.float32(np.inf))
    )
    hi = np.float32(beta) if act == ACT_CLIP else np.float32(np.inf)
    ep = (
        res_mode if vector else RES_NONE,
        act if vector else ACT_NONE,
        vsplat16(lo),
        vsplat16(hi),
        vsplat16(np.float32(alpha)),
        vsplat16(np.float32(beta)),
    )
    return ep


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def epilogue_channel_rows(out, bias, channels, has_bias, residual, res_mode, act, alpha, beta):
    """Epilogue over ``out`` [rows, L] whose row r is channel ``r % channels`` (NCHW conv output)."""
    rows = out.shape[0]
    for r in prange(rows):
        b = bias[r % channels] if has_bias else np.float32(0.0)
        res = residual[r] if res_mode != RES_NONE else residual[0]
        finish_row(out[r], b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def epilogue_vector_rows(out, bias, has_bias, residual, res_mode, act, alpha, beta):
    """Epilogue over ``out`` [rows, N] with ``bias`` [N] added to every row (GEMM output)."""
    rows = out.shape[0]
    for r in prange(rows):
        res = residual[r] if res_mode != RES_NONE else residual[0]
        finish_row(out[r], np.float32(0.0), bias, 2 if has_bias else 0, res, res_mode, act, alpha, beta)


@njit(error_model="numpy", parallel=True, cache=True, nogil=True)
def epilogue_transpose(tmp, out, bias, has_bias, residual, res_mode, act, alpha, beta):
    """``out[n, m, :] = epilogue(tmp[m, n*P:(n+1)*P])``: the batched conv GEMM's [M, N*P] result
    scattered into NCHW ``out`` viewed as [N*M, P], with the epilogue applied on the way."""
    rows, p = out.shape
    m_count = tmp.shape[0]
    for r in prange(rows):
        n = r // m_count
        m = r % m_count
        row = out[r]
        src = tmp[m, n * p : (n + 1) * p]
        for i in range(p):
            row[i] = src[i]
        b = bias[m] if has_bias else np.float32(0.0)
        res = residual[r] if res_mode != RES_NONE else residual[0]
        finish_row(row, b, bias, 1 if has_bias else 0, res, res_mode, act, alpha, beta)


def residual_rows(residual: np.ndarray | None, out_shape: tuple[int, ...], rows: int) -> np.ndarray:
    """The residual input as a C-contiguous float32 [rows, L] matrix matching the output
    (broadcast when its shape differs), or the dummy when absent."""
    if residual is None:
        return NO_MATRIX
    if residual.shape != tuple(out_shape):
        residual = np.broadcast_to(residual, out_shape)
    return np.ascontiguousarray(residual, dtype=np.float32).reshape(rows, -1)


def vector_or_dummy(v: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """A C-contiguous float32 1-D vector and whether it is present."""
    if v is None:
        return NO_VECTOR, False
    return np.ascontiguousarray(v, dtype=np.float32).reshape(-1), True
