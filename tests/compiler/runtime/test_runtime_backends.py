"""A profile whose backend this installation lacks is a clear build error, not an ImportError."""

from __future__ import annotations

import pytest

from farm.compiler import build
from farm.compiler.kernels.registry import BackendUnavailableError, load_backend
from farm.zoo import build_model


def test_missing_backend_names_itself_and_the_available_ones() -> None:
    with pytest.raises(BackendUnavailableError, match=r"'cuda' backend is not part of .*available: cpu"):
        load_backend("cuda")


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        load_backend("tpu")


def test_building_for_a_gpu_profile_without_the_cuda_backend_fails_clearly() -> None:
    with pytest.raises(BackendUnavailableError, match="cuda"):
        build(build_model("mlp"), profile="nvidia-h200")
