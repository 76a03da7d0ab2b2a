"""int32x16: a sixteen-lane int32 vector value for numba code, and AVX-512 VNNI's ``vpdpbusd``.

``vdpbusd(acc, a, b)`` adds to each int32 lane of ``acc`` the four products of that lane's four
unsigned bytes of ``a`` with the four signed bytes of ``b`` (64 multiply-adds in one
instruction, no saturation). numba/LLVM does not emit it from plain loops (it widens the bytes
to int32 lanes instead, 4x fewer products per instruction), so the int8 micro-kernel calls it
through these intrinsics, as ``_simd16`` does for float32 FMAs.

Memory intrinsics index C-contiguous arrays by flat element and are not bounds-checked:

* ``vload_bytes64(w, i)``: the 64 bytes of an int8 or uint8 array from ``w[i]`` on, as sixteen
  int32 lanes of four bytes each;
* ``vbroadcast_bytes4(a, i)``: the four bytes ``a[i:i+4]`` of an int8 or uint8 array, in every
  lane (folded into the ``vpdpbusd`` as an embedded ``{1to16}`` broadcast);
* ``vload_i32x16(z, i)``: sixteen int32 of an int32 array.

``vcodes16`` quantizes a float32x16 into int32 codes and ``vstore_quads`` interleaves four such
code vectors (four channel planes) into 64 bytes, the layout the conv tiles read.
``vsplat_i32x16``, ``vsub_i32x16`` and ``vcvt_f32x16`` (int32 lanes to ``float32x16``) finish a tile in the
float32 epilogue of ``_simd16``. Only hosts where :data:`VNNI` is true may compile code using
``vdpbusd``: elsewhere LLVM cannot select the instruction.
"""

from __future__ import annotations

from typing import Any

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from farm.compiler.kernels.cpu._simd16 import _element_pointer, _first_lanes, float32x16

LANES = 16

_I32 = ir.IntType(32)
_VI32 = ir.VectorType(_I32, LANES)
_VI8 = ir.VectorType(ir.IntType(8), 4 * LANES)
_VF32 = ir.VectorType(ir.FloatType(), LANES)


def _host_has_vnni() -> bool:
    try:
        features = binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read the host's features: assume the worst
        return False
    return all(features.get(f) for f in ("avx512f", "avx512bw", "avx512vnni"))


VNNI: bool = _host_has_vnni()
"""True when this CPU has AVX-512 VNNI (``vpdpbusd`` on 512-bit registers): Ice Lake and later
Xeons, AMD Zen 4 and later."""

# LLVM 21 retyped the VNNI intrinsics' byte operands from <16 x i32> to <64 x i8>; older LLVMs
# know only the first form
_BYTE_OPERANDS = binding.llvm_version_info >= (21,)


class Int32x16(types.Type):
    """numba type of an LLVM ``<16 x i32>`` value."""

    def __init__(self) -> None:
        super().__init__(name="int32x16")


int32x16 = Int32x16()


@register_model(Int32x16)
class _Int32x16Model(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any) -> None:
        super().__init__(dmm, fe_type, _VI32)


def _is_array(a: Any, dtype: Any) -> bool:
    return isinstance(a, types.Array) and a.dtype == dtype and a.layout == "C"


