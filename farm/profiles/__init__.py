"""Hardware profiles (data files in ``data/``) and detection of the local host.

A profile names a build target (``cpu``, ``nvidia-h200``, …): the compiler backend that serves it,
a rule that says which hardware matches it, and its capabilities. A worker detects its host, serves
the queue ``profile.<name>`` of every profile its hardware matches, and stores the host's
fingerprint with every result.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from farm import __version__ as farm_version


class UnknownProfileError(ValueError):
    """A profile name that has no data file."""


@dataclass(frozen=True)
class Profile:
    """A build target: its backend, which hardware matches it, and its capabilities."""

    name: str
    description: str
    backend: str  # "cpu" or "cuda"
    match: dict[str, Any]
    precisions: tuple[str, ...]  # precisions with fast hardware support
    tensor_cores: bool
    memory_gb: float | None

    @property
    def queue(self) -> str:
        """The Celery queue of this profile."""
        return f"profile.{self.name}"

    def matches(self, host: HostInfo) -> bool:
        """True when ``host`` has hardware this profile describes (see the ``match`` rule)."""
        if self.backend == "cpu":
            required = set(self.match.get("cpu_features", []))
            return host.architecture in self.match.get("architectures", []) and required <= set(
                host.cpu_flags
            )
        return any(self._matches_gpu(gpu) for gpu in host.gpus)

    def _matches_gpu(self, gpu: GpuInfo) -> bool:
        name = gpu.name.upper()
        if not any(part.upper() in name for part in self.match.get("device_name_contains", [])):
            return False
        if any(part.upper() in name for part in self.match.get("device_name_excludes", [])):
            return False
        wanted = self.match.get("compute_capability")
        return wanted is None or gpu.compute_capability == wanted

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready data."""
        data = asdict(self)
        data["precisions"] = list(self.precisions)
        data["queue"] = self.queue
        return data


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as CuPy reports it."""

    index: int
    name: str
    compute_capability: str
    memory_bytes: int


@dataclass(frozen=True)
class HostInfo:
    """What this host is: CPU model, ISA features, cores, memory and GPUs."""

    hostname: str
    architecture: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    cpu_count: int
    memory_bytes: int | None
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)
    cuda_runtime: str | None = None
    cuda_driver: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The facts stored with every result so numbers from different hosts are never mixed up."""
        interesting = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "neon")
        return {
            "hostname": self.hostname,
            "architecture": self.architecture,
            "cpu_model": self.cpu_model,
            "cpu_count": self.cpu_count,
            "cpu_features": sorted(flag for flag in self.cpu_flags if flag in interesting),
            "memory_bytes": self.memory_bytes,
            "gpus": [asdict(gpu) for gpu in self.gpus],
            "cuda_runtime": self.cuda_runtime,
            "cuda_driver": self.cuda_driver,
            "python": platform.python_version(),
            "farm_version": farm_version,
            "compiler_version": _compiler_version(),
            "libraries": library_versions(),
        }


@lru_cache(maxsize=1)
def all_profiles() -> dict[str, Profile]:
    """Every profile shipped in ``farm/profiles/data``, by name."""
    profiles = {}
    for entry in resources.files("farm.profiles").joinpath("data").iterdir():
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        profile = Profile(
            name=data["name"],
            description=data["description"],
            backend=data["backend"],
            match=data["match"],
            precisions=tuple(data["precisions"]),
            tensor_cores=bool(data["tensor_cores"]),
            memory_gb=data["memory_gb"],
        )
        if entry.name != f"{profile.name}.json":
            raise ValueError(f"profile file {entry.name} declares name {profile.name!r}")
        profiles[profile.name] = profile
    return dict(sorted(profiles.items()))


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`UnknownProfileError` lists the known ones otherwise."""
    profiles = all_profiles()
    try:
        return profiles[name]
    except KeyError:
        raise UnknownProfileError(
            f"unknown profile {name!r}; known profiles: {', '.join(profiles)}"
        ) from None


def detect_host() -> HostInfo:
    """Describe this host from ``/proc/cpuinfo``, ``/proc/meminfo`` and, when importable, CuPy."""
    cpu_model, flags = _read_cpuinfo()
    gpus, cuda_runtime, cuda_driver = _detect_gpus()
    return HostInfo(
        hostname=socket.gethostname(),
        architecture=platform.machine().lower(),
        cpu_model=cpu_model or platform.processor() or "unknown",
        cpu_flags=tuple(sorted(flags)),
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        memory_bytes=meminfo_bytes(),
        gpus=tuple(gpus),
        cuda_runtime=cuda_runtime,
        cuda_driver=cuda_driver,
    )


def matching_profiles(host: HostInfo | None = None) -> list[Profile]:
    """The profiles this host can serve, GPU profiles first (they are the reason a GPU host exists)."""
    host = host or detect_host()
    found = [profile for profile in all_profiles().values() if profile.matches(host)]
    return sorted(found, key=lambda profile: (profile.backend == "cpu", profile.name))


def _read_cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def meminfo_bytes(field: str = "MemTotal") -> int | None:
    """A ``/proc/meminfo`` field (``MemTotal``, ``MemAvailable``) in bytes; ``None`` where unreadable."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _detect_gpus() -> tuple[list[GpuInfo], str | None, str | None]:
    """CUDA devices from CuPy's device properties, the CUDA runtime and the driver's CUDA version."""
    try:
        import cupy  # noqa: PLC0415 - optional, only on GPU hosts
    except Exception:  # ImportError, or a CuPy wheel that cannot find its CUDA libraries
        return [], None, None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        gpus = []
        for index in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            gpus.append(
                GpuInfo(
                    index=index,
                    name=name,
                    compute_capability=f"{props['major']}.{props['minor']}",
                    memory_bytes=int(props["totalGlobalMem"]),
                )
            )
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        driver = cupy.cuda.runtime.driverGetVersion()
        return gpus, _cuda_version(runtime), _cuda_version(driver)
    except Exception:  # no driver or no device: a CPU-only host
        return [], None, None


def _cuda_version(number: int) -> str:
    """CUDA's integer version (12040) as text (12.4)."""
    return f"{number // 1000}.{(number % 1000) // 10}"


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries whose behaviour shapes the numbers (None: not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ("numpy", "numba", "onnx", "onnxruntime", "cupy-cuda12x", "cupy-cuda13x", "cupy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {k: v for k, v in versions.items() if v is not None or not k.startswith("cupy")}


def _compiler_version() -> str:
    from farm.compiler import __version__

    return __version__
