"""Direct 1x1 (pointwise) convolutions: register-blocked numba kernels with the epilogue fused.

``out[n, co, p] = sum_ci W[co, ci] * x[n, ci, p]`` over NCHW tensors is a GEMM whose inner
dimension (the input channels, 16-960 in MobileNets) is small: BLAS spends much of its time packing,
and the bias/activation/residual pass that follows re-reads the whole output. These tactics do
it in one pass:

* ``cpu.conv.pointwise_direct``: the weight is packed once into groups of :data:`ROWS` output
  channels, ``[ceil(M/6), C, 6]`` (zeros past M), with the bias as ``[ceil(M/6), 6]``. The
  micro-kernel holds a tile of 6 output channels x 16 pixels in twelve AVX registers (eight-lane
  float32 vectors, see ``float32x8`` below) and runs the input channels through it: per channel two
  loads of ``x``, six weight broadcasts and twelve FMAs. Each task first packs its block of pixels
  into 16-pixel panels (``pack_pixels``: a tile then reads one sequential run, not one cache line
  per channel), then sweeps the panels once per group of 6 output channels. The tile starts from
  the bias and is stored once; the activation and residual are then applied to the group's rows
  over the pixel block while they are still in L1 (``_epilogue.finish_row``). A last tile of 8
  pixels uses an 8-pixel kernel, other partial tiles go through a scratch tile; output channels
  past the last multiple of 6 are computed on zero weights and not stored. The pixels of the
  whole batch form one range (a 7x7 map at batch 8 is 392 pixels, 25 tiles, not 8 x 4 tiles with
  a 1-pixel tail each), split into (pixel block, channel chunk) tasks over numba's pool; a late
  layer with few pixels splits its output channels instead. Strides > 1 subsample the input
  first (a 1x1 conv reads no other pixel).
* 1x1 maps (the squeeze-excite FCs, ``H*W == 1``): a GEMV across the batch with the weight
  packed transposed, ``[C, M]`` (``_rowgemm.add_row_products``), then the epilogue per image.
* ``cpu.conv.pointwise_direct_1t``: the same on the calling thread only (small layers, busy hosts).

Pool: numba's only (no BLAS call), so nothing alternates between the two pools.

The eight-lane vector type is a small numba extension (``float32x8`` with ``vload``/``vstore``/
``vbroadcast``/``vfma`` intrinsics emitting LLVM vector IR): numba runs LLVM without its SLP
vectorizer and cannot keep an accumulator array in registers, so a plain-loop micro-kernel
reloads and stores its partial sums every step and reaches a third of the FMA rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    epilogue_params,
    finish_row,
    residual_rows,
)
from farm.compiler.kernels.cpu._operands import RunsBound, dense, memo, nothing
from farm.compiler.kernels.cpu._rowgemm import add_row_products
from farm.compiler.kernels.cpu._threads import (
    PARALLEL_MIN_ELEMENTS,
    bound_call,
    numba_thread_count,
)
from farm.compiler.kernels.cpu.conv import CONV_OPS, ConvGeometry, _conv_node_ok
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

ROWS = 6  # output channels per micro-tile
PIXELS = 16  # pixels per micro-tile (two vectors)
LANES = 8

# ---------------------------------------------------------------------------------------------
# float32x8: an eight-lane float32 vector value (one AVX register) for numba code.

_F32 = ir.FloatType()
_V8 = ir.VectorType(_F32, LANES)


class Float32x8(types.Type):
    """numba type of an LLVM ``<8 x float>`` value."""

    def __init__(self) -> None:
        super().__init__(name="float32x8")


float32x8 = Float32x8()


@register_model(Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any) -> None:
        super().__init__(dmm, fe_type, _V8)


def _is_f32_array(a: Any) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"


def _vector_pointer(context: Any, builder: Any, arrty: Any, arr: Any, index: Any, indexty: Any) -> Any:
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, index, indexty, types.intp)
    return builder.bitcast(builder.gep(ary.data, [idx]), _V8.as_pointer())


def _vload(typingctx: Any, arr: Any, index: Any) -> Any:
    """The 8 float32 of C-contiguous ``arr`` from flat element ``index`` on (not bounds-checked)."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.load(
            _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=4
        )

    return float32x8(arr, index), codegen


