"""The device fingerprint: what an engine was tuned for, and what must match to run it.

An engine's tactics were chosen by timing on one kind of machine and its kernels may rely on ISA
features (AVX2, FMA, ...); running it on another is refused unless explicitly allowed.
"""

from __future__ import annotations

import hashlib
import json
import platform
from functools import lru_cache
from typing import Any

import numpy as np

from farm.compiler import __version__ as COMPILER_VERSION

# ISA features that change which kernels run well (or at all).
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "bf16",
)  # fmt: skip

# Fields that must be equal for an engine to load without the override.
MATCH_FIELDS = (
    "backend",
    "cpu_model",
    "isa",
    "cores",
    "numpy",
    "numba",
    "blas",
    "threading_layer",
    "compiler",
)


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("", platform.machine()):
                    model = value.strip() or model
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, sorted(f for f in ISA_FLAGS if f in flags)


@lru_cache(maxsize=4)
def device_fingerprint(backend: str = "cpu") -> dict[str, Any]:
    """The fingerprint of this machine for ``backend``: CPU model, ISA flags, cores, library
    versions (numpy, numba, BLAS), the numba threading layer and the compiler version."""
    from farm.compiler.kernels.threads import available_cores, threading_info

    model, flags = _cpu_model_and_flags()
    threads = threading_info()
    blas = ", ".join(f"{b['library']} {b['version']}" for b in threads["blas"])
    return {
        "backend": backend,
        "cpu_model": model,
        "machine": platform.machine(),
        "isa": flags,
        "cores": available_cores(),
        "numpy": np.__version__,
        "numba": threads["numba_version"],
        "blas": blas,
        "threading_layer": threads["numba_threading_layer"],
        "compiler": COMPILER_VERSION,
        "python": platform.python_version(),
    }


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of the fields that must match (the timing-cache key part)."""
    core = {k: fingerprint.get(k) for k in MATCH_FIELDS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences in the fields that must match (empty when compatible)."""
    return [
        f"{k}: engine has {expected.get(k)!r}, this device has {actual.get(k)!r}"
        for k in MATCH_FIELDS
        if expected.get(k) != actual.get(k)
    ]
