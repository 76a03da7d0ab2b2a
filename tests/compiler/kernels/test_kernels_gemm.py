"""GEMM tactics (FusedGemm, MatMul) against float64 numpy matmul with fused.py's epilogue."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close, epilogue_oracle

from farm.compiler.ir import ACTIVATIONS
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu._simd16 import AVX512

# the few-rows GEMMs on a constant weight with the epilogue fused (panel_rows needs AVX-512)
DOT_TACTICS = ["cpu.gemm.dot_rows"] + (["cpu.gemm.panel_rows", "cpu.gemm.panel_rows_1t"] if AVX512 else [])

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
    for tactic in [*CONST_WEIGHT_TACTICS, *DOT_TACTICS]:
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
    for tactic in [*CONST_WEIGHT_TACTICS, *DOT_TACTICS]:
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("k", [1, 7, 8, 9, 16, 23])
@pytest.mark.parametrize("rows", [1, 8, 32])
def test_small_rows_k_blocking(rng: np.random.Generator, k: int, rows: int) -> None:
    """small_rows takes eight weight rows per pass, then the K % 8 rest one by one; N spans a
    full and a partial 256-column block."""
    one, expected = _fused_gemm(rng, (rows, k), 300, activation="Relu", residual="post")
    for tactic in ("cpu.gemm.small_rows", "cpu.gemm.small_rows_1t"):
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize(
    "tactic", ["cpu.gemm.small_rows", "cpu.gemm.small_rows_1t", *DOT_TACTICS, "cpu.gemm.blas"]
)
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


# --------------------------------------------------------------------------- cpu.gemm.dot_rows
ACTIVATION_PARAMS = {"LeakyRelu": (0.1, 0.0), "Clip": (-0.5, 0.7), "HardSigmoid": (0.2, 0.5)}


def _dot_rows_case(
    rng: np.random.Generator,
    rows: int,
    k: int,
    n: int,
    *,
    trans_b: int,
    activation: str,
    residual: str | None,
    bias_shape: tuple[int, ...] | None,
) -> tuple[OneNode, np.ndarray]:
    a = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    z = a.astype(np.float64) @ (w.T if trans_b else w).astype(np.float64)
    alpha, beta = ACTIVATION_PARAMS.get(activation, (0.0, 0.0))
    attrs: dict = {"transB": trans_b, "activation": activation, "alpha": alpha, "beta": beta}
    one = OneNode("FusedGemm", attrs).feed("a", a).feed("w", w, const=True)
    if bias_shape is not None:
        bias = rng.standard_normal(bias_shape).astype(np.float32)
        z = z + bias
        one.feed("bias", bias, const=True)
    r = rng.standard_normal(z.shape).astype(np.float32) if residual else None
    if r is not None:
        attrs["residual"] = residual
        if bias_shape is None:
            one.skip()
        one.feed("r", r)
    node = one.build(z.shape)
    return one, epilogue_oracle(z, node, r)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 16])
@pytest.mark.parametrize(
    ("k", "n", "trans_b", "bias_shape"),
    [(256, 512, 1, "n"), (37, 19, 0, "1n"), (1, 3, 1, "scalar"), (300, 129, 0, None), (9, 1, 1, "n")],
)
def test_dot_rows_matches_float64(
    rng: np.random.Generator, rows: int, k: int, n: int, trans_b: int, bias_shape: str | None
) -> None:
    """Row blocks of four and their tails, odd N (the column-pair tail), K not a multiple of
    the vector width, every bias form; the oracle is float64 numpy."""
    shape = {"n": (n,), "1n": (1, n), "scalar": (), None: None}[bias_shape]
    one, expected = _dot_rows_case(
        rng, rows, k, n, trans_b=trans_b, activation="Relu", residual=None, bias_shape=shape
    )
    for tactic in DOT_TACTICS:
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_dot_rows_every_epilogue(rng: np.random.Generator, activation: str, residual: str | None) -> None:
    one, expected = _dot_rows_case(
        rng, 6, 70, 33, trans_b=1, activation=activation, residual=residual, bias_shape=(33,)
    )
    for tactic in DOT_TACTICS:
        assert_close(one.run_tactic(tactic), expected)
        assert_close(one.run_tactic(tactic), one.expected(lambda *_: expected))


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [(11,), (1, 11), (), (5, 11), (5, 1), "runtime", None])
def test_dot_rows_onnx_gemm(
    rng: np.random.Generator, trans_a: int, trans_b: int, c_shape: tuple[int, ...] | str | None
) -> None:
    """ONNX Gemm as it reaches the tactics when the passes do not run: transA, transB, alpha
    folded into the weight, beta into C, C per column (a bias) or per row/element (added like a
    residual), constant or a runtime input."""
    m, k, n, alpha, beta = 5, 23, 11, 0.7, -1.3
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    z = alpha * ((a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64))
    one = OneNode("Gemm", {"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta})
    one.feed("a", a).feed("b", b, const=True)
    if c_shape is not None:
        c = rng.standard_normal((m, n) if c_shape == "runtime" else c_shape).astype(np.float32)
        z = z + beta * c.astype(np.float64)
        one.feed("c", c, const=c_shape != "runtime")
    one.build((m, n))
    expected = one.expected(lambda *_: z)
    for tactic in DOT_TACTICS:
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16])
@pytest.mark.parametrize(("k", "n"), [(256, 512), (37, 129), (9, 300)])
@pytest.mark.parametrize(("activation", "residual"), [("Relu", None), ("Clip", "pre"), ("Tanh", "post")])
def test_dot_rows_split_matches_float64(
    rng: np.random.Generator, rows: int, k: int, n: int, activation: str, residual: str | None
) -> None:
    """The column-split form: blocks with odd widths (the column-pair tail inside a block), row
    blocks of four and their tails, the epilogue per block (bias and residual sliced to it), on
    every thread count numba allows here and on one thread (the serial fallback)."""
    import numba

    one, expected = _dot_rows_case(
        rng, rows, k, n, trans_b=1, activation=activation, residual=residual, bias_shape=(n,)
    )
    assert_close(one.run_tactic("cpu.gemm.dot_rows_split"), expected)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert_close(one.run_tactic("cpu.gemm.dot_rows_split"), expected)
    finally:
        numba.set_num_threads(previous)


def test_dot_rows_split_parts_cover_every_column(rng: np.random.Generator) -> None:
    """Called directly with more parts than this host has threads: the blocks still tile the
    columns exactly (none skipped, none written twice with a different value)."""
    from farm.compiler.kernels.cpu._epilogue import NO_MATRIX, RES_NONE, vector_or_dummy
    from farm.compiler.kernels.cpu.gemm import dot_rows_split_gemm

    a = rng.standard_normal((3, 40)).astype(np.float32)
    w = rng.standard_normal((257, 40)).astype(np.float32)
    bias, has_bias = vector_or_dummy(rng.standard_normal(257).astype(np.float32))
    for parts in (1, 2, 3, 7):
        out = np.full((3, 257), np.nan, np.float32)
        dot_rows_split_gemm(a, w, out, bias, has_bias, NO_MATRIX, RES_NONE, 0, 0.0, 0.0, parts)
        assert_close(out, a.astype(np.float64) @ w.T.astype(np.float64) + bias)


def test_dot_rows_split_declines_narrow_outputs(rng: np.random.Generator) -> None:
    one, _ = _fused_gemm(rng, (1, 64), 127, activation="Relu", residual=None)
    assert not get_tactic("cpu.gemm.dot_rows_split").supports(one.node, one.graph)
    assert get_tactic("cpu.gemm.dot_rows").supports(one.node, one.graph)
    one, _ = _fused_gemm(rng, (1, 64), 128, activation="Relu", residual=None)
    assert get_tactic("cpu.gemm.dot_rows_split").supports(one.node, one.graph)


@pytest.mark.parametrize("tactic_name", DOT_TACTICS)
def test_dot_rows_symbolic_batch_past_sixteen_rows_uses_blas(
    rng: np.random.Generator, tactic_name: str
) -> None:
    """Tuned at a small batch, run at 40 rows: the same operands through BLAS (panel_rows: its
    own tiles), same results."""
    k, n = 48, 20
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    one = OneNode("FusedGemm", {"transB": 1, "activation": "Tanh"})
    one.graph.add_input("a", "float32", ("batch", k))
    one.input_names.append("a")
    one.feed("w", w, const=True).feed("bias", bias, const=True)
    node = one.build(("batch", n))
    tactic = get_tactic(tactic_name)
    assert tactic.supports(node, one.graph)
    prepared = tactic.prepare(node, one.graph)
    for rows in (40, 2, 17):
        a = rng.standard_normal((rows, k)).astype(np.float32)
        out = np.full((rows, n), np.nan, np.float32)
        tactic.run(node, [a, None, None], [out], prepared)
        assert_close(out, np.tanh(a.astype(np.float64) @ w.T.astype(np.float64) + bias))


def test_dot_rows_declines_many_static_rows(rng: np.random.Generator) -> None:
    one, _ = _fused_gemm(rng, (2, 9, 30), 16, activation="Relu", residual=None)
    assert not get_tactic("cpu.gemm.dot_rows").supports(one.node, one.graph)
    one, _ = _fused_gemm(rng, (2, 8, 30), 16, activation="Relu", residual=None)
    assert get_tactic("cpu.gemm.dot_rows").supports(one.node, one.graph)


def test_blas_epilogue_serial_and_parallel_paths_agree(rng: np.random.Generator) -> None:
    """cpu.gemm.blas applies a small output's epilogue on the calling thread and a large one's
    with numba's pool: both match the oracle."""
    for rows in (2, 200):
        one, expected = _fused_gemm(rng, (rows, 64), 300, activation="Silu", residual="pre")
        assert_close(one.run_tactic("cpu.gemm.blas"), expected)