vload: Any = intrinsic(_vload)


def _vstore(typingctx: Any, arr: Any, index: Any, value: Any) -> Any:
    """Store ``value`` into ``arr``'s flat elements ``index .. index+7`` (not bounds-checked)."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer) or value != float32x8:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        builder.store(
            args[2], _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=4
        )
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


vstore: Any = intrinsic(_vstore)


def _vbroadcast(typingctx: Any, arr: Any, index: Any) -> Any:
    """A vector of 8 copies of ``arr``'s flat element ``index`` (not bounds-checked, no
    negative-index wraparound: a plain ``w[k]`` costs five scalar instructions per broadcast)."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        v = builder.load(builder.gep(ary.data, [idx]), align=4)
        first = builder.insert_element(ir.Constant(_V8, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(first, ir.Constant(_V8, ir.Undefined), zeros)

    return float32x8(arr, index), codegen


vbroadcast: Any = intrinsic(_vbroadcast)


def _vfma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` lane by lane (``llvm.fmuladd``: one vfmadd where the CPU has FMA3, a multiply
    and an add where it does not, never a libm call)."""
    if not (a == float32x8 and b == float32x8 and c == float32x8):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        fnty = ir.FunctionType(_V8, [_V8, _V8, _V8])
        return builder.call(
            cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v8f32"), list(args)
        )

    return float32x8(a, b, c), codegen


vfma: Any = intrinsic(_vfma)


# ---------------------------------------------------------------------------------------------
# Micro-kernels. ``x`` is flat with pixel p of input channel ci at ``xo + ci*xs + p``; ``w`` is
# flat with the 6 weights of input channel ci at ``wo + 6*ci``; ``b`` the 6 biases from ``bo``;
# output row r (r < rows) is stored at ``oo + r*os``.


@njit(cache=True, nogil=True, error_model="numpy")
def tile_6x16(x, xo, xs, w, wo, cin, b, bo, out, oo, os, rows):
    """A 6-channel x 16-pixel output tile: 12 accumulators in registers across all input channels."""
    a00 = vbroadcast(b, bo)
    a10 = vbroadcast(b, bo + 1)
    a20 = vbroadcast(b, bo + 2)
    a30 = vbroadcast(b, bo + 3)
    a40 = vbroadcast(b, bo + 4)
    a50 = vbroadcast(b, bo + 5)
    a01, a11, a21, a31, a41, a51 = a00, a10, a20, a30, a40, a50
    for ci in range(cin):
        xa = xo + ci * xs
        x0 = vload(x, xa)
        x1 = vload(x, xa + LANES)
        k = wo + ci * ROWS
        v = vbroadcast(w, k)
        a00 = vfma(v, x0, a00)
        a01 = vfma(v, x1, a01)
        v = vbroadcast(w, k + 1)
        a10 = vfma(v, x0, a10)
        a11 = vfma(v, x1, a11)
        v = vbroadcast(w, k + 2)
        a20 = vfma(v, x0, a20)
        a21 = vfma(v, x1, a21)
        v = vbroadcast(w, k + 3)
        a30 = vfma(v, x0, a30)
        a31 = vfma(v, x1, a31)
        v = vbroadcast(w, k + 4)
        a40 = vfma(v, x0, a40)
        a41 = vfma(v, x1, a41)
        v = vbroadcast(w, k + 5)
        a50 = vfma(v, x0, a50)
        a51 = vfma(v, x1, a51)
    vstore(out, oo, a00)
    vstore(out, oo + LANES, a01)
    if rows > 1:
        vstore(out, oo + os, a10)
        vstore(out, oo + os + LANES, a11)
    if rows > 2:
        vstore(out, oo + 2 * os, a20)
        vstore(out, oo + 2 * os + LANES, a21)
    if rows > 3:
        vstore(out, oo + 3 * os, a30)
        vstore(out, oo + 3 * os + LANES, a31)
    if rows > 4:
        vstore(out, oo + 4 * os, a40)
        vstore(out, oo + 4 * os + LANES, a41)
    if rows > 5:
        vstore(out, oo + 5 * os, a50)
        vstore(out, oo + 5 * os + LANES, a51)


@njit(cache=True, nogil=True, error_model="numpy")
def tile_6x8(x, xo, xs, w, wo, cin, b, bo, out, oo, os, rows):
    """A 6-channel x 8-pixel output tile (the pixels past the last multiple of 16)."""
    a0 = vbroadcast(b, bo)
    a1 = vbroadcast(b, bo + 1)
    a2 = vbroadcast(b, bo + 2)
    a3 = vbroadcast(b, bo + 3)
    a4 = vbroadcast(b, bo + 4)
    a5 = vbroadcast(b, bo + 5)
    for ci in range(cin):
        x0 = vload(x, xo + ci * xs)
        k = wo + ci * ROWS
        a0 = vfma(vbroadcast(w, k), x0, a0)
        a1 = vfma(vbroadcast(w, k + 1), x0, a1)
        a2 = vfma(vbroadcast(w, k + 2), x0, a2)
        a3 = vfma(vbroadcast(w, k + 3), x0, a3)
        a4 = vfma(vbroadcast(w, k + 4), x0, a4)
        a5 = vfma(vbroadcast(w, k + 5), x0, a5)
    vstore(out, oo, a0)
    if rows > 1:
        vstore(out, oo + os, a1)
    if rows > 2:
        vstore(out, oo + 2 * os, a2)
    if rows > 3:
        vstore(out, oo + 3 * os, a3)
    if rows > 4:
        vstore(out, oo + 4 * os, a4)
    if rows > 5:
        vstore(out, oo + 5 * os, a5)


@njit(cache=True, nogil=True, error_model="numpy")
def pack_pixels(xf, cin, npix, v0, v1, xp):
    """Pixels v0 .. v1 of the batch (pixel v is pixel v % npix of image v // npix) into panels:
    ``xp[t, ci, :]`` holds the 16 pixels from v0 + 16t of input channel ci (zeros past v1), so a
    micro-tile reads its inputs in one sequential run instead of one cache line per channel
    ``npix`` floats apart, and late layers with few pixels fill whole tiles across images."""
    nt = (v1 - v0 + PIXELS - 1) // PIXELS
    for tt in range(nt):
        v = v0 + tt * PIXELS
        valid = min(PIXELS, v1 - v)
        base = tt * cin * PIXELS
        n = v // npix
        p = v % npix
        if valid == PIXELS and p + PIXELS <= npix:
            src = n * cin * npix + p
            for ci in range(cin):
                vstore(xp, base + ci * PIXELS, vload(xf, src))
                vstore(xp, base + ci * PIXELS + LANES, vload(xf, src + LANES))
                src += npix
            continue
        for q in range(PIXELS):
            if q < valid:
                src = n * cin * npix + p
                for ci in range(cin):
                    xp[base + ci * PIXELS + q] = xf[src + ci * npix]
                p += 1
                if p == npix:
                    p = 0
                    n += 1
            else:
                for ci in range(cin):
                    xp[base + ci * PIXELS + q] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _block(xp, cin, npix, w, b, g, out, cout, v0, v1, ot):
    """Output channels 6g .. 6g+5 (those < cout) over batch pixels v0 .. v1, from the panels
    ``xp``. A tile of 16 (or a last 8) pixels of one image is stored in place; any other tile
    (partial, or across two images) goes through the scratch ``ot`` [6*16]."""
    co = g * ROWS
    rows = min(ROWS, cout - co)
    wo = g * cin * ROWS
    bo = g * ROWS
    nt = (v1 - v0 + PIXELS - 1) // PIXELS
    for tt in range(nt):
        v = v0 + tt * PIXELS
        valid = min(PIXELS, v1 - v)
        n = v // npix
        p = v % npix
        xo = tt * cin * PIXELS
        oo = (n * cout + co) * npix + p
        if valid == PIXELS and p + PIXELS <= npix:
            tile_6x16(xp, xo, PIXELS, w, wo, cin, b, bo, out, oo, npix, rows)
            continue
        if valid == LANES and p + LANES <= npix:
            tile_6x8(xp, xo, PIXELS, w, wo, cin, b, bo, out, oo, npix, rows)
            continue
        if valid > LANES:
            tile_6x16(xp, xo, PIXELS, w, wo, cin, b, bo, ot, 0, PIXELS, rows)
        else:
            tile_6x8(xp, xo, PIXELS, w, wo, cin, b, bo, ot, 0, PIXELS, rows)
        for q in range(valid):
            dst = (n * cout + co) * npix + p
            for r in range(rows):
                out[dst + r * npix] = ot[r * PIXELS + q]
            p += 1
            if p == npix:
                p = 0
                n += 1


@njit(cache=True, nogil=True, error_model="numpy")
def _finish_block(out, co, rows, v0, v1, residual, res_mode, act, alpha, beta, bias_dummy):
    """Residual and activation over output channels co .. co+rows-1 at batch pixels v0 .. v1
    (just computed, in L1), one run of pixels per image."""
    cout, npix = out.shape[1], out.shape[2]
    v = v0
    while v < v1:
        n = v // npix
        p = v % npix
        e = min(v1 - v, npix - p)
        for r in range(rows):
            row = out[n, co + r, p : p + e]
            res = residual[n * cout + co + r, p : p + e] if res_mode != RES_NONE else residual[0]
            finish_row(row, np.float32(0.0), bias_dummy, 0, res, res_mode, act, alpha, beta)
        v += e


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def pointwise_conv(x, wp, bp, out, residual, res_mode, act, alpha, beta, pblock, chunks):
    """1x1 conv of x [N, C, P] into out [N, M, P] with the packed weight ``wp`` [ceil(M/6), C, 6]
    and bias ``bp`` [ceil(M/6), 6]; ``residual`` [N*M, P] (or a dummy for ``res_mode`` 0).

    The batch's N*P pixels form one range; tasks are (block of ``pblock`` pixels, one of
    ``chunks`` runs of channel groups). A task packs its pixels into panels (or, with several
    chunks, finds them packed by a first parallel pass), then per channel group runs every
    micro-tile of the block and the group's epilogue."""
    n_img, cin, npix = x.shape
    cout = out.shape[1]
    groups = wp.shape[0]
    total = n_img * npix
    blocks = (total + pblock - 1) // pblock
    per_chunk = (groups + chunks - 1) // chunks
    xf = x.reshape(-1)
    of = out.reshape(-1)
    wf = wp.reshape(-1)
    bf = bp.reshape(-1)
    need_epilogue = act != 0 or res_mode != RES_NONE
    panel = ((pblock + PIXELS - 1) // PIXELS) * cin * PIXELS
    # Several channel chunks share a pixel block: pack each block once, in a first pass.
    shared = np.empty((blocks if chunks > 1 else 0, panel), np.float32)
    for blk in prange(shared.shape[0]):
        pack_pixels(xf, cin, npix, blk * pblock, min(total, (blk + 1) * pblock), shared[blk])
    for t in prange(blocks * chunks):
        blk = t // chunks
        chunk = t % chunks
        v0 = blk * pblock
        v1 = min(total, v0 + pblock)
        g0 = chunk * per_chunk
        g1 = min(groups, g0 + per_chunk)
        ot = np.empty(ROWS * PIXELS, np.float32)
        if chunks > 1:
            xp = shared[blk]
        else:
            xp = np.empty(panel, np.float32)
            pack_pixels(xf, cin, npix, v0, v1, xp)
        for g in range(g0, g1):
            _block(xp, cin, npix, wf, bf, g, of, cout, v0, v1, ot)
            if need_epilogue:
                co = g * ROWS
                _finish_block(out, co, min(ROWS, cout - co), v0, v1, residual, res_mode, act, alpha, beta, bf)


@njit(cache=True, nogil=True, error_model="numpy")
def pointwise_gemv(x2, wt, bias, out2, residual, res_mode, act, alpha, beta):
    """1x1 conv on 1x1 maps: out2 [N, M] = x2 [N, C] @ wt [C, M] + bias [M], then the epilogue
    per image (``residual`` [N, M] or a dummy)."""
    n_img, m = out2.shape
    for i in range(n_img):
        for j in range(m):
            out2[i, j] = bias[j]
    active = np.ones(n_img, np.bool_)
    add_row_products(out2, x2, wt, active, 0, m, 0)
    if act != 0 or res_mode != RES_NONE:
        for i in range(n_img):
            res = residual[i] if res_mode != RES_NONE else residual[0]
            finish_row(out2[i], np.float32(0.0), bias, 0, res, res_mode, act, alpha, beta)


# ---------------------------------------------------------------------------------------------


def pack_weight(w: np.ndarray) -> np.ndarray:
    """[M, C, 1, 1] (or [M, C, 1]) -> [ceil(M/6), C, 6] float32, zeros past M."""
    m = w.shape[0]
    w2 = np.asarray(w, np.float32).reshape(m, -1)
    groups = -(-m // ROWS)
    padded = np.zeros((groups * ROWS, w2.shape[1]), np.float32)
    padded[:m] = w2
    return np.ascontiguousarray(padded.reshape(groups, ROWS, -1).transpose(0, 2, 1))


def pack_bias(b: np.ndarray | None, m: int) -> np.ndarray:
    """[M] -> [ceil(M/6), 6] float32, zeros past M (and everywhere without a bias)."""
    groups = -(-m // ROWS)
    padded = np.zeros(groups * ROWS, np.float32)
    if b is not None:
        padded[:m] = np.asarray(b, np.float32).reshape(-1)
    return padded.reshape(groups, ROWS)


def _pixel_block(cin: int, npix: int) -> int:
    """Pixels per task: the packed input block (cin x pblock floats) at most ~128 KiB, so it stays
    in L2 while every channel group sweeps it; a multiple of 16 in 64 .. 1024 (measured on Zen 3,
    one thread: 16->96 at 112x112 67 GFLOP/s at 1024 pixels, 48 at 64; 576->96 at 14x14 77 at 64)."""
    block = min(1024, max(64, (32768 // max(cin, 1)) // PIXELS * PIXELS))
    return min(block, -(-npix // PIXELS) * PIXELS)


def _plan(n: int, cin: int, npix: int, groups: int, threads: int) -> tuple[int, int]:
    """(pixel block, channel chunks): the output channels are split only when the batch has
    fewer pixel blocks than threads (a chunked layer packs its pixels in an extra parallel pass;
    measured at 2 threads: 960->160 at 7x7, one block, 0.33 ms unsplit, 0.24 ms in 3-8 chunks;
    576->96 at 14x14, 4 blocks, 0.20 ms unsplit, 0.24 ms in 3)."""
    pblock = _pixel_block(cin, n * npix)
    tasks = -(-n * npix // pblock)
    chunks = 1
    if threads > 1 and tasks < threads:
        chunks = min(groups, -(-2 * threads // tasks))
    return pblock, chunks


def _spatial(node: Node, graph: Graph) -> int | None:
    """H*W of the output when the graph knows it (1-D convs: W)."""
    value = graph.values.get(node.outputs[0])
    shape = value.shape if value is not None else None
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return math.prod(int(d) for d in shape[2:])


@register_tactic
class PointwiseDirectConv(RunsBound, Tactic):
    """1x1 conv (any stride, no pads, group 1) as register-blocked numba tiles, epilogue fused."""

    name = "cpu.conv.pointwise_direct"
    op_types = CONV_OPS
    priority = 22

    def supports(self, node: Node, graph: Graph) -> bool:
        if not _conv_node_ok(node, graph):
            return False
        w = graph.values[node.input(1)]
        x = graph.values[node.input(0)]
        if w.shape is None or x.shape is None or not all(isinstance(d, int) for d in w.shape):
            return False
        geo = ConvGeometry.of(node, [int(d) for d in w.shape])
        return (
            (geo.kh, geo.kw) == (1, 1)
            and geo.group == 1
            and not any((geo.pad_top, geo.pad_left, geo.pad_bottom, geo.pad_right))
        )

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        w_value = graph.values[node.input(1)]
        prepared = Prepared(params={"weight_shape": [int(d) for d in (w_value.shape or ())]})
        w = graph.const(node.input(1))
        b = graph.const(node.input(2)) if node.input(2) else None
        gemv = _spatial(node, graph) == 1
        prepared.params["gemv"] = gemv
        if w is not None:
            m = w.shape[0]
            if gemv:
                prepared.tensors["weight"] = np.ascontiguousarray(np.asarray(w, np.float32).reshape(m, -1).T)
                if b is not None or not node.input(2):
                    prepared.tensors["bias"] = (
                        np.zeros(m, np.float32) if b is None else np.asarray(b, np.float32).reshape(-1).copy()
                    )
            else:
                prepared.tensors["weight"] = pack_weight(w)
                if b is not None or not node.input(2):
                    prepared.tensors["bias"] = pack_bias(b, m)
        prepared.replaces = frozenset(
            i for i, k in ((1, "weight"), (2, "bias")) if k in prepared.tensors and node.input(i)
        )
        return prepared

    def _operands(
        self, inputs: Sequence[np.ndarray | None], prepared: Prepared, gemv: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(packed weight, packed bias) for this run; cached when both were packed at build time."""
        key = "operands_gemv" if gemv else "operands"
        cached = prepared.scratch.get(key)
        if cached is not None:
            return cached
        built = prepared.params.get("gemv") == gemv
        w = prepared.tensors.get("weight") if built else None
        b = prepared.tensors.get("bias") if built else None
        raw_b = inputs[2] if len(inputs) > 2 else None
        if w is None:
            raw_w = inputs[1]
            assert raw_w is not None, "the weight was neither packed nor fed"
            m = raw_w.shape[0]
            w = np.ascontiguousarray(raw_w.reshape(m, -1).T, np.float32) if gemv else pack_weight(raw_w)
        else:
            w = np.ascontiguousarray(w, np.float32)
        m = int(prepared.params["weight_shape"][0])
        if b is None:
            if gemv:
                b = np.zeros(m, np.float32) if raw_b is None else np.asarray(raw_b, np.float32).reshape(-1)
            else:
                b = pack_bias(raw_b, m)
        else:
            b = np.ascontiguousarray(b, np.float32)
        if built and "weight" in prepared.tensors and "bias" in prepared.tensors:
            prepared.scratch[key] = (w, b)
        return w, b

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The kernel on these arrays. Without ``copies`` (the runtime's binding), None when an
        operand would have to be copied first: a strided layer's pixels, a non-contiguous
        input, a broadcast residual, or weights and bias that are run-time inputs."""
        x = inputs[0]
        assert x is not None
        out = outputs[0]
        geo, (act, alpha, beta, mode) = memo(
            prepared, "geometry", lambda: (ConvGeometry.of(node, prepared.params["weight_shape"]), epilogue_params(node))
        )
        residual_in = inputs[3] if len(inputs) > 3 else None
        if not copies and (
            geo.sh != 1
            or geo.sw != 1
            or not dense(x)
            or (residual_in is not None and not dense(residual_in, out.shape))
        ):
            return None
        if x.ndim == 3:
            x = x[:, :, :: geo.sw] if geo.sw != 1 else x
        elif geo.sh != 1 or geo.sw != 1:
            x = x[:, :, :: geo.sh, :: geo.sw]
        n, cin = x.shape[0], x.shape[1]
        m = out.shape[1]
        npix = out.size // (n * m) if n * m else 0
        if npix == 0:
            return nothing
        x3 = np.ascontiguousarray(x, np.float32).reshape(n, cin, npix)
        residual = residual_rows(residual_in, out.shape, n * m)
        gemv = npix == 1
        w, b = self._operands(inputs, prepared, gemv)
        if not copies and ("operands_gemv" if gemv else "operands") not in prepared.scratch:
            return None
        if gemv:
            if mode != RES_NONE:
                residual = residual.reshape(n, m)
            return functools.partial(
                pointwise_gemv, x3.reshape(n, cin), w, b, out.reshape(n, m), residual, mode, act, alpha, beta
            )
        parallel = self.parallel(out.size * cin)
        pblock, chunks = _plan(n, cin, npix, w.shape[0], numba_thread_count() if parallel else 1)
        args = (x3, w, b, out.reshape(n, m, npix), residual, mode, act, alpha, beta, pblock, chunks)
        return bound_call(pointwise_conv, args, PARALLEL_MIN_ELEMENTS if parallel else 0)

    def parallel(self, work: int) -> bool:
        """Whether a layer of ``work`` multiply-adds runs on numba's pool: not below ~1 MFLOP
        (waking the pool costs more than it saves)."""
        return work >= 32 * PARALLEL_MIN_ELEMENTS


@register_tactic
class SingleThreadPointwiseDirectConv(PointwiseDirectConv):
    """``cpu.conv.pointwise_direct`` on the calling thread only (small layers, busy hosts)."""

    name = "cpu.conv.pointwise_direct_1t"
    priority = 21

    def parallel(self, work: int) -> bool:
        return False
