"""The transcendental activations on 16-lane vectors (``_epilogue._transcendental16``): the
same values whether a kernel applies them in its tile stores (``finish16``) or over a finished
row (``activate_row``), against float64 numpy over a wide range of inputs, at every row length
around the vector width, with the special values (+-inf, NaN, saturation) handled as numpy does.
The piecewise-linear ones over a row (Relu, LeakyRelu, Clip, HardSigmoid, HardSwish) against numpy,
and without the masked stores LLVM makes of an in-place clamp on AVX2 hosts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernels_harness import MASKED_STORE, activation_oracle, machine_code
from numba import njit

from farm.compiler.ir import ACTIVATIONS
from farm.compiler.kernels.cpu import _simd16
from farm.compiler.kernels.cpu._epilogue import (
    ACT_CLIP,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_LEAKY,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_SILU,
    ACT_TANH,
    RES_NONE,
    VECTOR_ACTS,
    activate_row,
    finish16,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._simd16 import LANES, vload16_masked

_ERF = np.vectorize(math.erf)

ORACLES = {
    ACT_SIGMOID: lambda x: 1.0 / (1.0 + np.exp(-x)),
    ACT_TANH: np.tanh,
    ACT_SILU: lambda x: x / (1.0 + np.exp(-x)),
    ACT_GELU: lambda x: 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0))),
    ACT_GELU_TANH: lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
}


@njit(error_model="numpy", cache=False)
def _in_stores(x, out, act):
    ep = vector_epilogue(RES_NONE, act, 0.0, 0.0)
    n = x.shape[0]
    for q in range(0, n, LANES):
        finish16(vload16_masked(x, q, n - q), out, q, n - q, x, ep)


def _atol(act: int) -> float:
    """erf's absolute error (< 1e-7) times 0.5 |x| where GELU cancels to ~0 (x near -5)."""
    return 1e-6 if act == ACT_GELU else 2e-7


def _oracle(act: int, x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(ORACLES[act](x.astype(np.float64)))


@pytest.mark.parametrize("act", sorted(ORACLES))
def test_vector_activations_match_numpy_in_stores_and_rows(rng: np.random.Generator, act: int) -> None:
    assert act in VECTOR_ACTS
    x = np.concatenate([rng.standard_normal(997) * 3, rng.uniform(-90, 90, 200)]).astype(np.float32)
    want = _oracle(act, x)
    stored = np.full_like(x, np.nan)
    _in_stores(x, stored, act)
    row = x.copy()
    activate_row(row, act, 0.0, 0.0)
    np.testing.assert_allclose(stored, want, rtol=2e-6, atol=_atol(act))
    np.testing.assert_allclose(row, want, rtol=2e-6, atol=_atol(act))
    np.testing.assert_array_equal(stored, row)  # one definition for both paths


@pytest.mark.parametrize("n", [1, 15, 16, 17, 33])
@pytest.mark.parametrize("act", sorted(ORACLES))
def test_rows_of_any_length_stop_at_their_end(rng: np.random.Generator, act: int, n: int) -> None:
    buf = rng.standard_normal(n + 16).astype(np.float32)
    tail = buf[n:].copy()
    row = buf[:n]
    want = _oracle(act, row.copy())
    activate_row(row, act, 0.0, 0.0)
    np.testing.assert_allclose(row, want, rtol=2e-6, atol=_atol(act))
    np.testing.assert_array_equal(buf[n:], tail)  # nothing written past the row


@pytest.mark.parametrize("act", sorted(ORACLES))
def test_special_values(act: int) -> None:
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 200.0, -200.0, 1e-30], np.float32)
    row = x.copy()
    activate_row(row, act, 0.0, 0.0)
    want = _oracle(act, x)
    assert np.isnan(row[2])
    finite = np.isfinite(want)
    np.testing.assert_allclose(row[finite], want[finite], rtol=2e-6, atol=1e-30)
    if act in (ACT_SIGMOID, ACT_TANH):  # saturate exactly
        assert row[0] == 1.0 and row[5] == 1.0
        assert row[6] == (0.0 if act == ACT_SIGMOID else -1.0)


# (activation, alpha, beta), checked against the kernel harness's activation_oracle
PIECEWISE = [
    (ACT_RELU, 0.0, 0.0),
    (ACT_LEAKY, 0.1, 0.0),
    (ACT_LEAKY, 1.5, 0.0),
    (ACT_CLIP, -0.5, 6.0),
    (ACT_HARDSIGMOID, 0.2, 0.5),
    (ACT_HARDSWISH, 0.0, 0.0),
]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
@pytest.mark.parametrize("case", PIECEWISE, ids=lambda c: f"act{c[0]}-{c[1]}-{c[2]}")
def test_piecewise_activations_over_rows_match_numpy(
    rng: np.random.Generator, case: tuple[int, float, float], n: int
) -> None:
    act, alpha, beta = case
    buf = (rng.standard_normal(n + 16) * 5).astype(np.float32)
    tail = buf[n:].copy()
    want = activation_oracle(ACTIVATIONS[act], buf[:n], alpha, beta)
    activate_row(buf[:n], act, alpha, beta)
    np.testing.assert_allclose(buf[:n], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(buf[n:], tail)  # nothing written past the row


def _every_activation(row, alpha, beta):
    for act in range(ACT_NONE, ACT_GELU_TANH + 1):
        activate_row(row, act, alpha, beta)


@pytest.mark.skipif(
    not _simd16.HALVES_MAX_MIN, reason="LLVM makes masked stores of selects on AVX hosts without AVX-512"
)
def test_activations_in_place_compile_to_plain_stores(rng: np.random.Generator) -> None:
    """``row[i] = max(row[i], 0)`` compiled to ``vmaskmovps`` stores on the AVX2 EPYC (4x the
    time of the loop written on vectors); no activation of ``activate_row`` may do that."""
    row = rng.standard_normal(100).astype(np.float32)
    asm = machine_code(_every_activation, row, np.float32(0.1), np.float32(6.0))
    assert "activate_row" in asm  # the callee is linked into the caller's code
    assert not MASKED_STORE.findall(asm)
