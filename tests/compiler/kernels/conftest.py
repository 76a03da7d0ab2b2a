"""Fixtures of the CPU kernel tests (the harness itself is kernels_harness.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Fresh random inputs per test, seeded from the test id so that a failure reproduces."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
