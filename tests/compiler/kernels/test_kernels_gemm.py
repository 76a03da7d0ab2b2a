"""GEMM tactics (FusedGemm, MatMul) against float64 numpy matmul with fused.py's epilogue."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close, epilogue_oracle

from farm.compiler.kernels import get_tactic

CONST_WEIGHT_TACTICS = [
    "cpu.gemm.blas",
    "cpu.gemm.blas_1t",
    "cpu.gemm.blas_nt",
    "cpu.gemm.small_rows",
    "cpu.gemm.small_rows_1t",
]


def _fused_gemm(
    rng: np.random.Generator,
    a_shape: tuple[int, ...],
    n: int,
    *,
    trans_b: int = 0,
    activation: str = "Gelu",
    residual: str | None = "post",
    with_bias: bool = True,
) -> tuple[OneNode, np.ndarray]:
    k = a_shape[-1]
    a = rng.standard_normal(a_shape).astype(np.float32)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    z = a.astype(np.float64) @ (w.T if trans_b else w).astype(np.float64)
    if bias is not None:
        z = z + bias
    r = rng.standard_normal(z.shape).astype(np.float32) if residual else None
    attrs = {"transB": trans_b, "activation": activation, "alpha": 0.0, "beta": 0.0}
    if residual:
        attrs["residual"] = residual
    one = OneNode("FusedGemm", attrs).feed("a", a).feed("w", w, const=True)
    if bias is not None:
        one.feed("bias", bias, const=True)
    elif r is not None:
        one.skip()
    if r is not None:
        one.feed("r", r)
    node = one.build(z.shape)
    return one, one.expected(lambda *_: epilogue_oracle(z, node, r))


@pytest.mark.parametrize("tactic", CONST_WEIGHT_TACTICS)
@pytest.mark.parametrize(
    ("a_shape", "n", "trans_b", "activation", "residual"),
    [
        ((1, 37), 19, 0, "Gelu", "post"),
        ((3, 5, 64), 130, 1, "Relu", "pre"),
        ((2, 7, 33), 65, 0, "GeluTanh", None),
        ((30, 256), 200, 1, "Tanh", "post"),
        ((4, 3, 2, 16), 8, 0, "", None),
    ],
)
def test_fused_gemm_matches_oracle(
    rng: np.random.Generator,
    tactic: str,
    a_shape: tuple[int, ...],
    n: int,
    trans_b: int,
    activation: str,
    residual: str | None,
) -> None:
    one, expected = _fused_gemm(rng, a_shape, n, trans_b=trans_b, activation=activation, residual=residual)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", CONST_WEIGHT_TACTICS)
def test_fused_gemm_without_bias(rng: np.random.Generator, tactic: str) -> None:
    one, expected = _fused_gemm(rng, (2, 9, 300), 160, activation="Sigmoid", residual="pre", with_bias=False)
    assert_close(one.run_tactic(tactic), expected)


def test_blas_gemm_many_rows_and_small_rows_declines_them(rng: np.random.Generator) -> None:
    one, expected = _fused_gemm(rng, (4, 128, 96), 160, activation="HardSwish", residual="post")
    assert not get_tactic("cpu.gemm.small_rows").supports(one.node, one.graph)
    for tactic in ("cpu.gemm.blas", "cpu.gemm.blas_1t", "cpu.gemm.blas_nt"):
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((3, 4, 5, 6), (3, 4, 6, 7)), ((2, 1, 5, 6), (3, 6, 7)), ((5, 6), (2, 6, 3)), ((4, 9, 8), (8, 5))],
)
def test_matmul_batched_broadcast(rng: np.random.Generator, a_shape: tuple, b_shape: tuple) -> None:
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    z = a.astype(np.float64) @ b.astype(np.float64)
    one = OneNode("MatMul").feed("a", a).feed("b", b)
    one.build(z.shape)
    expected = one.expected(lambda *_: z)
    for tactic in ("cpu.gemm.blas", "cpu.gemm.blas_1t"):
        assert_close(one.run_tactic(tactic), expected)


def test_matmul_constant_weight_small_rows(rng: np.random.Generator) -> None:
    a = rng.standard_normal((1, 3, 70)).astype(np.float32)
    w = rng.standard_normal((70, 129)).astype(np.float32)
    one = OneNode("MatMul").feed("a", a).feed("w", w, const=True)
    one.build((1, 3, 129))
    expected = one.expected(lambda *_: a.astype(np.float64) @ w)
    for tactic in CONST_WEIGHT_TACTICS:
        assert_close(one.run_tactic(tactic), expected)


def test_fused_gemm_default_epilogue_attributes(rng: np.random.Generator) -> None:
    """A residual input without a ``residual`` attribute means "pre" (act(z + R)), as in the reference."""
    a = rng.standard_normal((3, 40)).astype(np.float32)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    r = rng.standard_normal((3, 24)).astype(np.float32)
    z = a.astype(np.float64) @ w
    one = (
        OneNode("FusedGemm", {"activation": "Relu"}).feed("a", a).feed("w", w, const=True).skip().feed("r", r)
    )
    one.build(z.shape)
    expected = one.expected(lambda *_: np.maximum(z + r, 0))
    for tactic in CONST_WEIGHT_TACTICS:
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("k", [1, 7, 8, 9, 16, 23])
@pytest.mark.parametrize("rows", [1, 8, 32])
def test_small_rows_k_blocking(rng: np.random.Generator, k: int, rows: int) -> None:
    """small_rows takes eight weight rows per pass, then the K % 8 rest one by one; N spans a
    full and a partial 256-column block."""
    one, expected = _fused_gemm(rng, (rows, k), 300, activation="Relu", residual="post")
    for tactic in ("cpu.gemm.small_rows", "cpu.gemm.small_rows_1t"):
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", ["cpu.gemm.small_rows", "cpu.gemm.small_rows_1t"])
def test_small_rows_runtime_bias_is_read_every_run(rng: np.random.Generator, tactic: str) -> None:
    """The epilogue operands are cached per node only when the bias is constant."""
    a = rng.standard_normal((4, 24)).astype(np.float32)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    one = (
        OneNode("FusedGemm", {"activation": "Relu"}).feed("a", a).feed("w", w, const=True).feed("bias", bias)
    )
    node = one.build((4, 40))
    t = get_tactic(tactic)
    prepared = t.prepare(node, one.graph)
    for _ in range(2):
        bias = rng.standard_normal(40).astype(np.float32)
        out = np.empty((4, 40), np.float32)
        t.run(node, [a, None if 1 in prepared.replaces else w, bias], [out], prepared)
        assert_close(out, np.maximum(a.astype(np.float64) @ w + bias, 0))
