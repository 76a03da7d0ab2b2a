"""float32x16: a sixteen-lane float32 vector value (one AVX-512 register) for numba code.

numba runs LLVM without its SLP vectorizer and cannot keep an accumulator array in registers, so a
micro-kernel written as plain loops reloads and stores its partial sums every step. These
intrinsics emit LLVM vector IR directly (``<16 x float>``): a micro-kernel holding 24 of them as
local variables compiles to 24 ``zmm`` accumulators and one ``vfmadd231ps`` per vector product
(see ``_microgemm``). On a CPU without AVX-512 LLVM splits each value into two AVX registers:
still correct, but a 24-accumulator kernel then spills, so tactics built on these ask
:data:`AVX512` first. ``pointwise.float32x8`` is the eight-lane sibling.

Masked forms (``vload16_masked``/``vstore16_masked``: the first ``count`` lanes; ``vload16_lanes``:
lanes ``lo <= j < hi``) touch only the selected lanes, so a 16-lane access may start before or run
past its array: AVX-512 masked moves (``vmaskmovps`` on AVX2 hosts) do not fault on the others.
``vevens16``/``vodds16`` de-interleave 32 consecutive floats (stride-2 columns), and
``vadd16``/``vsub16``/``vmul16``/``vdiv16``/``vmax16``/``vmin16``/``vsplat16`` are the lane-wise arithmetic an epilogue
needs. ``vprefetch``/``vprefetch_l2`` are the software prefetch hints a tile uses for the next
tile's data where the hardware prefetcher does not see the pattern.

All memory intrinsics index C-contiguous float32 arrays by flat element and are not bounds-checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from farm.compiler.kernels.cpu import _vecmath as _vm

LANES = 16

_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, LANES)


def host_has(feature: str) -> bool:
    """Whether LLVM's host features list ``feature`` (``"avx512f"``, ``"avx"``, ..)."""
    try:
        features = binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read the host's features: assume the worst
        return False
    return bool(features.get(feature))


AVX512: bool = host_has("avx512f")
"""True when this CPU runs 16-lane float32 vectors natively (LLVM's host features: ``avx512f``)."""

PLAIN_WHOLE_VECTORS: bool = not AVX512
"""Masked loads and stores test their count first and move a whole vector with a plain load or
store: without AVX-512 they lower to ``vmaskmovps``, whose store form AMD runs microcoded (a
2-core EPYC's depthwise layers ran 1.2-1.5x slower through it). Read when a caller compiles."""


class Float32x16(types.Type):
    """numba type of an LLVM ``<16 x float>`` value."""

    def __init__(self) -> None:
        super().__init__(name="float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any) -> None:
        super().__init__(dmm, fe_type, _V16)


def _is_f32_array(a: Any) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"


def _element_pointer(context: Any, builder: Any, arrty: Any, arr: Any, index: Any, indexty: Any) -> Any:
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, index, indexty, types.intp)
    return builder.gep(ary.data, [idx])


def _vload16(typingctx: Any, arr: Any, index: Any) -> Any:
    """The 16 float32 of ``arr`` from flat element ``index`` on."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(ptr, _V16.as_pointer()), align=4)

    return float32x16(arr, index), codegen


vload16: Any = intrinsic(_vload16)


def _vstore16(typingctx: Any, arr: Any, index: Any, value: Any) -> Any:
    """Store ``value`` into ``arr``'s flat elements ``index .. index+15``."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer) or value != float32x16:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(args[2], builder.bitcast(ptr, _V16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


vstore16: Any = intrinsic(_vstore16)


