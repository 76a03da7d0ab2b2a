"""TensorProto -> numpy, with every size checked before any memory is allocated.

External data (weights in side files) is read only from regular files inside the model's folder:
absolute paths, ``..`` components and symlinks that resolve outside the folder are rejected, as are
files shorter than the tensor they are said to hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from onnx import TensorProto, numpy_helper

from farm.compiler.frontend.errors import ModelError, UnsupportedModelError
from farm.compiler.ir.dtypes import ONNX_TO_NAME, numpy_dtype

MAX_DIM = 2**40
"""Largest single dimension accepted anywhere in a model."""
MAX_ELEMENTS = 2**34
"""Largest element count of one tensor (64 GiB of float32)."""

# Which typed field holds the data of each element type when raw_data is not used.
_TYPED_FIELD: dict[int, str] = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
    TensorProto.FLOAT16: "int32_data",
    TensorProto.BFLOAT16: "int32_data",
    TensorProto.INT8: "int32_data",
    TensorProto.UINT8: "int32_data",
    TensorProto.INT16: "int32_data",
    TensorProto.UINT16: "int32_data",
    TensorProto.INT32: "int32_data",
    TensorProto.BOOL: "int32_data",
}


def check_dims(dims: list[int] | tuple[int, ...], what: str) -> int:
    """Validate a list of dimensions and return the element count, or raise :class:`ModelError`."""
    count = 1
    for d in dims:
        d = int(d)
        if d < 0:
            raise ModelError(f"{what} has a negative dimension {d} in {list(dims)}")
        if d > MAX_DIM:
            raise ModelError(f"{what} has an impossibly large dimension {d}")
        count *= d
    if count > MAX_ELEMENTS:
        raise ModelError(f"{what} declares {count} elements, more than the {MAX_ELEMENTS} accepted")
    return count


def tensor_to_array(tensor: TensorProto, base_dir: Path | None, what: str | None = None) -> np.ndarray:
    """Convert a TensorProto to a numpy array, validating sizes and external-data paths.

    ``base_dir`` is the model's folder (None when the model came from bytes or a ModelProto, in
    which case external data is an error).
    """
    what = what or f"tensor {tensor.name!r}"
    if tensor.data_type not in ONNX_TO_NAME:
        type_name = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in TensorProto.DataType.values() else str(tensor.data_type)
        raise UnsupportedModelError(f"{what} has element type {type_name}, which the compiler does not support")
    count = check_dims(list(tensor.dims), what)
    dtype_name = ONNX_TO_NAME[tensor.data_type]
    if tensor.HasField("segment"):
        raise UnsupportedModelError(f"{what} is a segmented tensor, which is not supported")
    if tensor.data_location == TensorProto.EXTERNAL:
        if dtype_name == "string":
            raise ModelError(f"{what}: string tensors cannot live in external data")
        raw = read_external_data(tensor, base_dir, count * numpy_dtype(dtype_name).itemsize, what)
        copy = TensorProto()
        copy.CopyFrom(tensor)
        del copy.external_data[:]
        copy.data_location = TensorProto.DEFAULT
        copy.raw_data = raw
        tensor = copy
    elif tensor.HasField("raw_data") and dtype_name != "string":
        expected = count * numpy_dtype(dtype_name).itemsize
        if len(tensor.raw_data) != expected:
            raise ModelError(
                f"{what} declares shape {list(tensor.dims)} ({expected} bytes) but holds {len(tensor.raw_data)} bytes"
            )
    else:
        field = _TYPED_FIELD[tensor.data_type]
        held = len(getattr(tensor, field))
        if held != count:
            raise ModelError(f"{what} declares shape {list(tensor.dims)} ({count} elements) but holds {held}")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # a malformed proto can make onnx's converter fail in many ways
        raise ModelError(f"{what} cannot be decoded: {exc}") from None
    if dtype_name == "string":
        array = np.array([s.decode("utf-8", "replace") if isinstance(s, bytes) else s for s in array.ravel()],
                         dtype=object).reshape(array.shape)
    return array if array.flags.c_contiguous else array.copy(order="C")


def read_external_data(tensor: TensorProto, base_dir: Path | None, nbytes: int, what: str) -> bytes:
    """Read the bytes of an externally stored tensor from a regular file inside ``base_dir``."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise ModelError(
            f"{what} stores its data in external file {location!r}; load the model from its file path "
            "so the data can be found next to it"
        )
    if not location:
        raise ModelError(f"{what} uses external data but names no location")
    if "\x00" in location:
        raise ModelError(f"{what}: external data location {location!r} contains a NUL byte")
    pure = location.replace("\\", "/")
    if os.path.isabs(location) or pure.startswith("/") or (len(pure) > 1 and pure[1] == ":"):
        raise ModelError(f"{what}: external data location {location!r} is an absolute path; it must be relative to the model's folder")
    if any(part == ".." for part in pure.split("/")):
        raise ModelError(f"{what}: external data location {location!r} leaves the model's folder ('..')")
    root = base_dir.resolve()
    path = (root / pure).resolve()
    if root != path and root not in path.parents:
        raise ModelError(f"{what}: external data location {location!r} resolves outside the model's folder (symlink?)")
    if not path.is_file():
        raise ModelError(f"{what}: external data file {location!r} does not exist in the model's folder")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else nbytes
    except ValueError:
        raise ModelError(f"{what}: external data offset/length are not integers: {info}") from None
    if offset < 0 or length < 0:
        raise ModelError(f"{what}: negative external data offset/length: {info}")
    if length != nbytes:
        raise ModelError(f"{what} declares shape {list(tensor.dims)} ({nbytes} bytes) but its external data length is {length}")
    size = path.stat().st_size
    if offset + length > size:
        raise ModelError(
            f"{what}: external data file {location!r} has {size} bytes, too short for {length} bytes at offset {offset}"
        )
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise ModelError(f"{what}: could only read {len(data)} of {length} bytes from {location!r}")
    return data
