"""Profiles the pipeline adds: cpu-avx2 matches by ISA; the host fingerprint names drivers and libraries."""

from __future__ import annotations

from farm.profiles import HostInfo, detect_host, get_profile, matching_profiles


def host(flags: tuple[str, ...], architecture: str = "x86_64") -> HostInfo:
    return HostInfo("h", architecture, "CPU", flags, 4, 1 << 30)


def test_cpu_avx2_needs_avx2_and_fma() -> None:
    assert [p.name for p in matching_profiles(host(("avx2", "fma", "sse4_2")))] == ["cpu", "cpu-avx2"]
    assert [p.name for p in matching_profiles(host(("avx2",)))] == ["cpu"]
    assert [p.name for p in matching_profiles(host(("neon",), "aarch64"))] == ["cpu"]
    assert get_profile("cpu-avx2").backend == "cpu"


def test_fingerprint_names_compiler_and_library_versions() -> None:
    fingerprint = detect_host().fingerprint()
    assert fingerprint["compiler_version"]
    assert fingerprint["libraries"]["numpy"] and fingerprint["libraries"]["onnxruntime"]
    assert "cuda_driver" in fingerprint