def _splat(builder: Any, value: Any) -> Any:
    first = builder.insert_element(ir.Constant(_VI32, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, ir.Constant(_VI32, ir.Undefined), ir.Constant(_VI32, [0] * LANES))


def _is_bytes(a: Any) -> bool:
    return _is_array(a, types.int8) or _is_array(a, types.uint8)


def _vload_bytes64(typingctx: Any, arr: Any, index: Any) -> Any:
    """The 64 bytes of ``arr`` (int8 or uint8) from flat element ``index`` on, four per int32 lane."""
    if not _is_bytes(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(ptr, _VI32.as_pointer()), align=1)

    return int32x16(arr, index), codegen


vload_bytes64: Any = intrinsic(_vload_bytes64)


def _vbroadcast_bytes4(typingctx: Any, arr: Any, index: Any) -> Any:
    """The four bytes ``arr[index:index+4]`` (int8 or uint8; one int32) in all sixteen lanes."""
    if not _is_bytes(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return _splat(builder, builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=1))

    return int32x16(arr, index), codegen


vbroadcast_bytes4: Any = intrinsic(_vbroadcast_bytes4)


def _vsplat_i32x16(typingctx: Any, x: Any) -> Any:
    """Sixteen copies of the integer ``x`` (cast to int32)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.int32))

    return int32x16(x), codegen


vsplat_i32x16: Any = intrinsic(_vsplat_i32x16)


def _vload_i32x16(typingctx: Any, arr: Any, index: Any) -> Any:
    """The 16 int32 of ``arr`` from flat element ``index`` on."""
    if not _is_array(arr, types.int32) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(ptr, _VI32.as_pointer()), align=4)

    return int32x16(arr, index), codegen


vload_i32x16: Any = intrinsic(_vload_i32x16)


def _vzero_i32x16(typingctx: Any) -> Any:
    """A vector of int32 zeros."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return ir.Constant(_VI32, [0] * LANES)

    return int32x16(), codegen


vzero_i32x16: Any = intrinsic(_vzero_i32x16)


def _vdpbusd(typingctx: Any, acc: Any, a: Any, b: Any) -> Any:
    """``acc[l] + sum_{t<4} u8(a)[4l+t] * s8(b)[4l+t]`` for each lane ``l`` (``vpdpbusd``)."""
    if not (acc == int32x16 and a == int32x16 and b == int32x16):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        acc_, a_, b_ = args
        if _BYTE_OPERANDS:
            fnty = ir.FunctionType(_VI32, [_VI32, _VI8, _VI8])
            a_, b_ = builder.bitcast(a_, _VI8), builder.bitcast(b_, _VI8)
        else:
            fnty = ir.FunctionType(_VI32, [_VI32, _VI32, _VI32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc_, a_, b_])

    return int32x16(acc, a, b), codegen


vdpbusd: Any = intrinsic(_vdpbusd)


def _vsub_i32x16(typingctx: Any, a: Any, b: Any) -> Any:
    """``a - b`` lane by lane (wrapping int32)."""
    if not (a == int32x16 and b == int32x16):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.sub(args[0], args[1])

    return int32x16(a, b), codegen


vsub_i32x16: Any = intrinsic(_vsub_i32x16)


def _vcvt_f32x16(typingctx: Any, a: Any) -> Any:
    """The int32 lanes of ``a`` as float32 (``vcvtdq2ps``: exact below 2**24, rounded above)."""
    if a != int32x16:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.sitofp(args[0], _VF32)

    return float32x16(a), codegen


vcvt_f32x16: Any = intrinsic(_vcvt_f32x16)


def _vcodes16(typingctx: Any, v: Any, inv_scale: Any, zero_point: Any, lo: Any, hi: Any) -> Any:
    """The quantization codes of ``v``: ``min(max(rint(v * inv_scale) + zero_point, lo), hi)``
    (float32x16 operands, the last four splats) as int32 lanes; NaN gives ``lo``."""
    if not (v == float32x16 and inv_scale == float32x16 and zero_point == float32x16 and lo == float32x16):
        return None
    if hi != float32x16:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        v_, inv_, zp_, lo_, hi_ = args
        rint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VF32, [_VF32]), "llvm.rint.v16f32"
        )
        q = builder.fadd(builder.call(rint, [builder.fmul(v_, inv_)]), zp_)
        q = builder.select(builder.fcmp_ordered(">", q, lo_), q, lo_)  # NaN fails the test: lo
        q = builder.select(builder.fcmp_ordered("<", q, hi_), q, hi_)
        return builder.fptosi(q, _VI32)

    return int32x16(v, inv_scale, zero_point, lo, hi), codegen


vcodes16: Any = intrinsic(_vcodes16)


def _vstore_quads(
    typingctx: Any, arr: Any, index: Any, c0: Any, c1: Any, c2: Any, c3: Any, count: Any
) -> Any:
    """Store the first ``count`` (0 .. 16) of sixteen groups of four bytes from ``arr[index]`` on
    (a uint8 array): group ``l`` is ``c0[l], c1[l], c2[l], c3[l]`` (each a code 0 .. 255), i.e.
    four planes interleaved. The bytes after them are not written (a masked store)."""
    if not _is_array(arr, types.uint8) or not all(isinstance(v, types.Integer) for v in (index, count)):
        return None
    if not all(c == int32x16 for c in (c0, c1, c2, c3)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        word = args[2]
        for shift, code in zip((8, 16, 24), args[3:6], strict=True):
            word = builder.or_(word, builder.shl(code, ir.Constant(_VI32, [shift] * LANES)))
        ptr = builder.bitcast(
            _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]), _VI32.as_pointer()
        )
        mask = _first_lanes(builder, context.cast(builder, args[6], sig.args[6], types.uint64))
        fnty = ir.FunctionType(ir.VoidType(), [_VI32, ptr.type, _I32, mask.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16i32.p0")
        builder.call(fn, [word, ptr, ir.Constant(_I32, 1), mask])
        return context.get_dummy_value()

    return types.none(arr, index, c0, c1, c2, c3, count), codegen


vstore_quads: Any = intrinsic(_vstore_quads)
