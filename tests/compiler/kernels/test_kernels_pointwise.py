"""The direct 1x1 conv tactics (``cpu.conv.pointwise_direct(_1t)``) against a float64 oracle and
the reference: channel and pixel counts off the 6-channel / 16-pixel tiles, batches, 1x1 maps (the
GEMV path), strides, every epilogue, runtime weights."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close, epilogue_oracle

from farm.compiler.kernels import get_tactic

TACTICS = ["cpu.conv.pointwise_direct", "cpu.conv.pointwise_direct_1t"]


def pointwise_oracle(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int]
) -> np.ndarray:
    """out[n, m, y, x] = sum_c w[m, c] * x[n, c, y*sh, x*sw] + b[m], in float64."""
    xs = x[:, :, :: stride[0], :: stride[1]].astype(np.float64)
    out = np.einsum("nchw,mc->nmhw", xs, w[:, :, 0, 0].astype(np.float64))
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def _case(
    rng: np.random.Generator,
    n: int,
    c: int,
    h: int,
    wi: int,
    m: int,
    *,
    activation: str = "",
    alpha: float = 0.0,
    beta: float = 0.0,
    residual: str | None = None,
    with_bias: bool = True,
    stride: tuple[int, int] = (1, 1),
    op_type: str = "FusedConv",
    const_weight: bool = True,
) -> tuple[OneNode, np.ndarray]:
    x = rng.standard_normal((n, c, h, wi)).astype(np.float32)
    w = (rng.standard_normal((m, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if with_bias else None
    attrs: dict = {"kernel_shape": [1, 1], "strides": list(stride), "pads": [0, 0, 0, 0], "group": 1}
    if op_type == "FusedConv":
        attrs.update(activation=activation, alpha=alpha, beta=beta)
        if residual:
            attrs["residual"] = residual
    z = pointwise_oracle(x, w, b, stride)
    r = rng.standard_normal(z.shape).astype(np.float32) if residual else None
    one = OneNode(op_type, attrs).feed("x", x).feed("w", w, const=const_weight)
    if b is not None:
        one.feed("b", b, const=const_weight)
    elif residual:
        one.skip()
    if r is not None:
        one.feed("r", r)
    node = one.build(z.shape)
    expected = one.expected(lambda *_: epilogue_oracle(z, node, r) if op_type == "FusedConv" else z)
    return one, expected


# (N, C, H, W, M): channel tails off 6 (1, 3, 7, 17, 100), last tiles of 1, 4, 8, 9 and 15
# pixels (7x7, 14x14, 4x2, 13x13, 3x5), 1x1 maps, a MobileNet-size plane (several pixel blocks),
# and one layer split over channel chunks.
SHAPES = [
    (1, 1, 7, 7, 1),
    (3, 3, 13, 13, 7),
    (1, 7, 3, 5, 17),
    (2, 17, 7, 7, 96),
    (1, 96, 13, 13, 3),
    (1, 16, 112, 112, 24),
    (3, 96, 14, 14, 17),
    (1, 576, 1, 1, 144),
    (3, 17, 1, 1, 7),
    (1, 40, 4, 2, 12),
    (1, 96, 14, 14, 100),  # parallel over channel chunks (one pixel block, 17 channel groups)
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tactic", TACTICS)
def test_pointwise_direct_matches_oracle(rng: np.random.Generator, shape: tuple, tactic: str) -> None:
    one, expected = _case(rng, *shape, activation="Relu")
    assert_close(one.run_tactic(tactic), expected)


# (activation, alpha, beta)
EPILOGUES = [
    ("", 0.0, 0.0),
    ("Relu", 0.0, 0.0),
    ("Clip", -0.5, 0.75),
    ("HardSwish", 0.0, 0.0),
    ("HardSigmoid", 0.2, 0.5),
    ("LeakyRelu", 0.1, 0.0),
    ("Sigmoid", 0.0, 0.0),
    ("Tanh", 0.0, 0.0),
    ("Silu", 0.0, 0.0),
    ("Gelu", 0.0, 0.0),
    ("GeluTanh", 0.0, 0.0),
]


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("spatial", [(13, 13), (1, 1)])
def test_pointwise_direct_epilogues(
    rng: np.random.Generator, epilogue: tuple, residual: str | None, spatial: tuple[int, int]
) -> None:
    activation, alpha, beta = epilogue
    one, expected = _case(
        rng, 3, 17, *spatial, 7, activation=activation, alpha=alpha, beta=beta, residual=residual
    )
    for tactic in TACTICS:
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("stride", [(2, 2), (1, 2), (3, 1)])
def test_pointwise_direct_strided(rng: np.random.Generator, stride: tuple[int, int]) -> None:
    one, expected = _case(rng, 2, 9, 15, 14, 13, activation="Relu", residual="post", stride=stride)
    for tactic in TACTICS:
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("spatial", [(9, 11), (1, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_direct_runtime_weights_plain_conv(
    rng: np.random.Generator, spatial: tuple[int, int], with_bias: bool
) -> None:
    """Plain Conv, weight (and bias) fed at run time rather than packed in ``prepare``."""
    one, expected = _case(rng, 2, 10, *spatial, 13, op_type="Conv", with_bias=with_bias, const_weight=False)
    for tactic in TACTICS:
        assert_close(one.run_tactic(tactic), expected)


def test_pointwise_direct_without_bias_and_broadcast_residual(rng: np.random.Generator) -> None:
    """No bias input but a residual (skipped bias slot); the residual broadcast over the batch."""
    x = rng.standard_normal((3, 8, 5, 6)).astype(np.float32)
    w = rng.standard_normal((11, 8, 1, 1)).astype(np.float32)
    r = rng.standard_normal((1, 11, 5, 6)).astype(np.float32)
    attrs = {"kernel_shape": [1, 1], "activation": "HardSwish", "residual": "pre", "group": 1}
    z = pointwise_oracle(x, w, None, (1, 1))
    one = OneNode("FusedConv", attrs).feed("x", x).feed("w", w, const=True).skip().feed("r", r)
    node = one.build(z.shape)
    expected = one.expected(lambda *_: epilogue_oracle(z, node, r))
    for tactic in TACTICS:
        assert_close(one.run_tactic(tactic), expected)


def test_pointwise_direct_1d(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 19, 37)).astype(np.float32)
    w = rng.standard_normal((10, 19, 1)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    z = pointwise_oracle(x[:, :, None, :], w[:, :, None, :], b, (1, 1))[:, :, 0, :]
    one = (
        OneNode("Conv", {"kernel_shape": [1]}).feed("x", x).feed("w", w, const=True).feed("b", b, const=True)
    )
    one.build(z.shape)
    for tactic in TACTICS:
        assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


def test_pointwise_direct_declines_other_convs(rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    tactic = get_tactic("cpu.conv.pointwise_direct")
    for kernel, pads, group in (
        ((3, 3), [1, 1, 1, 1], 1),
        ((1, 1), [1, 1, 1, 1], 1),
        ((1, 1), [0, 0, 0, 0], 2),
    ):
        w = rng.standard_normal((4, 4 // group, *kernel)).astype(np.float32)
        attrs = {"kernel_shape": list(kernel), "pads": pads, "group": group}
        one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True)
        one.build(
            (1, 4, 6, 6) if pads[0] == 1 and kernel == (3, 3) else (1, 4, 8, 8) if pads[0] else (1, 4, 6, 6)
        )
        assert not tactic.supports(one.node, one.graph)


@pytest.mark.parametrize(("m_rows", "valid"), [(6, 16), (4, 9), (1, 1)])
def test_pointwise_tiles_quarter_compiles_and_matches_on_any_host(
    rng: np.random.Generator, m_rows: int, valid: int
) -> None:
    """The AVX2 hosts' 6 x 16 tile, called directly (an AVX-512 host never reaches it through
    the tactic): it is compiled without numba's reference counting (``_nrt=False``), which must
    hold on every host, and stores ``valid`` pixels of ``m_rows`` channels, Relu applied, rows
    ``ldo`` apart (a ConvTranspose column buffer's row length, not the input's plane)."""
    from numba import njit

    from farm.compiler.kernels.cpu._epilogue import RES_NONE, activation_code, vector_epilogue
    from farm.compiler.kernels.cpu.pointwise_tiles import MR, _quarter

    @njit
    def run_quarter(xf, plane, cin, wf, bias, m, of, ldo, n, res, act):  # type: ignore[no-untyped-def]
        ep = vector_epilogue(RES_NONE, act, 0.0, 0.0)
        _quarter(xf, 3, plane, cin, wf, MR // 2, bias, 2, m, of, 5, ldo, n, res, ep)

    cin, plane, ldo = 7, 40, 24
    x = rng.standard_normal(3 + cin * plane).astype(np.float32)
    w = rng.standard_normal(cin * MR + MR).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    out = np.full(5 + 6 * ldo + 16, np.nan, np.float32)
    run_quarter(
        x, plane, cin, w, bias, 2 + m_rows, out, ldo, valid, np.zeros(1, np.float32), activation_code("Relu")
    )
    for r in range(6):
        got = out[5 + r * ldo : 5 + r * ldo + 16]
        if r >= m_rows:
            assert np.isnan(got).all()  # channels past the layer's end are not stored
            continue
        weights = w[MR // 2 + r :: MR][:cin]
        pixels = np.stack([x[3 + c * plane : 3 + c * plane + valid] for c in range(cin)])
        want = np.maximum(weights @ pixels + bias[2 + r], 0)
        np.testing.assert_allclose(got[:valid], want, rtol=1e-5, atol=1e-5)
        assert np.isnan(got[valid:]).all()
