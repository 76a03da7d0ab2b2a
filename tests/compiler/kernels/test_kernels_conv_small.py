"""``cpu.conv.small_direct`` (convs with a few output pixels, ``cpu/conv_small.py``) against the
float64 direct convolution of test_kernels_conv.py: Silero VAD's encoder convs (stride 2 down to
lengths 2 and 1), output channels below 16, a ragged last block and more than four 16-channel
blocks, strides, dilation, asymmetric pads whose windows lie partly or wholly outside the input,
batch 1 and 3, pixels in groups of four and alone, 1-D, every epilogue activation and residual mode, with and without bias; and
what it declines."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close
from test_kernels_conv import _conv_case, conv_oracle
from test_kernels_depthwise import EPILOGUES

from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu.conv_small import MAX_PIXELS

TACTIC = "cpu.conv.small_direct"

# (N, C, H, W, M, kernel, strides, pads[t,l,b,r], dilations, group)
CASES = [
    (1, 64, 1, 2, 64, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), 1),  # Silero's encoder.2: length 2 -> 1
    (1, 128, 1, 3, 64, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), 1),
    (3, 5, 4, 4, 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # 7 outputs: the masked block alone
    (2, 9, 5, 3, 83, (3, 2), (1, 2), (2, 0, 1, 1), (2, 1), 1),  # 5 blocks + a ragged one, dilation
    (1, 4, 2, 2, 16, (5, 5), (1, 1), (3, 3, 3, 3), (1, 1), 1),  # windows wholly in the padding
    (1, 16, 7, 7, 32, (7, 7), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # one pixel: a 7x7 "dense" conv
    (1, 8, 1, 7, 70, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 1),  # 7 pixels: a group of four, then three alone
    (
        1,
        1,
        1,
        640,
        258,
        (1, 256),
        (1, 128),
        (0, 0, 0, 0),
        (1, 1),
        1,
    ),  # Silero's STFT: 258 x 256 taps, 4 pixels
]


@pytest.mark.parametrize("case", CASES)
def test_small_direct_geometries(rng: np.random.Generator, case: tuple) -> None:
    one, expected = _conv_case(rng, case, activation="Clip", beta=6.0)
    assert get_tactic(TACTIC).supports(one.node, one.graph)
    assert_close(one.run_tactic(TACTIC), expected)


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: e[0] or "none")
@pytest.mark.parametrize("residual", [None, "pre", "post"])
def test_small_direct_epilogues(
    rng: np.random.Generator, epilogue: tuple[str, float, float], residual: str | None
) -> None:
    activation, alpha, beta = epilogue
    for with_bias in (True, False):
        one, expected = _conv_case(
            rng,
            CASES[3],
            activation=activation,
            alpha=alpha,
            beta=beta,
            residual=residual,
            with_bias=with_bias,
        )
        assert_close(one.run_tactic(TACTIC), expected)


def test_small_direct_plain_conv_and_1d(rng: np.random.Generator) -> None:
    one, expected = _conv_case(rng, CASES[2], op_type="Conv", with_bias=False)
    assert_close(one.run_tactic(TACTIC), expected)
    x = rng.standard_normal((2, 24, 9)).astype(np.float32)
    w = rng.standard_normal((40, 24, 5)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    attrs = {"kernel_shape": [5], "strides": [3], "pads": [2, 1], "dilations": [2], "group": 1}
    z = conv_oracle(x[:, :, None, :], w[:, :, None, :], b, (1, 3), (0, 2, 0, 1), (1, 2), 1)[:, :, 0, :]
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True).feed("b", b, const=True)
    one.build(z.shape)
    assert_close(one.run_tactic(TACTIC), one.expected(lambda *_: z))


def test_small_direct_declines_large_outputs_groups_and_run_time_weights(rng: np.random.Generator) -> None:
    tactic = get_tactic(TACTIC)
    one, _ = _conv_case(rng, (1, 4, 9, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1))  # 72 pixels
    assert MAX_PIXELS < 9 * 8 and not tactic.supports(one.node, one.graph)
    one, _ = _conv_case(rng, (1, 4, 3, 3, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2))  # grouped
    assert not tactic.supports(one.node, one.graph)
    x = rng.standard_normal((1, 3, 2, 2)).astype(np.float32)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    one = OneNode("Conv", {"kernel_shape": [1, 1]}).feed("x", x).feed("w", w)  # the weight is an input
    one.build((1, 4, 2, 2))
    assert not tactic.supports(one.node, one.graph)
