"""Which versions of an op the frontend runs natively, above the opset its canonical forms follow.

The canonical forms (:mod:`farm.compiler.frontend.canonical`) follow the ops up to opset
:data:`MAX_OPSET` (21). A model of a newer opset, up to the newest the installed onnx knows, is
read with the same forms when every op version it uses is one of these:

* introduced at opset 21 or earlier (unchanged since), or
* listed in :data:`REVIEWED_NEWER`: a later version whose meaning, for the element types the
  compiler supports, is the opset-21 one. Most widened their type lists only (bfloat16 at 22,
  float4 at 23, float8e8m0 at 24, int2 at 25, float6 at 28); a few added an attribute that the
  canonical forms handle (Cast-24 ``round_mode``, which only concerns float8e8m0; QuantizeLinear-23
  ``precision``; DequantizeLinear-23 ``output_dtype``; Range-27 ``stash_type``; SpaceToDepth-28
  ``mode``), or an op new since 21 that the reference implements itself (TensorScatter-24,
  BitCast-26, CumProd-26).

Any other op version is expanded into its ONNX function body when the schema has one
(:mod:`farm.compiler.frontend.functions`: Attention-23/24/25, RMSNormalization-23,
RotaryEmbedding-23, Swish-24, SwiGLU-28, ...) and is otherwise reported as unsupported. A test
lists every op version of the installed onnx above 21 and fails on one that is in none of these
groups, so a new onnx release is reviewed, not silently trusted.
"""

from __future__ import annotations

from typing import Any

import onnx

MAX_OPSET = 21  # the canonical forms follow the ops up to this opset
NEWEST_OPSET = int(onnx.defs.onnx_opset_version())  # the newest opset the installed onnx defines

# The IR uses these names for its own fused ops (farm/compiler/ir/fused.py), with other meanings:
# an ONNX node of this type is always expanded into its function body.
IR_NAME_CLASHES = frozenset({"Attention"})

_TYPES_22 = (
    "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "Conv", "ConvTranspose", "Cos",
    "Cosh", "DeformConv", "Det", "Dropout", "Elu", "EyeLike", "GRU", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "GridSample", "HardSigmoid", "HardSwish", "InstanceNormalization",
    "LSTM", "LpNormalization", "LpPool", "MaxPool", "MaxRoiPool", "MaxUnpool", "Mish",
    "NegativeLogLikelihoodLoss", "RNN", "RoiAlign", "Round", "Selu", "Sin", "Sinh", "Softplus",
    "Softsign", "Tan", "ThresholdedRelu",
)  # fmt: skip
_TYPES_23_25 = (
    "Cast", "CastLike", "Constant", "ConstantOfShape", "DequantizeLinear", "Flatten", "Identity", "If",
    "Loop", "Pad", "QuantizeLinear", "Reshape", "Scan", "Shape", "Size", "Squeeze", "Transpose",
    "Unsqueeze",
)  # fmt: skip
_TYPES_28 = (
    "BitShift", "Cast", "Celu", "Compress", "DepthToSpace", "DequantizeLinear", "Einsum", "Mod",
    "OneHot", "QuantizeLinear", "ReduceLogSum", "ReduceLogSumExp", "ReverseSequence", "SpaceToDepth",
    "Unique",
)  # fmt: skip

REVIEWED_NEWER: frozenset[tuple[str, int]] = frozenset(
    [(op, 22) for op in _TYPES_22]
    + [(op, v) for v in (23, 24, 25) for op in _TYPES_23_25]
    + [("TopK", 24), ("SplitToSequence", 24), ("Range", 27)]
    + [(op, 28) for op in _TYPES_28]
    # ops new after opset 21 that the reference implements to their own specification
    + [("TensorScatter", 24), ("BitCast", 26), ("CumProd", 26)]
)


def schema(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    """The default-domain schema of ``op_type`` in force at ``opset``, or None."""
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def runs_natively(op_type: str, opset: int, supported: frozenset[str]) -> bool:
    """Whether the frontend reads this op at this opset with its own canonical form."""
    if op_type not in supported or op_type in IR_NAME_CLASHES and opset >= 23:
        return False
    found = schema(op_type, opset)
    if found is None:  # no ONNX schema at this opset: the loader reports it as undefined
        return True
    return found.since_version <= MAX_OPSET or (op_type, found.since_version) in REVIEWED_NEWER


def function_versions(op_type: str, opset: int) -> tuple[int | None, int | None]:
    """The newest plain and context-dependent function-body versions of the op at ``opset``."""
    found: Any = schema(op_type, opset)  # onnx's type stubs lack the function accessors
    if found is None:
        return None, None
    plain = [int(v) for v in found.function_opset_versions if v <= opset]
    context = [int(v) for v in found.context_dependent_function_opset_versions if v <= opset]
    return (max(plain) if plain else None), (max(context) if context else None)


def has_function(op_type: str, opset: int) -> bool:
    """Whether ONNX defines the op at this opset as a function (plain or context-dependent)."""
    return function_versions(op_type, opset) != (None, None)
