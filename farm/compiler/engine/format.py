"""The engine file: one safetensors file whose metadata holds the JSON manifest.

Layout (see docs/ENGINE_FORMAT.md)::

    [8-byte little-endian header length][safetensors JSON header][tensor bytes]

The header's ``__metadata__`` has one key, ``farm.engine``, whose value is the manifest (JSON):
format and compiler versions, profile and device fingerprint, precision, input/output bindings
with shape ranges, the IR graph (nodes, attributes, value dtypes and symbolic shapes), the
schedule (node, tactic, prepared params, tensor keys), the memory plan, the build report, and a
sha256 over every tensor so corruption is detected. No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from farm.compiler import __version__ as COMPILER_VERSION
from farm.compiler.engine.fingerprint import device_fingerprint, fingerprint_mismatches
from farm.compiler.engine.numba_support import preload_numba_support
from farm.compiler.engine.runtime import WEIGHT_ALIGNMENT, Binding, Engine, Kernel, aligned_bytes
from farm.compiler.engine.serialize import EngineFormatError, contiguous, graph_from_json, graph_to_json
from farm.compiler.engine.validate import check_engine, shapes_to_json
from farm.compiler.ir import subgraphs
from farm.compiler.kernels.registry import Prepared, get_tactic
from farm.compiler.memory.planner import MemoryPlan

FORMAT_NAME = "farm-engine"
FORMAT_VERSION = 1
MANIFEST_KEY = "farm.engine"

# safetensors dtype codes -> numpy (the ones safetensors.numpy reads; little-endian on disk).
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "U64": "<u8", "I32": "<i4", "U32": "<u4",
    "I16": "<i2", "U16": "<u2", "I8": "|i1", "U8": "|u1", "BOOL": "|b1", "C64": "<c8",
}  # fmt: skip
# Every tensor's bytes start at a multiple of this from the file's start (the header is padded
# with spaces and "__pad__/N" byte tensors fill the gaps, both valid safetensors), so the views of
# a memory-mapped file start on a cache line as the kernels want (``runtime.WEIGHT_ALIGNMENT``).
TENSOR_ALIGNMENT = WEIGHT_ALIGNMENT
PAD_PREFIX = "__pad__/"
# Tensor bytes from which the sha256 runs in a thread (hashlib releases the GIL) while the loader
# does its Python work (device fingerprint: importing numba, reading the BLAS libraries).
_THREADED_DIGEST_BYTES = 1 << 20
_MMAP_BYTES = 1 << 20  # files from this size up are memory-mapped by read_engine

# What the loader reads: an engine file's bytes, or a read-only mapping of the file.
Buffer = bytes | mmap.mmap


class DeviceMismatchError(RuntimeError):
    """The engine was built for a different device (see ``allow_device_mismatch``)."""


def _tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        array = contiguous(tensors[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)  # the raw bytes, without a copy
    return digest.hexdigest()


class _Digest:
    """:func:`_tensor_digest` of big tensor sets in a background thread; ``value()`` joins it."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self._result: str | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if sum(a.nbytes for a in tensors.values()) < _THREADED_DIGEST_BYTES:
            self._run(tensors)
        else:
            self._thread = threading.Thread(
                target=self._run, args=(tensors,), name="farm-engine-sha256", daemon=True
            )
            self._thread.start()

    def _run(self, tensors: dict[str, np.ndarray]) -> None:
        try:
            self._result = _tensor_digest(tensors)
        except BaseException as exc:  # re-raised by value() in the loading thread
            self._error = exc

    def value(self) -> str | None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _needed_constants(engine: Engine) -> set[str]:
    """Constants some kernel reads raw at run time (not replaced by a prepared tensor)."""
    graph = engine.graph
    needed = {o for o in graph.outputs if graph.values[o].const is not None}
    for k in engine.kernels:
        for i, name in enumerate(k.node.inputs):
            if name and i not in k.prepared.replaces:
                needed.add(name)
    consts = {k for k, v in graph.values.items() if v.const is not None}
    # Constants read inside control-flow bodies: keep them all (rare, and never big).
    if any(subgraphs(k.node) for k in engine.kernels):
        return consts
    return needed & consts


