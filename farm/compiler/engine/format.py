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
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from farm.compiler import __version__ as COMPILER_VERSION
from farm.compiler.engine.fingerprint import device_fingerprint, fingerprint_mismatches
from farm.compiler.engine.runtime import Binding, Engine, Kernel
from farm.compiler.engine.serialize import EngineFormatError, contiguous, graph_from_json, graph_to_json
from farm.compiler.ir import subgraphs
from farm.compiler.kernels.registry import Prepared, get_tactic
from farm.compiler.memory.planner import MemoryPlan

FORMAT_NAME = "farm-engine"
FORMAT_VERSION = 1
MANIFEST_KEY = "farm.engine"


class DeviceMismatchError(RuntimeError):
    """The engine was built for a different device (see ``allow_device_mismatch``)."""


def _tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        array = contiguous(tensors[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


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
        "tensors_sha256": _tensor_digest(tensors),
    }
    for key, array in tensors.items():
        if array.dtype == object:
            raise EngineFormatError(f"tensor {key!r} has dtype object, which an engine file cannot hold")
    return safetensors.numpy.save(tensors, metadata={MANIFEST_KEY: json.dumps(manifest)})


def write_engine(engine: Engine, path: str | os.PathLike[str]) -> None:
    """Write ``engine`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(engine_to_bytes(engine))
    os.replace(tmp, path)


def read_manifest(data: bytes) -> dict[str, Any]:
    """Parse the manifest from an engine file's bytes without loading the tensors."""
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
    return manifest


def engine_from_bytes(data: bytes, *, allow_device_mismatch: bool = False) -> Engine:
    """Deserialize an engine; checks format, integrity and the device fingerprint.

    A manifest whose values have the wrong types or refer to things that do not exist (the tensor
    sha256 does not cover it) is an :class:`EngineFormatError`, never an internal exception.
    """
    manifest = read_manifest(data)
    try:
        return _engine_from_manifest(data, manifest, allow_device_mismatch)
    except (EngineFormatError, DeviceMismatchError):
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise EngineFormatError(f"engine manifest is malformed: {type(exc).__name__}: {exc}") from exc


def _engine_from_manifest(data: bytes, manifest: dict[str, Any], allow_device_mismatch: bool) -> Engine:
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own error types for bad bytes
        raise EngineFormatError(f"engine file is corrupted or truncated: {exc}") from exc
    if _tensor_digest(tensors) != manifest.get("tensors_sha256"):
        raise EngineFormatError("engine file is corrupted: its tensors do not match the recorded sha256")
    backend = manifest["fingerprint"].get("backend", "cpu")
    here = device_fingerprint(backend)
    mismatches = fingerprint_mismatches(manifest["fingerprint"], here)
    if mismatches and not allow_device_mismatch:
        raise DeviceMismatchError(
            "engine was built for a different device; rebuild it here or pass allow_device_mismatch=True "
            "(--allow-device-mismatch) to run it anyway: " + "; ".join(mismatches)
        )
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
            kernels.append(
                Kernel(
                    nodes[entry["node"]], get_tactic(entry["tactic"]), prepared, entry.get("timings_ms", {})
                )
            )
        plan = MemoryPlan.from_json(manifest["memory_plan"])
        inputs = [Binding.from_json(b) for b in manifest["inputs"]]
        outputs = [Binding.from_json(b) for b in manifest["outputs"]]
    except KeyError as exc:
        raise EngineFormatError(f"engine manifest is incomplete or names an unknown tactic: {exc}") from exc
    return Engine(
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


def read_engine(path: str | os.PathLike[str], *, allow_device_mismatch: bool = False) -> Engine:
    """Load an engine file from ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EngineFormatError(f"cannot read engine file {path}: {exc.strerror}") from exc
    return engine_from_bytes(data, allow_device_mismatch=allow_device_mismatch)