def _vbroadcast16(typingctx: Any, arr: Any, index: Any) -> Any:
    """Sixteen copies of ``arr``'s flat element ``index`` (one ``vbroadcastss`` from memory)."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        v = builder.load(
            _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=4
        )
        first = builder.insert_element(ir.Constant(_V16, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(first, ir.Constant(_V16, ir.Undefined), zeros)

    return float32x16(arr, index), codegen


vbroadcast16: Any = intrinsic(_vbroadcast16)


def _prefetch(locality: int) -> Any:
    def typer(typingctx: Any, arr: Any, index: Any) -> Any:
        if not _is_f32_array(arr) or not isinstance(index, types.Integer):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
            )
            # read, the locality asked for, data cache
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(locality), i32(1)])
            return context.get_dummy_value()

        return types.none(arr, index), codegen

    return intrinsic(typer)


vprefetch: Any = _prefetch(3)
"""Ask for the 64-byte line holding ``arr``'s flat element ``index`` in L1 (``prefetcht0``): a
hint that never faults, so ``index`` may lie past the array. For data the next few hundred
cycles read (a tile's next input columns)."""

vprefetch_l2: Any = _prefetch(2)
""":data:`vprefetch` into L2 (``prefetcht1``): for a block needed after the current one, which
must not push the current one out of L1 (``conv_lanes``' next weight block)."""


def _vzero16(typingctx: Any) -> Any:
    """A vector of zeros."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return ir.Constant(_V16, [0.0] * LANES)

    return float32x16(), codegen


vzero16: Any = intrinsic(_vzero16)


def _vfma16(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` lane by lane (``llvm.fmuladd``: one fused multiply-add where the CPU has one)."""
    if not (a == float32x16 and b == float32x16 and c == float32x16):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        fnty = ir.FunctionType(_V16, [_V16, _V16, _V16])
        return builder.call(
            cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v16f32"), list(args)
        )

    return float32x16(a, b, c), codegen


vfma16: Any = intrinsic(_vfma16)


def _first_lanes(builder: Any, count: Any) -> Any:
    """<16 x i1> mask of the lanes below ``count`` (an i64; 16 or more selects all of them)."""
    i32v = ir.VectorType(ir.IntType(32), LANES)
    n = builder.trunc(
        builder.select(
            builder.icmp_unsigned(">", count, ir.Constant(count.type, LANES)),
            ir.Constant(count.type, LANES),
            count,
        ),
        ir.IntType(32),
    )
    splat = builder.insert_element(ir.Constant(i32v, ir.Undefined), n, ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(splat, ir.Constant(i32v, ir.Undefined), ir.Constant(i32v, [0] * LANES))
    return builder.icmp_unsigned("<", ir.Constant(i32v, list(range(LANES))), splat)


def _masked_load(builder: Any, ptr: Any, mask: Any) -> Any:
    fnty = ir.FunctionType(_V16, [ptr.type, ir.IntType(32), mask.type, _V16])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v16f32.p0")
    return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 4), mask, ir.Constant(_V16, [0.0] * LANES)])


def _load_unless_whole(builder: Any, ptr: Any, mask: Any, full: Any) -> Any:
    """A masked load of ``ptr`` under ``mask()``, or with :data:`PLAIN_WHOLE_VECTORS` a plain load
    when the i1 ``full`` says every lane is selected."""
    if not PLAIN_WHOLE_VECTORS:
        return _masked_load(builder, ptr, mask())
    with builder.if_else(full, likely=True) as (whole, part):
        with whole:
            plain = builder.load(ptr, align=4)
            whole_block = builder.block
        with part:
            masked = _masked_load(builder, ptr, mask())
            part_block = builder.block
    value = builder.phi(_V16)
    value.add_incoming(plain, whole_block)
    value.add_incoming(masked, part_block)
    return value