def engine_to_bytes(engine: Engine) -> bytes:
    """Serialize ``engine`` to the bytes of an engine file."""
    tensors: dict[str, np.ndarray] = {}
    graph_json = graph_to_json(engine.graph, tensors, keep_consts=_needed_constants(engine))
    schedule = []
    for k in engine.kernels:
        keys = {}
        for name, array in k.prepared.tensors.items():
            key = f"prep/{k.node.name}/{name}"
            tensors[key] = contiguous(array)
            keys[name] = key
        schedule.append(
            {
                "node": k.node.name,
                "tactic": k.tactic.name,
                "module": type(k.tactic).__module__,
                "params": k.prepared.params,
                "tensors": keys,
                "replaces": sorted(k.prepared.replaces),
                "timings_ms": k.timings_ms,
            }
        )
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "compiler_version": COMPILER_VERSION,
        "profile": engine.profile,
        "fingerprint": engine.fingerprint,
        "precision": engine.precision,
        "threads": {"blas": engine.threads, "numba": engine.numba_threads},
        "inputs": [b.to_json() for b in engine.inputs],
        "outputs": [b.to_json() for b in engine.outputs],
        "graph": graph_json,
        "schedule": schedule,
        "memory_plan": engine.plan.to_json(),
        "build_report": engine.report,
        "shapes": shapes_to_json(engine),
    }
    for key, array in tensors.items():
        if array.dtype == object:
            raise EngineFormatError(f"tensor {key!r} has dtype object, which an engine file cannot hold")
    manifest["tensors_sha256"] = _tensor_digest(tensors)
    return aligned_safetensors(tensors, {MANIFEST_KEY: json.dumps(manifest)})


_DTYPE_CODES = {np.dtype(v).newbyteorder("<"): k for k, v in SAFETENSORS_DTYPES.items()}


