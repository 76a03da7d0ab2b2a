"""Element types of IR values, named like numpy dtypes, with ONNX and numpy conversions."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

# Our canonical names. bfloat16 and the float8 types have no numpy dtype of their own;
# ml_dtypes (a dependency of onnx) provides them.
ONNX_TO_NAME: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16",
    TensorProto.INT32: "int32",
    TensorProto.UINT32: "uint32",
    TensorProto.INT64: "int64",
    TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool",
    TensorProto.STRING: "string",
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
        raise ValueError(f"unsupported ONNX element type {TensorProto.DataType.Name(elem_type)}") from None


def to_onnx(name: str) -> int:
    """The ONNX TensorProto element type for our dtype name."""
    return NAME_TO_ONNX[name]
