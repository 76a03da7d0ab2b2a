"""Structure-aware mutations of engine files, shared by the atheris harness and the pytest fuzz tests.

Byte-level mutation of an engine file almost always breaks its JSON header or its tensor sha256, so
the loader rejects it at the door. These mutations instead rewrite one value inside the JSON
manifest (a binding's shape, a schedule entry, the memory plan, ...) with a hostile value of another
type or size and re-encode a well-formed safetensors file around it, so the fuzzer reaches the code
that interprets the manifest.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

MANIFEST_KEY = "farm.engine"

HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 1, 2**63, -(2**63), 1e308, float("nan"), "", "x" * 1000, "../../etc/passwd",
    "%s%n{0}", "\x00", [], [None], [-1, -1], {}, {"": None}, [[[]]], "cpu.numpy.Relu", "float64",
)  # fmt: skip


def split_engine(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """The safetensors header (without metadata), the manifest, and the tensor bytes."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    manifest = json.loads(header.pop("__metadata__")[MANIFEST_KEY])
    return header, manifest, data[8 + length :]


def join_engine(header: dict[str, Any], manifest: Any, tensor_bytes: bytes) -> bytes:
    """A well-formed safetensors file with ``manifest`` (any JSON value) as the engine manifest."""
    full = dict(header)
    full["__metadata__"] = {MANIFEST_KEY: json.dumps(manifest)}
    encoded = json.dumps(full).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + tensor_bytes


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indices) to a value inside ``value``, including the root."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*prefix, index)))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


def _delete(value: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        copy = dict(value) if isinstance(value, dict) else list(value)
        del copy[path[0]]
        return copy
    head = path[0]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _delete(value[head], path[1:])
    return copy


def mutate_manifest(manifest: Any, rng: random.Random) -> tuple[Any, str]:
    """One structural mutation of ``manifest``: a value replaced or deleted; the result and what changed."""
    paths = _paths(manifest)
    path = rng.choice(paths)
    if path and rng.random() < 0.25:
        return _delete(manifest, path), f"deleted {list(path)}"
    new = rng.choice(HOSTILE_VALUES)
    return _replace(manifest, path, new), f"set {list(path)} = {new!r}"[:200]


def mutate_engine(data: bytes, rng: random.Random, rounds: int = 1) -> tuple[bytes, list[str]]:
    """``rounds`` structural mutations of the engine file ``data``; the new bytes and what changed."""
    header, manifest, tensor_bytes = split_engine(data)
    changes = []
    for _ in range(rounds):
        manifest, change = mutate_manifest(manifest, rng)
        changes.append(change)
    return join_engine(header, manifest, tensor_bytes), changes
