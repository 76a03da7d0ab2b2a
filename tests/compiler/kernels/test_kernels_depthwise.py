"""The depthwise tactics of ``cpu/depthwise.py`` against a float64 oracle and the reference:
strides 1, 2 and (1, 2), dilation 2, kernels 3/5/7, symmetric and asymmetric pads, channel
multiplier 2, batch 1 and 3, odd widths, every epilogue activation and residual mode."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close, epilogue_oracle

from farm.compiler.kernels import get_tactic

TACTICS = ["cpu.conv.depthwise_plane", "cpu.conv.depthwise_plane_1t"]


def depthwise_oracle(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> np.ndarray:
    """Float64 depthwise conv: output channel m = input channel m // mult convolved with w[m, 0],
    one strided window of the zero-padded input per tap."""
    n, c, h, wi = x.shape
    m, _, kh, kw = w.shape
    mult = m // c
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wi + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    xm = np.repeat(xp, mult, axis=1)  # input channel of each output channel
    out = np.zeros((n, m, ho, wo))
    for i in range(kh):
        for j in range(kw):
            window = xm[
                :, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw
            ]
            out += window * w[:, 0, i, j].astype(np.float64).reshape(1, m, 1, 1)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


# (N, C, H, W, mult, kernel, strides, pads [t, l, b, r], dilations)
CASES = [
    (1, 8, 14, 14, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (1, 16, 112, 112, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # several row blocks
    (3, 6, 13, 13, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (1, 12, 14, 14, 1, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # TF-style asymmetric pads
    (3, 5, 7, 13, 1, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    (1, 9, 28, 28, 1, (5, 5), (2, 2), (1, 2, 2, 1), (1, 1)),
    (1, 7, 14, 14, 1, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1)),
    (1, 4, 13, 7, 1, (7, 7), (2, 2), (3, 2, 1, 3), (1, 1)),
    (3, 6, 13, 14, 1, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)),
    (1, 5, 14, 13, 1, (3, 3), (2, 1), (0, 1, 2, 1), (1, 1)),
    (1, 6, 14, 14, 1, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),  # dilation 2
    (3, 5, 13, 13, 1, (3, 3), (2, 2), (2, 1, 2, 2), (2, 2)),
    (1, 4, 14, 7, 1, (5, 5), (1, 2), (4, 4, 3, 2), (2, 1)),
    (1, 3, 14, 14, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # channel multiplier 2
    (3, 5, 13, 7, 2, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1)),
    (1, 4, 9, 11, 1, (3, 3), (3, 3), (1, 0, 2, 1), (1, 1)),  # stride 3
    (1, 6, 9, 10, 1, (2, 4), (1, 1), (0, 1, 1, 2), (1, 1)),  # even, non-square kernel
    (1, 5, 7, 9, 1, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),  # 1x1
    (3, 4, 5, 6, 1, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),  # no padding, tiny plane
]

EPILOGUES = [
    ("", 0.0, 0.0),
    ("Relu", 0.0, 0.0),
    ("Clip", 0.0, 6.0),
    ("HardSwish", 0.0, 0.0),
    ("HardSigmoid", 0.2, 0.5),
    ("LeakyRelu", 0.1, 0.0),
    ("Sigmoid", 0.0, 0.0),
    ("Tanh", 0.0, 0.0),
    ("Silu", 0.0, 0.0),
    ("Gelu", 0.0, 0.0),
    ("GeluTanh", 0.0, 0.0),
]


def _case(
    rng: np.random.Generator,
    case: tuple,
    *,
    activation: str = "Clip",
    alpha: float = 0.0,
    beta: float = 6.0,
    residual: str | None = None,
    with_bias: bool = True,
    const_weights: bool = True,
    op_type: str = "FusedConv",
) -> tuple[OneNode, np.ndarray]:
    n, c, h, wi, mult, kernel, strides, pads, dilations = case
    x = rng.standard_normal((n, c, h, wi)).astype(np.float32)
    w = rng.standard_normal((c * mult, 1, *kernel)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32) if with_bias else None
    attrs: dict = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "pads": list(pads),
        "dilations": list(dilations),
        "group": c,
    }
    if op_type == "FusedConv":
        attrs.update(activation=activation, alpha=alpha, beta=beta)
        if residual:
            attrs["residual"] = residual
    z = depthwise_oracle(x, w, b, strides, pads, dilations)
    r = rng.standard_normal(z.shape).astype(np.float32) if residual else None
    one = OneNode(op_type, attrs).feed("x", x).feed("w", w, const=const_weights)
    if b is not None:
        one.feed("b", b, const=const_weights)
    elif residual:
        one.skip()
    if r is not None:
        one.feed("r", r)
    node = one.build(z.shape)
    expected = one.expected(lambda *_: epilogue_oracle(z, node, r) if op_type == "FusedConv" else z)
    return one, expected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_geometries(rng: np.random.Generator, case: tuple, tactic: str) -> None:
    one, expected = _case(rng, case)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: e[0] or "none")
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_epilogues(
    rng: np.random.Generator, epilogue: tuple[str, float, float], residual: str | None, tactic: str
) -> None:
    activation, alpha, beta = epilogue
    for case in (CASES[2], CASES[13]):  # stride 2 batch 3, multiplier 2
        one, expected = _case(rng, case, activation=activation, alpha=alpha, beta=beta, residual=residual)
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_runtime_weights_plain_conv(rng: np.random.Generator, tactic: str, with_bias: bool) -> None:
    """Weights (and bias) fed at run time on a plain Conv; without bias on a residual FusedConv."""
    one, expected = _case(rng, CASES[5], with_bias=with_bias, const_weights=False, op_type="Conv")
    assert_close(one.run_tactic(tactic), expected)
    one, expected = _case(rng, CASES[3], with_bias=with_bias, residual="post", activation="Relu")
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_new_input_shape_reuses_nothing_stale(rng: np.random.Generator, tactic: str) -> None:
    """One prepared node run at three input shapes in turn: the workspaces follow the shape, and
    the padding of a run is not polluted by the pixels of the run before."""
    t = get_tactic(tactic)
    one, _ = _case(rng, (3, 6, 14, 14, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)))
    prepared = t.prepare(one.node, one.graph)
    x, w, b = one.arrays()
    assert w is not None and b is not None
    inputs: list[np.ndarray | None] = [
        None if i in prepared.replaces else a for i, a in enumerate(one.arrays())
    ]
    for shape in ((3, 6, 14, 14), (1, 6, 13, 15), (2, 6, 14, 14)):
        inputs[0] = rng.standard_normal(shape).astype(np.float32)
        z = depthwise_oracle(inputs[0], w, b, (2, 2), (1, 1, 1, 1), (1, 1))
        out = np.full(z.shape, np.nan, np.float32)
        t.run(one.node, inputs, [out], prepared)
        assert_close(out, np.clip(z, 0.0, 6.0))


@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_conv_1d(rng: np.random.Generator, tactic: str) -> None:
    x = rng.standard_normal((3, 9, 29)).astype(np.float32)
    w = rng.standard_normal((9, 1, 5)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    attrs = {"kernel_shape": [5], "strides": [2], "pads": [2, 1], "dilations": [2], "group": 9}
    z = depthwise_oracle(x[:, :, None, :], w[:, :, None, :], b, (1, 2), (0, 2, 0, 1), (1, 2))[:, :, 0, :]
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True).feed("b", b, const=True)
    one.build(z.shape)
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


def test_depthwise_declines_dense_and_grouped(rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    for group, cg in ((1, 4), (2, 2)):
        w = rng.standard_normal((4, cg, 3, 3)).astype(np.float32)
        attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": group}
        one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True)
        one.build((1, 4, 6, 6))
        for tactic in TACTICS:
            assert not get_tactic(tactic).supports(one.node, one.graph)
