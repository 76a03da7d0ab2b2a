"""Datasets: ``.npz`` files of validation / calibration inputs (and optional labels).

An array is named after the model input it feeds (``input`` or ``input:input``); its first axis
counts samples. Optional ``labels`` hold the class index per sample, ``output:<name>`` expected
outputs. The file is read with ``allow_pickle=False`` (a pickled array is refused, never
unpickled), its uncompressed size is bounded before anything is read, and every array must be
non-empty and finite. When a model is named, the arrays are checked against its inputs: every input
present, same rank, the model's fixed dimensions matched, a compatible dtype.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.api.errors import ApiError
from farm.api.uploads import spool_upload
from farm.app import FarmServices
from farm.db import Dataset, Model, ModelVersion
from farm.storage import FileArtifactStore

LABELS = "labels"
MAX_ARRAYS = 256


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype name and shape (ints for fixed dimensions, strings for symbols)."""

    name: str
    dtype: str
    shape: list[int | str]


def read_npz(path: Path, *, limit: int) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, checked as the module docstring says; ApiError(400/413) otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            total = sum(info.file_size for info in members)
    except (zipfile.BadZipFile, OSError):
        raise ApiError(400, "not an .npz file (a zip archive of .npy arrays)", field="file") from None
    if total > limit:
        raise ApiError(
            413,
            f"the dataset unpacks to {total} bytes, more than the limit of {limit} bytes",
            limit_bytes=limit,
        )
    if len(members) > MAX_ARRAYS:
        raise ApiError(400, f"the dataset has {len(members)} arrays; the limit is {MAX_ARRAYS}", field="file")
    _check_array_headers(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                arrays[name] = npz[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ApiError(
                400,
                "the dataset holds pickled (object) arrays, which are refused; save plain numeric arrays",
                field="file",
            ) from None
        raise ApiError(400, f"cannot read the .npz: {exc}", field="file") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ApiError(400, f"cannot read the .npz: {exc}", field="file") from None
    if not arrays:
        raise ApiError(400, "the dataset holds no arrays", field="file")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ApiError(
                400, f"array {name!r} has dtype {array.dtype}; only numbers are accepted", field=name
            )
        if array.size == 0:
            raise ApiError(400, f"array {name!r} is empty (shape {list(array.shape)})", field=name)
        if array.ndim == 0:
            raise ApiError(400, f"array {name!r} is a scalar; its first axis must count samples", field=name)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise ApiError(400, f"array {name!r} has {bad} NaN or infinite values", field=name)
    return arrays


def _check_array_headers(path: Path) -> None:
    """Refuse, from the .npy headers alone, arrays whose declared size does not match their data.

    ``np.load`` allocates the declared shape before reading: a header claiming a terabyte over a few
    bytes of data must be refused before it gets there.
    """
    from numpy.lib import format as npy

    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            try:
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = npy.read_array_header_2_0(member)
                    header_bytes = member.tell() if member.seekable() else None
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
                raise ApiError(400, f"array {name!r} is not a valid .npy array: {exc}", field=name) from None
            if dtype.hasobject:
                raise ApiError(
                    400,
                    "the dataset holds pickled (object) arrays, which are refused; save plain numeric arrays",
                    field=name,
                )
            declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            available = info.file_size - (header_bytes or 0)
            if declared > available:
                raise ApiError(
                    400,
                    f"array {name!r} declares shape {list(shape)} ({declared} bytes) but holds {available}",
                    field=name,
                )


def model_inputs(services: FarmServices, version: ModelVersion) -> list[InputSpec]:
    """The inputs of a model version, from its facts or (not inspected yet) from the ONNX file."""
    facts = version.facts or {}
    if facts.get("inputs"):
        return [InputSpec(i["name"], i["dtype"], list(i["shape"])) for i in facts["inputs"]]
    model = onnx.load_from_string(services.store.read_bytes(version.artifact_key))
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape: list[int | str] = [
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim
        ]
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def check_against_inputs(arrays: Mapping[str, Any], inputs: list[InputSpec]) -> None:
    """ApiError(400) naming the array when ``arrays`` (name -> {shape, dtype}) cannot feed ``inputs``."""
    samples: set[int] = set()
    for spec in inputs:
        name = spec.name if spec.name in arrays else f"input:{spec.name}"
        if name not in arrays:
            raise ApiError(
                400,
                f"the dataset has no array for model input {spec.name!r} (it has {', '.join(sorted(arrays))})",
                field=spec.name,
            )
        shape, dtype = list(arrays[name]["shape"]), np.dtype(arrays[name]["dtype"])
        if len(shape) != len(spec.shape):
            raise ApiError(
                400,
                f"array {name!r} has shape {shape}, but input {spec.name!r} has rank {len(spec.shape)} {spec.shape}",
                field=name,
            )
        for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and want > 0 and got != want:
                raise ApiError(
                    400,
                    f"array {name!r} has shape {shape}, but input {spec.name!r} needs {spec.shape} "
                    f"(axis {axis} must be {want})",
                    field=name,
                )
        wanted = np.dtype(spec.dtype)
        if dtype != wanted and not (dtype.kind == wanted.kind or np.can_cast(dtype, wanted, "safe")):
            raise ApiError(
                400, f"array {name!r} has dtype {dtype}, input {spec.name!r} needs {wanted}", field=name
            )
        samples.add(shape[0])
    if LABELS in arrays:
        samples.add(list(arrays[LABELS]["shape"])[0])
    if len(samples) > 1:
        raise ApiError(400, f"the arrays count different numbers of samples: {sorted(samples)}", field="file")


def find_version(session: Session, model_name: str, wanted: str | int = "latest") -> ModelVersion:
    """A version of a model by number (``3`` or ``v3``), label, or ``latest``; ApiError(404) otherwise."""
    model = session.execute(select(Model).where(Model.name == model_name)).scalar_one_or_none()
    if model is None:
        raise ApiError(404, f"no model named {model_name!r}; upload it first", field="model")
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    text = str(wanted)
    if text == "latest":
        query = query.order_by(ModelVersion.number.desc())
    elif text.isdigit() or (text.startswith("v") and text[1:].isdigit()):
        number = int(text.lstrip("v"))
        if number > 2**31 - 1:
            raise ApiError(404, f"model {model_name!r} has no version {text!r}", field="version")
        query = query.where(ModelVersion.number == number)
    else:
        query = query.where(ModelVersion.label == text).order_by(ModelVersion.number.desc())
    version = session.execute(query.limit(1)).scalars().first()
    if version is None:
        raise ApiError(404, f"model {model_name!r} has no version {text!r}", field="version")
    return version


@dataclass(frozen=True)
class DatasetUpload:
    """What a dataset upload produced."""

    dataset_id: int
    created: bool


class UploadDatasetCommand:
    """Check an ``.npz`` upload (and, when a model is named, against its inputs), store it, record it."""

    def __init__(
        self, services: FarmServices, *, name: str, stream: IO[bytes], model: str | None, version: str | None
    ) -> None:
        self.services = services
        self.name = name
        self.stream = stream
        self.model = model
        self.version = version or "latest"

    def run(self) -> DatasetUpload:
        """Validate and store; ApiError 400/404/413 for anything wrong, with nothing stored."""
        store = self.services.store
        folder = store.root / "tmp" if isinstance(store, FileArtifactStore) else None
        limit = self.services.settings.max_upload_mb * 1024 * 1024
        path = spool_upload(self.stream, limit=limit, suffix=".npz", folder=folder, what="dataset")
        try:
            arrays = read_npz(path, limit=limit)
            described = {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()}
            model_id = None
            if self.model is not None:
                with self.services.db.session() as session:
                    version = find_version(session, self.model, self.version)
                    check_against_inputs(described, model_inputs(self.services, version))
                    model_id = version.model_id
            stored = store.put_file(path)
        finally:
            path.unlink(missing_ok=True)
        with self.services.db.session() as session:
            existing = (
                session.execute(
                    select(Dataset).where(
                        Dataset.sha256 == stored.sha256,
                        Dataset.name == self.name,
                        Dataset.model_id == model_id,
                    )
                )
                .scalars()
                .first()
            )
            if existing is not None:
                return DatasetUpload(existing.id, created=False)
            row = Dataset(
                name=self.name,
                model_id=model_id,
                sha256=stored.sha256,
                artifact_key=stored.key,
                size_bytes=stored.size_bytes,
                format="npz",
                arrays=described,
                has_labels=LABELS in arrays,
            )
            session.add(row)
            session.flush()
            return DatasetUpload(row.id, created=True)


def dataset_to_dict(dataset: Dataset, model_name: str | None) -> dict[str, Any]:
    """A dataset as the API shows it."""
    return {
        "id": dataset.id,
        "name": dataset.name,
        "model": model_name,
        "sha256": dataset.sha256,
        "size_bytes": dataset.size_bytes,
        "format": dataset.format,
        "arrays": dataset.arrays,
        "has_labels": dataset.has_labels,
        "created_at": dataset.created_at.isoformat() if dataset.created_at else None,
    }
