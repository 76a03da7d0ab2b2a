"""Hardware profiles: the data files load, and the match rules pick the right hardware."""

from __future__ import annotations

import pytest

from farm.profiles import (
    GpuInfo,
    HostInfo,
    UnknownProfileError,
    all_profiles,
    detect_host,
    get_profile,
    matching_profiles,
)


def host_with(*gpus: tuple[str, str], architecture: str = "x86_64") -> HostInfo:
    return HostInfo(
        hostname="test",
        architecture=architecture,
        cpu_model="Test CPU",
        cpu_flags=("sse4_2",),  # a plain x86-64 host: the avx2 profile is tested in test_pipeline_profiles
        cpu_count=8,
        memory_bytes=1 << 34,
        gpus=tuple(GpuInfo(i, name, cc, 80 << 30) for i, (name, cc) in enumerate(gpus)),
    )


def test_every_shipped_profile_loads() -> None:
    profiles = all_profiles()
    assert {
        "cpu",
        "nvidia-h200",
        "nvidia-h100",
        "nvidia-a100",
        "nvidia-l40s",
        "nvidia-l4",
        "nvidia-t4",
    } <= set(profiles)
    for profile in profiles.values():
        assert profile.backend in ("cpu", "cuda")
        assert "fp32" in profile.precisions
        assert profile.queue == f"profile.{profile.name}"


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (("NVIDIA H200", "9.0"), "nvidia-h200"),
        (("NVIDIA H100 80GB HBM3", "9.0"), "nvidia-h100"),
        (("NVIDIA A100-SXM4-80GB", "8.0"), "nvidia-a100"),
        (("NVIDIA L40S", "8.9"), "nvidia-l40s"),
        (("NVIDIA L4", "8.9"), "nvidia-l4"),
        (("Tesla T4", "7.5"), "nvidia-t4"),
    ],
)
def test_gpu_matches_exactly_its_profile(gpu: tuple[str, str], expected: str) -> None:
    names = [profile.name for profile in matching_profiles(host_with(gpu))]
    assert names == [expected, "cpu"]


def test_cpu_only_host_serves_cpu() -> None:
    assert [p.name for p in matching_profiles(host_with())] == ["cpu"]
    assert [p.name for p in matching_profiles(host_with(architecture="aarch64"))] == ["cpu"]


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(UnknownProfileError, match="nvidia-h200"):
        get_profile("nvidia-h300")


def test_this_host_is_detected() -> None:
    host = detect_host()
    assert host.cpu_count >= 1
    fingerprint = host.fingerprint()
    assert fingerprint["architecture"] == host.architecture
    assert set(fingerprint["cpu_features"]) <= set(host.cpu_flags)
    assert "cpu" in [profile.name for profile in matching_profiles(host)]