def aligned_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file of ``tensors`` (in name order) and ``metadata`` in which every tensor
    starts at a multiple of :data:`TENSOR_ALIGNMENT` bytes from the file's start: the JSON header
    is padded with spaces, and each gap before a tensor is a zero-filled ``__pad__/N`` U8 tensor
    (safetensors wants the tensors to tile the data section; the loader drops these)."""
    entries: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(tensors):
        array = np.asarray(tensors[key])
        code = _DTYPE_CODES.get(array.dtype.newbyteorder("<"))
        if code is None:
            raise EngineFormatError(
                f"tensor {key!r} has dtype {array.dtype}, which an engine file cannot hold"
            )
        pad = -offset % TENSOR_ALIGNMENT
        if pad:
            entries[f"{PAD_PREFIX}{len(entries)}"] = {
                "dtype": "U8",
                "shape": [pad],
                "data_offsets": [offset, offset + pad],
            }
            chunks.append(bytes(pad))
            offset += pad
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        entries[key] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % TENSOR_ALIGNMENT)
    return b"".join([struct.pack("<Q", len(encoded)), encoded, *chunks])


def write_engine(engine: Engine, path: str | os.PathLike[str]) -> None:
    """Write ``engine`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(engine_to_bytes(engine))
    os.replace(tmp, path)


def _split(data: Buffer) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(header length, safetensors header, manifest) of an engine file's bytes."""
    if len(data) < 8:
        raise EngineFormatError(f"not an engine file: only {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if data[8:9] != b"{":
        raise EngineFormatError("not an engine file: it does not start with a safetensors header")
    if header_len > len(data) - 8:
        raise EngineFormatError(
            f"engine file is truncated: header claims {header_len} bytes, the file has {len(data) - 8}"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
        manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineFormatError(f"not an engine file (no readable manifest): {exc!r}") from exc
    if not isinstance(manifest, dict):
        raise EngineFormatError(
            f"not an engine file: the manifest is a {type(manifest).__name__}, not an object"
        )
    if manifest.get("format") != FORMAT_NAME:
        raise EngineFormatError(f"not an engine file: format is {manifest.get('format')!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EngineFormatError(
            f"engine format version {manifest.get('format_version')} is not supported "
            f"(this compiler reads version {FORMAT_VERSION}); rebuild the engine"
        )
    return header_len, header, manifest


def read_manifest(data: Buffer) -> dict[str, Any]:
    """Parse the manifest from an engine file's bytes without loading the tensors."""
    return _split(data)[2]


def _tensor_views(
    data: Buffer | np.ndarray, header_len: int, header: dict[str, Any]
) -> dict[str, np.ndarray]:
    """The file's tensors as read-only numpy views of ``data`` (no copies), checked the way
    safetensors checks them: known dtypes, sizes that match the shapes, and byte ranges that tile
    the data section exactly."""
    start = 8 + header_len
    available = len(data) - start

    def bad(what: str) -> EngineFormatError:
        return EngineFormatError(f"engine file is corrupted or truncated: {what}")

    tensors: dict[str, np.ndarray] = {}
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        padding = key.startswith(PAD_PREFIX)
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise bad(f"tensor {key!r} has no valid header entry")
        code, shape, offsets = info.get("dtype"), info["shape"], info.get("data_offsets")
        if code not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {key!r} has unknown dtype {code!r}")
        if not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {key!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {key!r} has data offsets {offsets!r}")
        begin, end = offsets
        dtype = np.dtype(SAFETENSORS_DTYPES[code])
        count = math.prod(shape)
        if not 0 <= begin <= end or end - begin != count * dtype.itemsize:
            raise bad(f"tensor {key!r} of shape {shape} and dtype {code} has data offsets {offsets}")
        if end > available:
            raise EngineFormatError(
                f"engine file is truncated: tensor {key!r} ends at byte {end} of {available} data bytes"
            )
        spans.append((begin, end, key))
        if padding:
            continue
        if count == 0:
            array = np.empty(shape, dtype=dtype)
        else:
            array = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
            if not array.flags.aligned:  # kernels (numba) want aligned arrays: copy this one
                array = array.copy()
        array.flags.writeable = False  # like safetensors' arrays: the engine's weights are shared
        tensors[key] = array
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise bad(f"tensor {key!r} starts at byte {begin}, expected {position}")
        position = end
    if position != available:
        raise bad(f"the tensors cover {position} of {available} data bytes")
    return tensors


def engine_from_bytes(data: Buffer, *, allow_device_mismatch: bool = False) -> Engine:
    """Deserialize an engine; checks format, integrity, the device fingerprint and the manifest's
    consistency (schedule, memory plan, shapes).

    A manifest whose values have the wrong types or refer to things that do not exist (the tensor
    sha256 does not cover it) is an :class:`EngineFormatError`, never an internal exception.
    """
    if not isinstance(data, bytes | mmap.mmap):
        data = bytes(data)  # the tensors are views of it: it must not change under them
    header_len, header, manifest = _split(data)
    try:
        return _engine_from_manifest(_aligned(data), header_len, header, manifest, allow_device_mismatch)
    except (EngineFormatError, DeviceMismatchError):
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise EngineFormatError(f"engine manifest is malformed: {type(exc).__name__}: {exc}") from exc


def _aligned(data: Buffer) -> Buffer | np.ndarray:
    """``data`` itself when it starts on a :data:`TENSOR_ALIGNMENT` boundary (a mapping: a
    page), else one read-only copy that does (``bytes`` start wherever the allocator put them):
    the file's tensors are aligned relative to its start, and their views are then aligned too."""
    view = np.frombuffer(data, dtype=np.uint8)
    if view.ctypes.data % TENSOR_ALIGNMENT == 0:
        return data
    copy = aligned_bytes(len(view), TENSOR_ALIGNMENT)
    copy[:] = view
    copy.flags.writeable = False
    return copy


def _engine_from_manifest(
    data: Buffer | np.ndarray,
    header_len: int,
    header: dict[str, Any],
    manifest: dict[str, Any],
    allow_device_mismatch: bool,
) -> Engine:
    tensors = _tensor_views(data, header_len, header)
    # The sha256 runs in a thread (hashlib releases the GIL; with a mapped file the page faults
    # happen there too) while this thread checks the device and assembles the engine. A corrupted
    # file is still reported as such whatever else is wrong with it: the digest is checked first
    # on every way out.
    digest = _Digest(tensors)
    try:
        engine = _assemble(manifest, tensors, allow_device_mismatch)
    except BaseException:
        if digest.value() != manifest.get("tensors_sha256"):
            raise _corrupted() from None
        raise
    if digest.value() != manifest.get("tensors_sha256"):
        raise _corrupted()
    return engine


def _corrupted() -> EngineFormatError:
    return EngineFormatError("engine file is corrupted: its tensors do not match the recorded sha256")


def _assemble(
    manifest: dict[str, Any], tensors: dict[str, np.ndarray], allow_device_mismatch: bool
) -> Engine:
    backend = manifest["fingerprint"].get("backend", "cpu")
    mismatches = fingerprint_mismatches(manifest["fingerprint"], device_fingerprint(backend))
    if mismatches and not allow_device_mismatch:
        raise DeviceMismatchError(
            "engine was built for a different device; rebuild it here or pass allow_device_mismatch=True "
            "(--allow-device-mismatch) to run it anyway: " + "; ".join(mismatches)
        )
    preload_numba_support()
    graph = graph_from_json(manifest["graph"], tensors)
    nodes = {n.name: n for n in graph.nodes}
    kernels = []
    try:
        for entry in manifest["schedule"]:
            prepared = Prepared(
                tensors={name: tensors[key] for name, key in entry["tensors"].items()},
                params=entry["params"],
                replaces=frozenset(entry["replaces"]),
            )
            module = entry.get("module")  # absent in files written before it was recorded
            tactic = get_tactic(entry["tactic"], module if isinstance(module, str) else None)
            if not tactic.host_ok:
                raise DeviceMismatchError(
                    f"layer {entry['node']!r} runs tactic {tactic.name}, whose kernels use instructions this "
                    "CPU does not have (see the engine's fingerprint: isa); rebuild the engine on this machine"
                )
            kernels.append(Kernel(nodes[entry["node"]], tactic, prepared, entry.get("timings_ms", {})))
        plan = MemoryPlan.from_json(manifest["memory_plan"])
        inputs = [Binding.from_json(b) for b in manifest["inputs"]]
        outputs = [Binding.from_json(b) for b in manifest["outputs"]]
    except KeyError as exc:
        raise EngineFormatError(f"engine manifest is incomplete or names an unknown tactic: {exc}") from exc
    engine = Engine(
        graph=graph,
        kernels=kernels,
        plan=plan,
        inputs=inputs,
        outputs=outputs,
        fingerprint=manifest["fingerprint"],
        profile=manifest["profile"],
        precision=manifest["precision"],
        report=manifest["build_report"],
        threads=(manifest.get("threads") or {}).get("blas"),
        numba_threads=(manifest.get("threads") or {}).get("numba"),
    )
    engine.seed_shapes(check_engine(engine, manifest.get("shapes")))
    return engine


def read_engine(path: str | os.PathLike[str], *, allow_device_mismatch: bool = False) -> Engine:
    """Load an engine file from ``path``. Files from 1 MiB up are memory-mapped read-only (the
    tensors are views of the mapping: no copy, and the page cache is shared by every process
    that loads the same engine); smaller ones are read. Engine files are replaced atomically
    (:func:`write_engine`), never rewritten in place, which is what a mapping needs."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data: Buffer = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size >= _MMAP_BYTES else f.read()
            )
    except OSError as exc:
        raise EngineFormatError(f"cannot read engine file {path}: {exc.strerror}") from exc
    return engine_from_bytes(data, allow_device_mismatch=allow_device_mismatch)