def _masked_store(builder: Any, value: Any, ptr: Any, mask: Any) -> None:
    fnty = ir.FunctionType(ir.VoidType(), [_V16, ptr.type, ir.IntType(32), mask.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16f32.p0")
    builder.call(fn, [value, ptr, ir.Constant(ir.IntType(32), 4), mask])


def _store_first_lanes(builder: Any, value: Any, ptr: Any, count: Any) -> None:
    """Store lanes 0 .. count-1 (``count`` an i64 below 16) of ``value`` at ``ptr`` as plain stores
    of 8, 4, 2 and 1 lanes, one per set bit of ``count`` (a 12-float row tail: one 8-lane and one
    4-lane store). Without AVX-512 a masked store is ``vmaskmovps``, which AMD runs microcoded:
    a 2-core EPYC spent ~70 ns on each, more than a 5x5 depthwise tile's 100 FMAs."""
    f32p = builder.bitcast(ptr, _F32.as_pointer())
    i32 = ir.IntType(32)

    def lanes(vector: Any, first: int, width: int) -> Any:
        picks = ir.Constant(ir.VectorType(i32, width), [i32(first + j) for j in range(width)])
        return builder.shuffle_vector(vector, ir.Constant(vector.type, ir.Undefined), picks)

    rest = value  # the lanes not stored yet, from the lowest: 16, then 8, 4, 2 of them
    offset = ir.Constant(count.type, 0)
    for piece in (8, 4, 2, 1):
        taken = builder.and_(count, ir.Constant(count.type, piece))
        bit = builder.icmp_unsigned("!=", taken, ir.Constant(count.type, 0))
        with builder.if_then(bit):
            at = builder.gep(f32p, [offset])
            if piece == 1:
                builder.store(builder.extract_element(rest, i32(0)), at, align=4)
            else:
                head = lanes(rest, 0, piece)
                builder.store(head, builder.bitcast(at, head.type.as_pointer()), align=4)
        if piece > 1:
            rest = builder.select(bit, lanes(rest, piece, piece), lanes(rest, 0, piece))
            offset = builder.add(offset, taken)


def _store_unless_whole(builder: Any, value: Any, ptr: Any, count: Any) -> None:
    """Store the first ``count`` lanes (an i64): one masked store, or with
    :data:`PLAIN_WHOLE_VECTORS` a plain store when every lane is selected and otherwise plain
    pieces (:func:`_store_first_lanes`)."""
    if not PLAIN_WHOLE_VECTORS:
        _masked_store(builder, value, ptr, _first_lanes(builder, count))
        return
    full = builder.icmp_unsigned(">=", count, ir.Constant(count.type, LANES))
    with builder.if_else(full, likely=True) as (whole, part):
        with whole:
            builder.store(value, ptr, align=4)
        with part:
            _store_first_lanes(builder, value, ptr, count)


def _vload16_masked(typingctx: Any, arr: Any, index: Any, count: Any) -> Any:
    """The first ``count`` (0 .. 16) float32 of ``arr`` from flat element ``index`` on, zeros in
    the other lanes; the elements past ``count`` are not read (a masked load: no fault past the
    end of the array)."""
    if not _is_f32_array(arr) or not isinstance(index, types.Integer) or not isinstance(count, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = builder.bitcast(
            _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), _V16.as_pointer()
        )
        count = context.cast(builder, args[2], sig.args[2], types.uint64)
        full = builder.icmp_unsigned(">=", count, ir.Constant(count.type, LANES))
        return _load_unless_whole(builder, ptr, lambda: _first_lanes(builder, count), full)

    return float32x16(arr, index, count), codegen


vload16_masked: Any = intrinsic(_vload16_masked)


def _lane_range(builder: Any, lo: Any, hi: Any) -> Any:
    """<16 x i1> mask of the lanes j with lo <= j < hi (signed i64 bounds, any values)."""
    i32v = ir.VectorType(ir.IntType(32), LANES)

    def clamped_splat(value: Any) -> Any:
        zero, top = ir.Constant(value.type, 0), ir.Constant(value.type, LANES)
        value = builder.select(builder.icmp_signed("<", value, zero), zero, value)
        value = builder.trunc(
            builder.select(builder.icmp_signed(">", value, top), top, value), ir.IntType(32)
        )
        first = builder.insert_element(ir.Constant(i32v, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(first, ir.Constant(i32v, ir.Undefined), ir.Constant(i32v, [0] * LANES))

    lanes = ir.Constant(i32v, list(range(LANES)))
    return builder.and_(
        builder.icmp_signed(">=", lanes, clamped_splat(lo)),
        builder.icmp_signed("<", lanes, clamped_splat(hi)),
    )


def _vload16_lanes(typingctx: Any, arr: Any, index: Any, lo: Any, hi: Any) -> Any:
    """Lanes ``lo <= j < hi`` of the 16 float32 of ``arr`` from flat element ``index`` on, zeros in
    the others, which are not read: ``index`` may point before the array or run past its end as
    long as the selected lanes are inside it (a row window with padding on either side)."""
    if not _is_f32_array(arr) or not all(isinstance(v, types.Integer) for v in (index, lo, hi)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = builder.bitcast(
            _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), _V16.as_pointer()
        )
        lo = context.cast(builder, args[2], sig.args[2], types.int64)
        hi = context.cast(builder, args[3], sig.args[3], types.int64)
        full = builder.and_(
            builder.icmp_signed("<=", lo, ir.Constant(lo.type, 0)),
            builder.icmp_signed(">=", hi, ir.Constant(hi.type, LANES)),
        )
        return _load_unless_whole(builder, ptr, lambda: _lane_range(builder, lo, hi), full)

    return float32x16(arr, index, lo, hi), codegen


vload16_lanes: Any = intrinsic(_vload16_lanes)


def _vstore16_masked(typingctx: Any, arr: Any, index: Any, value: Any, count: Any) -> Any:
    """Store the first ``count`` (0 .. 16) lanes of ``value`` into ``arr``'s flat elements from
    ``index`` on; the elements past them are left untouched (a masked store)."""
    if (
        not _is_f32_array(arr)
        or not isinstance(index, types.Integer)
        or value != float32x16
        or not isinstance(count, types.Integer)
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = builder.bitcast(
            _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), _V16.as_pointer()
        )
        count = context.cast(builder, args[3], sig.args[3], types.uint64)
        _store_unless_whole(builder, args[2], ptr, count)
        return context.get_dummy_value()

    return types.none(arr, index, value, count), codegen


vstore16_masked: Any = intrinsic(_vstore16_masked)


def _vstore16_lanes(typingctx: Any, arr: Any, index: Any, value: Any, lo: Any, hi: Any) -> Any:
    """Store lanes ``lo <= j < hi`` of ``value`` into ``arr``'s flat elements ``index + j``; the
    others are not touched (a masked store), so ``index`` may point before the array as long as
    the selected lanes are inside it: ``vstore16_lanes(out, row_at - 8, v, 8, 8 + n)`` stores
    the first ``n`` lanes of ``v``'s upper half at ``out[row_at:]``."""
    if (
        not _is_f32_array(arr)
        or value != float32x16
        or not all(isinstance(v, types.Integer) for v in (index, lo, hi))
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = builder.bitcast(
            _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), _V16.as_pointer()
        )
        lo = context.cast(builder, args[3], sig.args[3], types.int64)
        hi = context.cast(builder, args[4], sig.args[4], types.int64)
        _masked_store(builder, args[2], ptr, _lane_range(builder, lo, hi))
        return context.get_dummy_value()

    return types.none(arr, index, value, lo, hi), codegen


vstore16_lanes: Any = intrinsic(_vstore16_lanes)


def _transpose_stages() -> list[list[tuple[int, int, int, tuple[tuple[int, int], ...]]]]:
    """The shuffles of :func:`vtranspose8x16`: per stage, (output slot, source a, source b,
    the output's lane labels), labels being (row, channel) pairs; stage 0's slots are the
    8 input rows, each lane c labelled (row, c)."""
    halves = [tuple(range(0, 4)) + tuple(range(8, 12)), tuple(range(4, 8)) + tuple(range(12, 16))]
    quarters = [s for h in halves for s in (h[0:2] + h[4:6], h[2:4] + h[6:8])]
    stages = []
    # stage 1: row pairs x channel halves; stage 2: row quads x quarters; stage 3: all rows x {i, i+8}
    one = []
    for p in range(4):
        for h, chans in enumerate(halves):
            labels = tuple((r, c) for c in chans for r in (2 * p, 2 * p + 1))
            one.append((2 * p + h, 2 * p, 2 * p + 1, labels))
    stages.append(one)
    two = []
    for q in range(2):
        for s, chans in enumerate(quarters):
            h = s // 2
            rows = range(4 * q, 4 * q + 4)
            labels = tuple((r, c) for c in chans for r in rows)
            two.append((4 * q + s, 2 * (2 * q) + h, 2 * (2 * q + 1) + h, labels))
    stages.append(two)
    three = []
    for i in range(8):
        s = next(n for n, chans in enumerate(quarters) if i in chans)
        labels = tuple((r, c) for c in (i, i + 8) for r in range(8))
        three.append((i, s, 4 + s, labels))
    stages.append(three)
    return stages


_TRANSPOSE = _transpose_stages()


def _vtranspose8x16(
    typingctx: Any, r0: Any, r1: Any, r2: Any, r3: Any, r4: Any, r5: Any, r6: Any, r7: Any
) -> Any:
    """Eight vectors r0 .. r7 (row j, lane c) transposed in registers: a tuple of eight, vector i
    holding ``r0[i] .. r7[i]`` in lanes 0-7 and ``r0[i+8] .. r7[i+8]`` in lanes 8-15 (24
    two-source shuffles: ``vpermt2ps`` with AVX-512). For a tile held with channels across the
    lanes and pixels in the rows: vector i is then pixels 0-7 of channels i and i+8."""
    rows = (r0, r1, r2, r3, r4, r5, r6, r7)
    if any(r != float32x16 for r in rows):
        return None
    out = types.UniTuple(float32x16, 8)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i32v = ir.VectorType(ir.IntType(32), LANES)
        vectors = list(args)
        labels: list[tuple[tuple[int, int], ...]] = [tuple((r, c) for c in range(LANES)) for r in range(8)]
        for stage in _TRANSPOSE:
            new_vectors: list[Any] = [None] * 8
            new_labels: list[tuple[tuple[int, int], ...]] = [()] * 8
            for slot, a, b, want in stage:
                where = {lab: n for n, lab in enumerate(labels[a])}
                where.update({lab: LANES + n for n, lab in enumerate(labels[b])})
                picks = ir.Constant(i32v, [where[lab] for lab in want])
                new_vectors[slot] = builder.shuffle_vector(vectors[a], vectors[b], picks)
                new_labels[slot] = want
            vectors, labels = new_vectors, new_labels
        return context.make_tuple(builder, sig.return_type, vectors)

    return out(*rows), codegen


vtranspose8x16: Any = intrinsic(_vtranspose8x16)


def _lanes_of_pair(parity: int) -> Any:
    def typer(typingctx: Any, a: Any, b: Any) -> Any:
        if not (a == float32x16 and b == float32x16):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            picks = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [2 * i + parity for i in range(LANES)])
            return builder.shuffle_vector(args[0], args[1], picks)

        return float32x16(a, b), codegen

    return typer


def _zip_half(high: int) -> Any:
    def typer(typingctx: Any, a: Any, b: Any) -> Any:
        if not (a == float32x16 and b == float32x16):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            base = 8 * high
            picks = [lane for i in range(8) for lane in (base + i, LANES + base + i)]
            return builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(ir.IntType(32), LANES), picks))

        return float32x16(a, b), codegen

    return typer


vziplo16: Any = intrinsic(_zip_half(0))
"""``a0 b0 a1 b1 .. a7 b7``: the first halves of a and b interleaved (inverse of ``vevens16`` /
``vodds16`` with :func:`vziphi16`)."""
vziphi16: Any = intrinsic(_zip_half(1))
"""``a8 b8 a9 b9 .. a15 b15``: the second halves of a and b interleaved."""
vevens16: Any = intrinsic(_lanes_of_pair(0))
"""Lanes 0, 2, .., 30 of the 32-lane concatenation ``a ++ b`` (one ``vpermt2ps``): the even
elements of 32 consecutive floats."""
vodds16: Any = intrinsic(_lanes_of_pair(1))
"""Lanes 1, 3, .., 31 of ``a ++ b``: the odd elements of 32 consecutive floats."""


def _vsplat16(typingctx: Any, x: Any) -> Any:
    """Sixteen copies of the scalar ``x`` (cast to float32)."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        first = builder.insert_element(ir.Constant(_V16, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(first, ir.Constant(_V16, ir.Undefined), zeros)

    return float32x16(x), codegen


vsplat16: Any = intrinsic(_vsplat16)


HALVES_MAX_MIN: bool = not AVX512 and host_has("avx")
"""``vmax16``/``vmin16`` call ``vmaxps``/``vminps`` on the two 8-lane halves instead of emitting a
compare and select. Without AVX-512, LLVM rewrites ``store(p, select(x > load(p), x, load(p)))``
(a running maximum kept in memory, as a pool's scratch row) into a masked store of ``x``, which is
``vmaskmovps``: AMD runs its store form microcoded, and the AVX2 EPYC's MaxPool scratch pass took
0.43-0.49 ms instead of 0.065 (ResNet's stem pool, 64 @112x112). An intrinsic call is not a select,
so the store stays a plain one. ``vmaxps a, b`` is ``a > b ? a : b`` (``b`` when either is NaN):
the select's rule exactly. Read when a caller compiles."""

_HALF = ir.VectorType(_F32, LANES // 2)


def _max_min_halves(builder: ir.IRBuilder, kind: str, a: Any, b: Any) -> Any:
    """``a if a > b else b`` (``<`` for min) as two ``llvm.x86.avx.{max,min}.ps.256`` calls."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_HALF, [_HALF, _HALF]), f"llvm.x86.avx.{kind}.ps.256"
    )
    low = ir.Constant(ir.VectorType(ir.IntType(32), LANES // 2), list(range(LANES // 2)))
    high = ir.Constant(ir.VectorType(ir.IntType(32), LANES // 2), list(range(LANES // 2, LANES)))
    halves = [
        builder.call(fn, [builder.shuffle_vector(a, a, lanes), builder.shuffle_vector(b, b, lanes)])
        for lanes in (low, high)
    ]
    both = ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(range(LANES)))
    return builder.shuffle_vector(halves[0], halves[1], both)


def _binary(kind: str) -> Any:
    def typer(typingctx: Any, a: Any, b: Any) -> Any:
        if not (a == float32x16 and b == float32x16):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            a_, b_ = args
            if kind == "add":
                return builder.fadd(a_, b_)
            if kind == "sub":
                return builder.fsub(a_, b_)
            if kind == "mul":
                return builder.fmul(a_, b_)
            if kind == "div":
                return builder.fdiv(a_, b_)
            # a if a > b (resp. a < b) else b: numba's scalar max / min, NaN in ``a`` gives ``b``
            if HALVES_MAX_MIN:
                return _max_min_halves(builder, kind, a_, b_)
            op = ">" if kind == "max" else "<"
            return builder.select(builder.fcmp_ordered(op, a_, b_), a_, b_)

        return float32x16(a, b), codegen

    return typer


vadd16: Any = intrinsic(_binary("add"))
"""``a + b`` lane by lane."""
vsub16: Any = intrinsic(_binary("sub"))
"""``a - b`` lane by lane."""
vmul16: Any = intrinsic(_binary("mul"))
"""``a * b`` lane by lane."""
vdiv16: Any = intrinsic(_binary("div"))
"""``a / b`` lane by lane (IEEE division, as the scalar ``/``)."""
vmax16: Any = intrinsic(_binary("max"))
"""``a if a > b else b`` lane by lane (numba's scalar ``max``; one ``vmaxps``)."""
vmin16: Any = intrinsic(_binary("min"))
"""``a if a < b else b`` lane by lane (numba's scalar ``min``; one ``vminps``)."""


_F = TypeVar("_F", bound=Callable[..., Any])

# numba's option for compiling without reference counting; its type stubs do not list it
_NO_REFCOUNT: dict[str, Any] = {"_nrt": False}


def called_tile(fn: _F) -> _F:
    """``njit`` for a register tile that its kernel *calls* (one call per tile, the K loop
    inside) rather than inlines: ``inline="always"`` makes numba copy and re-type the tile's IR
    at every call site, and a parallel caller's parfor passes then take minutes. Compiled
    without reference counting (the tile allocates nothing): with it, the call and every
    epilogue store incref and decref the array arguments, external calls that spill the
    accumulators and made a called tile up to 1.7x slower than an inlined one."""
    return cast(
        _F, njit(error_model="numpy", cache=True, nogil=True, fastmath={"contract"}, **_NO_REFCOUNT)(fn)
    )


# exp: x = k ln2 + r with k = round(x / ln2), |r| <= ln2 / 2 (Cody-Waite: ln2 in two parts), e^r
# by its degree-6 Taylor polynomial (relative error < 2e-7), 2^k from exponent bits: the constants
# and clamp of ``_vecmath.exp_row``. k is rounded with the 1.5 * 2^23 shifter, whose low mantissa
# bits then hold k, shifted straight into the exponent field.
_EXP_SHIFTER = 12582912.0  # 1.5 * 2^23
_EXP_POLY = tuple(float(c) for c in (_vm._C6, _vm._C5, _vm._C4, _vm._C3, _vm._C2, _vm._ONE, _vm._ONE))


def _vexp16(typingctx: Any, x: Any, floor: Any) -> Any:
    """``exp(x)`` lane by lane, and exactly 0 in the lanes where ``x <= floor`` (a scalar of at least
    -86.5: softmax passes ``_vecmath.SOFTMAX_FLUSH`` so that no numerator is a denormal).
    Inputs are clamped to [-86.5, 88.7]; relative error below 3e-7 (about two float32 ulps). NaN
    gives NaN."""
    if x != float32x16 or not isinstance(floor, (types.Float, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        def splat(value: float) -> Any:
            return ir.Constant(_V16, [value] * LANES)

        def fma(a: Any, b: Any, c: Any) -> Any:
            fnty = ir.FunctionType(_V16, [_V16, _V16, _V16])
            return builder.call(
                cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v16f32"), [a, b, c]
            )

        v = args[0]
        lo, hi = float(_vm._EXP_LO), float(_vm._EXP_HI)
        clamped = builder.select(builder.fcmp_ordered("<", v, splat(lo)), splat(lo), v)
        clamped = builder.select(builder.fcmp_ordered(">", clamped, splat(hi)), splat(hi), clamped)
        shifted = fma(clamped, splat(float(_vm._LOG2E)), splat(_EXP_SHIFTER))
        k = builder.fsub(shifted, splat(_EXP_SHIFTER))
        r = fma(k, splat(-float(_vm._LN2_HI)), clamped)
        r = fma(k, splat(-float(_vm._LN2_LO)), r)
        poly = splat(_EXP_POLY[0])
        for c in _EXP_POLY[1:]:
            poly = fma(poly, r, splat(c))
        vi32 = ir.VectorType(ir.IntType(32), LANES)
        bits = builder.shl(builder.bitcast(shifted, vi32), ir.Constant(vi32, [23] * LANES))
        bits = builder.add(bits, ir.Constant(vi32, [127 << 23] * LANES))
        value = builder.fmul(poly, builder.bitcast(bits, _V16))
        floor_value = context.cast(builder, args[1], sig.args[1], types.float32)
        floor_splat = builder.insert_element(
            ir.Constant(_V16, ir.Undefined), floor_value, ir.Constant(ir.IntType(32), 0)
        )
        floor_splat = builder.shuffle_vector(
            floor_splat, ir.Constant(_V16, ir.Undefined), ir.Constant(vi32, [0] * LANES)
        )
        # unordered: a NaN input is no "at or below the floor" and stays NaN (through the clamps)
        return builder.select(builder.fcmp_unordered(">", v, floor_splat), value, splat(0.0))

    return float32x16(x, floor), codegen


vexp16: Any = intrinsic(_vexp16)


def _reduce(kind: str) -> Any:
    def typer(typingctx: Any, a: Any) -> Any:
        if a != float32x16:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            if kind == "max":
                fnty = ir.FunctionType(_F32, [_V16])
                fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.vector.reduce.fmax.v16f32")
                return builder.call(fn, [args[0]])
            fnty = ir.FunctionType(_F32, [_F32, _V16])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.vector.reduce.fadd.v16f32")
            # reassoc: a tree of shuffles and adds, not 16 adds in lane order
            return builder.call(fn, [ir.Constant(_F32, 0.0), args[0]], fastmath=("reassoc",))

        return types.float32(a), codegen

    return typer


vhmax16: Any = intrinsic(_reduce("max"))
"""The largest lane of ``a`` (a float32 scalar; NaN lanes are ignored)."""
vhsum16: Any = intrinsic(_reduce("sum"))
"""The sum of ``a``'s lanes (a float32 scalar, added pairwise in a tree)."""


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def max_into(dst: Any, src: Any) -> None:
    """``dst[i] = src[i] if src[i] > dst[i] else dst[i]`` over ``dst`` (1-D C arrays, ``src`` at
    least as long): a running maximum kept in memory, sixteen lanes a step through ``vmax16``. The
    scalar loop ``dst[i] = max(dst[i], src[i])`` is the store-of-a-select pattern that LLVM turns
    into ``vmaskmovps`` stores without AVX-512 (:data:`HALVES_MAX_MIN`)."""
    n = dst.shape[0]
    whole = n - n % LANES  # plain loads and stores for whole vectors, masked ones for the tail
    for q in range(0, whole, LANES):
        vstore16(dst, q, vmax16(vload16(src, q), vload16(dst, q)))
    if whole < n:
        k = n - whole
        vstore16_masked(dst, whole, vmax16(vload16_masked(src, whole, k), vload16_masked(dst, whole, k)), k)
