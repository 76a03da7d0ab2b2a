"""``cpu.conv.direct_rows`` (few-input-channel direct conv, ``cpu/conv_rows.py``) against the
float64 direct convolution of test_kernels_conv.py: the stems it is for (3 -> 16 3x3 stride 2,
3 -> 64 7x7 stride 2), 1-8 input channels, output channels not a multiple of 16, strides 1, 2
and (2, 1), dilation, asymmetric pads, planes wider than one 16-column block, batch 1 and 3,
1-D, every epilogue activation and residual mode, with and without bias; and what it declines.
The kernel's other form (four-channel passes on AVX2 hosts, one 16-channel pass with AVX-512) is
compiled and checked too, whichever host runs the tests."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close
from numba import njit
from test_kernels_conv import _conv_case, conv_oracle
from test_kernels_depthwise import EPILOGUES

from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu import conv_rows

TACTICS = ["cpu.conv.direct_rows", "cpu.conv.direct_rows_1t"]

# (N, C, H, W, M, kernel, strides, pads[t,l,b,r], dilations, group)
CASES = [
    (1, 3, 40, 38, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # MobileNet's stem, smaller
    (1, 3, 45, 47, 64, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),  # ResNet's stem, smaller
    (3, 1, 17, 19, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # one channel, 5 outputs
    (2, 4, 13, 35, 20, (5, 5), (1, 2), (2, 1, 2, 3), (1, 1), 1),  # 20 outputs: a ragged block
    (1, 8, 11, 12, 7, (3, 2), (2, 1), (0, 1, 1, 0), (2, 2), 1),  # dilation, even kernel width
    (1, 2, 9, 70, 33, (1, 4), (1, 2), (0, 2, 0, 1), (1, 1), 1),  # several column blocks
    (2, 3, 6, 6, 16, (3, 3), (3, 1), (0, 0, 0, 0), (1, 1), 1),  # height stride 3, no pads
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tactic", TACTICS)
def test_direct_rows_geometries(rng: np.random.Generator, case: tuple, tactic: str) -> None:
    one, expected = _conv_case(rng, case, activation="Clip", beta=6.0)
    assert_close(one.run_tactic(tactic), expected)


@pytest.fixture(scope="module")
def other_form() -> object:
    """``direct_rows_conv`` compiled with ``QUADS`` flipped: the form this host does not run.

    The host's own kernel runs (and so compiles) first, the flipped one compiles inside the
    patch on a first case, and the patch is undone before any test runs: nothing else, and no
    on-disk cache entry, ever sees the flipped flag."""
    rng = np.random.default_rng(7)
    one, _ = _conv_case(rng, CASES[0], activation="HardSwish")
    one.run_tactic(TACTICS[0])
    kernel = njit(error_model="numpy", parallel=True, nogil=True, fastmath={"contract"})(
        conv_rows.direct_rows_conv.py_func
    )
    patch = pytest.MonkeyPatch()
    patch.setattr(conv_rows, "QUADS", not conv_rows.QUADS)
    patch.setattr(conv_rows, "direct_rows_conv", kernel)
    try:
        one.run_tactic(TACTICS[0])
    finally:
        patch.undo()
    return kernel


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("residual", [None, "post"])
def test_direct_rows_other_form(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    other_form: object,
    case: tuple,
    residual: str | None,
) -> None:
    monkeypatch.setattr(conv_rows, "direct_rows_conv", other_form)
    one, expected = _conv_case(rng, case, activation="HardSwish", residual=residual)
    assert_close(one.run_tactic(TACTICS[0]), expected)
    assert len(other_form.signatures) == 1  # type: ignore[attr-defined]  # no recompile outside the patch


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: e[0] or "none")
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("tactic", TACTICS)
def test_direct_rows_epilogues(
    rng: np.random.Generator, epilogue: tuple[str, float, float], residual: str | None, tactic: str
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
        assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS)
def test_direct_rows_plain_conv_and_1d(rng: np.random.Generator, tactic: str) -> None:
    one, expected = _conv_case(rng, CASES[0], op_type="Conv", with_bias=False)
    assert_close(one.run_tactic(tactic), expected)
    x = rng.standard_normal((2, 3, 41)).astype(np.float32)
    w = rng.standard_normal((18, 3, 5)).astype(np.float32)
    b = rng.standard_normal(18).astype(np.float32)
    attrs = {"kernel_shape": [5], "strides": [2], "pads": [2, 1], "dilations": [2], "group": 1}
    z = conv_oracle(x[:, :, None, :], w[:, :, None, :], b, (1, 2), (0, 2, 0, 1), (1, 2), 1)[:, :, 0, :]
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True).feed("b", b, const=True)
    one.build(z.shape)
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


def test_direct_rows_declines_many_channels_groups_and_width_stride_3(rng: np.random.Generator) -> None:
    for case in (
        (1, 9, 8, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 9 input channels
        (1, 4, 8, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),  # grouped
        (1, 3, 9, 9, 4, (3, 3), (1, 3), (1, 1, 1, 1), (1, 1), 1),  # width stride 3
    ):
        one, _ = _conv_case(rng, case)
        for tactic in TACTICS:
            assert not get_tactic(tactic).supports(one.node, one.graph)