def test_dot_rows_declines_a_symbolic_batch_of_long_sequences() -> None:
    """[batch, 128, 64]: at least 128 rows whatever the batch."""
    one = OneNode("MatMul")
    one.graph.add_input("a", "float32", ("batch", 128, 64))
    one.input_names.append("a")
    one.feed("w", np.ones((64, 8), np.float32), const=True)
    one.build(("batch", 128, 8))
    assert not get_tactic("cpu.gemm.dot_rows").supports(one.node, one.graph)


@pytest.mark.skipif(not AVX512, reason="panel_rows needs AVX-512")
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 13, 16])
@pytest.mark.parametrize(("k", "n"), [(256, 512), (40, 16), (33, 65), (5, 200), (64, 10), (17, 1000)])
@pytest.mark.parametrize(("activation", "residual"), [("Relu", None), ("HardSwish", "pre"), ("Gelu", "post")])
def test_panel_rows_tiles_and_tails(
    rng: np.random.Generator, rows: int, k: int, n: int, activation: str, residual: str | None
) -> None:
    """Every row count (tiles of four, two or three rows with a recomputed one, a lone row),
    N not a multiple of 16 or of a tile's 64 columns (masked stores; a tile past the last panel
    recomputes it and stores nothing), a vector activation and one run over the finished rows,
    each residual mode; split over numba's threads and on one."""
    import numba

    one, expected = _dot_rows_case(
        rng, rows, k, n, trans_b=1, activation=activation, residual=residual, bias_shape=(n,)
    )
    previous = numba.get_num_threads()
    for threads in sorted({previous, 1}):
        numba.set_num_threads(threads)
        try:
            for tactic in ("cpu.gemm.panel_rows", "cpu.gemm.panel_rows_1t"):
                assert_close(one.run_tactic(tactic), expected)
        finally:
            numba.set_num_threads(previous)


@pytest.mark.skipif(not AVX512, reason="panel_rows needs AVX-512")
def test_panel_rows_parts_cover_every_column(rng: np.random.Generator) -> None:
    """Called directly with more parts than this host has threads, and ranges that end inside a
    tile: every column written once, with the right value."""
    from farm.compiler.kernels.cpu._epilogue import NO_MATRIX, RES_NONE, vector_or_dummy
    from farm.compiler.kernels.cpu.gemm_panels import pack_panels, panel_gemm_split

    a = rng.standard_normal((5, 40)).astype(np.float32)
    w = rng.standard_normal((257, 40)).astype(np.float32)
    bias, has_bias = vector_or_dummy(rng.standard_normal(257).astype(np.float32))
    panels = pack_panels(w)
    assert panels.shape == (17, 40, 16)
    for parts in (1, 2, 3, 7, 17):
        out = np.full((5, 257), np.nan, np.float32)
        panel_gemm_split(a, panels, out, bias, has_bias, NO_MATRIX, RES_NONE, 0, 0.0, 0.0, parts)
        assert_close(out, a.astype(np.float64) @ w.T.astype(np.float64) + bias)
