"""Conv tactics against a direct float64 convolution, over strides, pads, dilations, groups."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close, epilogue_oracle


def conv_oracle(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    group: int,
) -> np.ndarray:
    """Direct NCHW convolution: one shifted, strided window of the padded input per kernel tap."""
    n, c, h, wi = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wi + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, m, ho, wo))
    mg = m // group
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                window = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                    j * dw : j * dw + sw * (wo - 1) + 1 : sw,
                ]
                out[:, g * mg : (g + 1) * mg] += np.einsum(
                    "nchw,mc->nmhw", window, w[g * mg : (g + 1) * mg, :, i, j]
                )
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


# (N, C, H, W, M, kernel, strides, pads[t,l,b,r], dilations, group)
CASES = [
    (1, 3, 9, 11, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (3, 5, 10, 7, 6, (3, 3), (2, 2), (0, 1, 2, 1), (1, 1), 1),
    (2, 4, 12, 12, 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    (1, 6, 8, 9, 9, (3, 2), (2, 1), (1, 0, 0, 1), (1, 2), 3),
    (3, 7, 6, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 8, 7, 7, 4, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 2),
    (2, 3, 13, 5, 4, (5, 5), (3, 2), (2, 2, 1, 0), (1, 1), 1),
    (2, 16, 33, 35, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # big enough for both pools
]

# Strided 1 x 1 convs, which the phase-copy tactics (packed16, channel_lanes) take too:
# (N, C, H, W, M, kernel, strides, pads, dilations, group)
STRIDED_POINTWISE_CASES = [
    (1, 16, 14, 14, 24, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),  # ResNet's downsample: one phase
    (2, 7, 9, 11, 13, (1, 1), (2, 3), (0, 0, 0, 0), (1, 1), 1),  # unequal strides, odd sizes
]
DEPTHWISE_CASES = [
    (1, 8, 11, 9, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8),
    (3, 6, 10, 13, 6, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 6),
    (2, 4, 9, 9, 8, (5, 5), (1, 2), (2, 2, 2, 2), (2, 1), 4),
    (1, 5, 7, 6, 5, (3, 1), (2, 1), (1, 0, 0, 0), (1, 1), 5),
    (1, 6, 11, 10, 6, (3, 3), (2, 2), (2, 1, 1, 2), (2, 2), 6),
    (1, 3, 8, 8, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3),  # channel multiplier 2
    (1, 32, 40, 40, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32),  # parallel path
    (2, 13, 15, 14, 13, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 13),  # channels not a multiple of 8
    (1, 11, 17, 19, 11, (5, 5), (3, 3), (1, 2, 0, 3), (1, 2), 11),  # stride 3, asymmetric pads
    (2, 5, 9, 23, 15, (3, 3), (1, 2), (0, 0, 0, 0), (2, 1), 5),  # multiplier 3, no pads
    (1, 24, 7, 7, 24, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), 24),  # kernel as large as the plane
    (3, 9, 6, 33, 9, (1, 3), (1, 2), (0, 1, 0, 1), (1, 3), 9),  # one-row kernel, wide plane
]
DEPTHWISE_TACTICS = ["cpu.conv.depthwise_plane"]  # depthwise.py; its own tests cover the _1t form too


def _conv_case(
    rng: np.random.Generator,
    case: tuple,
    *,
    activation: str = "Relu",
    alpha: float = 0.0,
    beta: float = 0.0,
    residual: str | None = None,
    with_bias: bool = True,
    op_type: str = "FusedConv",
) -> tuple[OneNode, np.ndarray]:
    n, c, h, wi, m, kernel, strides, pads, dilations, group = case
    x = rng.standard_normal((n, c, h, wi)).astype(np.float32)
    w = rng.standard_normal((m, c // group, *kernel)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if with_bias else None
    attrs: dict = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "pads": list(pads),
        "dilations": list(dilations),
        "group": group,
    }
    if op_type == "FusedConv":
        attrs.update(activation=activation, alpha=alpha, beta=beta)
        if residual:
            attrs["residual"] = residual
    z = conv_oracle(x, w, b, strides, pads, dilations, group)
    r = rng.standard_normal(z.shape).astype(np.float32) if residual else None
    one = OneNode(op_type, attrs).feed("x", x).feed("w", w, const=True)
    if b is not None:
        one.feed("b", b, const=True)
    elif residual:
        one.skip()
    if r is not None:
        one.feed("r", r)
    node = one.build(z.shape)
    expected = one.expected(lambda *_: epilogue_oracle(z, node, r) if op_type == "FusedConv" else z)
    return one, expected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "tactic",
    [
        "cpu.conv.im2col_gemm",
        "cpu.conv.im2col_gemm_1t",
        "cpu.conv.im2col_gemm_batched",
        "cpu.conv.im2col_gemm_wide",
    ],
)
def test_im2col_conv_matches_oracle(rng: np.random.Generator, case: tuple, tactic: str) -> None:
    if tactic.endswith(("batched", "wide")) and case[-1] != 1:
        pytest.skip("declines grouped convs")
    if tactic.endswith("wide") and (case[6][0] != case[6][1] or case[5] == (1, 1)):
        pytest.skip("declines unequal strides and 1x1 kernels")
    one, expected = _conv_case(rng, case, activation="LeakyRelu", alpha=0.1, residual="pre")
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("case", [c for c in CASES if c[5] == (1, 1) and c[6] == (1, 1)])
@pytest.mark.parametrize("residual", [None, "post"])
def test_pointwise_conv_matches_oracle(rng: np.random.Generator, case: tuple, residual: str | None) -> None:
    one, expected = _conv_case(rng, case, activation="HardSwish", residual=residual)
    for tactic in ("cpu.conv.pointwise_gemm", "cpu.conv.pointwise_gemm_1t"):
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("tactic", DEPTHWISE_TACTICS)
def test_depthwise_conv_matches_oracle(
    rng: np.random.Generator, case: tuple, residual: str | None, tactic: str
) -> None:
    activation = "Clip" if residual else "Silu"
    one, expected = _conv_case(rng, case, activation=activation, alpha=0.0, beta=6.0, residual=residual)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", DEPTHWISE_TACTICS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_conv_with_runtime_weights(rng: np.random.Generator, tactic: str, with_bias: bool) -> None:
    """Weight (and bias) fed at run time, not packed in ``prepare``; plain Conv, batch 2."""
    x = rng.standard_normal((2, 10, 12, 11)).astype(np.float32)
    w = rng.standard_normal((10, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    attrs = {
        "kernel_shape": [3, 3],
        "strides": [2, 2],
        "pads": [1, 0, 1, 1],
        "dilations": [1, 1],
        "group": 10,
    }
    z = conv_oracle(x, w, b if with_bias else None, (2, 2), (1, 0, 1, 1), (1, 1), 10)
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w)
    if with_bias:
        one.feed("b", b)
    one.build(z.shape)
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


@pytest.mark.parametrize("tactic", DEPTHWISE_TACTICS)
def test_depthwise_conv_1d(rng: np.random.Generator, tactic: str) -> None:
    x = rng.standard_normal((3, 9, 29)).astype(np.float32)
    w = rng.standard_normal((9, 1, 5)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    attrs = {"kernel_shape": [5], "strides": [2], "pads": [2, 1], "dilations": [2], "group": 9}
    z = conv_oracle(x[:, :, None, :], w[:, :, None, :], b, (1, 2), (0, 2, 0, 1), (1, 2), 9)[:, :, 0, :]
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True).feed("b", b, const=True)
    one.build(z.shape)
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


def test_plain_conv_without_bias(rng: np.random.Generator) -> None:
    one, expected = _conv_case(rng, CASES[1], op_type="Conv", with_bias=False)
    for tactic in ("cpu.conv.im2col_gemm", "cpu.conv.im2col_gemm_batched"):
        assert_close(one.run_tactic(tactic), expected)


def test_pointwise_declines_strided_and_depthwise_declines_dense(rng: np.random.Generator) -> None:
    strided, _ = _conv_case(rng, CASES[5])
    from farm.compiler.kernels import get_tactic

    assert not get_tactic("cpu.conv.pointwise_gemm").supports(strided.node, strided.graph)
    dense, _ = _conv_case(rng, CASES[0])
    for tactic in DEPTHWISE_TACTICS:
        assert not get_tactic(tactic).supports(dense.node, dense.graph)


def test_conv_1d(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 4, 17)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3)).astype(np.float32)
    attrs = {"kernel_shape": [3], "strides": [2], "pads": [1, 2], "dilations": [1], "group": 1}
    z = conv_oracle(x[:, :, None, :], w[:, :, None, :], None, (1, 2), (0, 1, 0, 2), (1, 1), 1)[:, :, 0, :]
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True)
    one.build(z.shape)
    assert_close(one.run_tactic("cpu.conv.im2col_gemm"), one.expected(lambda *_: z))
