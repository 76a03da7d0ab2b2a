"""float32x16: a sixteen-lane float32 vector value (one AVX-512 register) for numba code.

numba runs LLVM without its SLP vectorizer and cannot keep an accumulator array in registers, so a
micro-kernel written as plain loops reloads and stores its partial sums every step. These
intrinsics emit LLVM vector IR directly (``<16 x float>``): a micro-kernel holding 24 of them as
local variables compiles to 24 ``zmm`` accumulators and one ``vfmadd231ps`` per vector product
(see ``_microgemm``). On a CPU without AVX-512 LLVM splits each value into two AVX registers:
still correct, but a 24-accumulator kernel then spills, so tactics built on these ask
:data:`AVX512` first. ``pointwise.float32x8`` is the eight-lane sibling.

All memory intrinsics index C-contiguous float32 arrays by flat element and are not bounds-checked.
"""

from __future__ import annotations

from typing import Any

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16

_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, LANES)


def _host_has_avx512() -> bool:
    try:
        features = binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read the host's features: assume the worst
        return False
    return bool(features.get("avx512f"))


AVX512: bool = _host_has_avx512()
"""True when this CPU runs 16-lane float32 vectors natively (LLVM's host features: ``avx512f``)."""


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
