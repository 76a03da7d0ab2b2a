"""The timing cache: what the autotuner measured, keyed by where and what it measured.

A key is the sha256 of (device fingerprint id, compiler version, op signature, input shapes and
dtypes, tactic name). Storage is an interface (:class:`TimingCache`); the compiler ships an
in-memory and a JSON-file implementation, and the farm plugs in a database-backed one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from farm.compiler.ir import Graph, Node


@dataclass
class TimingRecord:
    """One measured tactic on one op signature: its median time, or why it was rejected."""

    tactic: str
    median_ms: float | None
    valid: bool
    runs: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> TimingRecord:
        return TimingRecord(**data)


@runtime_checkable
class TimingCache(Protocol):
    """Storage for timing records. ``get`` returns None on a miss; ``flush`` persists puts."""

    def get(self, key: str) -> TimingRecord | None: ...

    def put(self, key: str, record: TimingRecord) -> None: ...

    def flush(self) -> None: ...


class MemoryTimingCache:
    """A timing cache that lives only as long as the process."""

    def __init__(self) -> None:
        self.records: dict[str, TimingRecord] = {}

    def get(self, key: str) -> TimingRecord | None:
        """The record for ``key``, or None."""
        return self.records.get(key)

    def put(self, key: str, record: TimingRecord) -> None:
        """Store a record."""
        self.records[key] = record

    def flush(self) -> None:
        """Nothing to persist."""

    def __len__(self) -> int:
        return len(self.records)


class JsonTimingCache(MemoryTimingCache):
    """A timing cache in one JSON file. ``flush`` merges with what is on disk and replaces the
    file atomically, so two builds sharing a cache file lose nothing but a race's last writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock = threading.Lock()
        self._dirty: dict[str, TimingRecord] = {}
        self.records.update(self._read())

    def _read(self) -> dict[str, TimingRecord]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: TimingRecord.from_json(v) for k, v in data.get("records", {}).items()}
        except (ValueError, TypeError) as exc:
            raise ValueError(f"timing cache {self.path} is not a valid timing-cache file: {exc}") from exc

    def put(self, key: str, record: TimingRecord) -> None:
        """Store a record (written by the next ``flush``)."""
        with self._lock:
            self.records[key] = record
            self._dirty[key] = record

    def flush(self) -> None:
        """Merge new records into the file on disk."""
        with self._lock:
            if not self._dirty and self.path.exists():
                return
            merged = self._read()
            merged.update(self._dirty)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            payload = {"version": 1, "records": {k: v.to_json() for k, v in sorted(merged.items())}}
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
            self.records.update(merged)
            self._dirty.clear()


def _canonical_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"array": hashlib.sha256(value.tobytes()).hexdigest()[:16],
                "dtype": str(value.dtype), "shape": list(value.shape)}  # fmt: skip
    if isinstance(value, Graph):
        return {"graph": [(n.op_type, sorted(n.attrs)) for n in value.nodes]}
    if isinstance(value, list | tuple):
        return [_canonical_attr(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def op_signature(node: Node, graph: Graph) -> dict[str, Any]:
    """What a timing depends on about a node: op, attributes, precision, input/output shapes
    and dtypes, and which inputs are constant."""
    inputs: list[dict[str, Any] | None] = []
    for name in node.inputs:
        if not name:
            inputs.append(None)
            continue
        v = graph.values[name]
        inputs.append({"shape": list(v.shape or []), "dtype": v.dtype, "const": v.is_const})
    return {
        "op": f"{node.domain}::{node.op_type}" if node.domain else node.op_type,
        "attrs": {k: _canonical_attr(v) for k, v in sorted(node.attrs.items())},
        "precision": node.precision,
        "inputs": inputs,
        "outputs": [list(graph.values[o].shape or []) if o else None for o in node.outputs],
    }


def timing_key(fingerprint_id: str, compiler_version: str, signature: dict[str, Any], tactic: str) -> str:
    """The cache key for one tactic on one op signature on one device."""
    text = json.dumps([fingerprint_id, compiler_version, signature, tactic], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
