"""Element types of IR values, named like numpy dtypes, with ONNX and numpy conversions."""

from __future__ import annotations

import numpy as np

# Our canonical names, keyed by ONNX TensorProto.DataType (the enum values are fixed by onnx.proto;
# written as numbers so that the runtime's import of the IR does not import onnx).
# bfloat16 and the float8 types have no numpy dtype of their own; ml_dtypes (a dependency of onnx)
# provides them.
ONNX_TO_NAME: dict[int, str] = {
    1: "float32",  # TensorProto.FLOAT
    11: "float64",  # TensorProto.DOUBLE
    10: "float16",  # TensorProto.FLOAT16
    16: "bfloat16",  # TensorProto.BFLOAT16
    3: "int8",  # TensorProto.INT8
    2: "uint8",  # TensorProto.UINT8
    5: "int16",  # TensorProto.INT16
    4: "uint16",  # TensorProto.UINT16
    6: "int32",  # TensorProto.INT32
    12: "uint32",  # TensorProto.UINT32
    7: "int64",  # TensorProto.INT64
    13: "uint64",  # TensorProto.UINT64
    9: "bool",  # TensorProto.BOOL
    8: "string",  # TensorProto.STRING
}
NAME_TO_ONNX: dict[str, int] = {v: k for k, v in ONNX_TO_NAME.items()}

FLOAT_TYPES = frozenset({"float32", "float64", "float16", "bfloat16"})
INT_TYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for one of our dtype names."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name == "string":
        return np.dtype(object)
    return np.dtype(name)


def dtype_name(dtype: np.dtype | type | str) -> str:
    """Our dtype name for a numpy dtype (or anything numpy accepts as one)."""
    dt = np.dtype(dtype)
    if dt.name == "bfloat16":
        return "bfloat16"
    if dt.kind in ("O", "U", "S"):
        return "string"
    name = dt.name
    if name not in NAME_TO_ONNX:
        raise ValueError(f"unsupported numpy dtype {dt}")
    return name


def from_onnx(elem_type: int) -> str:
    """Our dtype name for an ONNX TensorProto element type."""
    try:
        return ONNX_TO_NAME[elem_type]
    except KeyError:
        from onnx import TensorProto

        raise ValueError(f"unsupported ONNX element type {TensorProto.DataType.Name(elem_type)}") from None


def to_onnx(name: str) -> int:
    """The ONNX TensorProto element type for our dtype name."""
    return NAME_TO_ONNX[name]
