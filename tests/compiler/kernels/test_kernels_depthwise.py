"""The depthwise tactics of ``cpu/depthwise.py``, ``cpu/depthwise_rows.py`` and
``cpu/depthwise_slide.py`` against the
float64 direct convolution of test_kernels_conv.py and the reference: strides 1, 2, 3, (1, 2) and
(2, 1), dilation 2, kernels 1/3/4/5/7 and non-square, symmetric and asymmetric pads, channel
multiplier 2, batch 1 and 3, odd widths, widths of several 16-column blocks, every epilogue
activation and residual mode, weights fed at run time, and one prepared node run at several input
shapes."""

from __future__ import annotations

import numpy as np
import pytest
import test_kernels_conv as conv_tests
from kernels_harness import OneNode, assert_close
from test_kernels_conv import _conv_case, conv_oracle

from farm.compiler.kernels import get_tactic

TACTICS = [
    "cpu.conv.depthwise_plane",
    "cpu.conv.depthwise_plane_1t",
    "cpu.conv.depthwise_rows",
    "cpu.conv.depthwise_rows_1t",
    "cpu.conv.depthwise_slide",
    "cpu.conv.depthwise_slide_1t",
]


def _declines(tactic: str, case: tuple) -> bool:
    """Whether ``tactic`` leaves the geometry of ``case`` to the others (rows: width strides 1
    and 2; slide: square kernels without dilation, 3x3 / 5x5 at the same stride 1 or 2 both
    ways, 7x7 at stride 1)."""
    kernel, strides, dilations = case[5], case[6], case[8]
    if "depthwise_rows" in tactic:
        return strides[1] not in (1, 2)
    if "depthwise_slide" in tactic:
        square = len(kernel) == 2 and kernel[0] == kernel[1] and strides[0] == strides[1]
        if not square or tuple(dilations) != (1, 1):
            return True
        return not ((kernel[0] in (3, 5) and strides[0] in (1, 2)) or (kernel[0] == 7 and strides[0] == 1))
    return False


def _dw(
    n: int, c: int, h: int, w: int, mult: int, kernel: tuple, strides: tuple, pads: tuple, dil: tuple
) -> tuple:
    """A depthwise case in test_kernels_conv's form (N, C, H, W, M, kernel, strides, pads, dilations, group)."""
    return (n, c, h, w, c * mult, kernel, strides, pads, dil, c)


CASES = [
    _dw(1, 8, 14, 14, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    _dw(1, 16, 112, 112, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # several row blocks, both threads
    _dw(3, 6, 13, 13, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    _dw(1, 12, 14, 14, 1, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # TF-style asymmetric pads
    _dw(3, 5, 7, 13, 1, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    _dw(1, 9, 28, 28, 1, (5, 5), (2, 2), (1, 2, 2, 1), (1, 1)),
    _dw(1, 7, 14, 14, 1, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1)),
    _dw(1, 4, 13, 7, 1, (7, 7), (2, 2), (3, 2, 1, 3), (1, 1)),
    _dw(3, 6, 13, 14, 1, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)),
    _dw(1, 5, 14, 13, 1, (3, 3), (2, 1), (0, 1, 2, 1), (1, 1)),
    _dw(1, 6, 14, 14, 1, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),  # dilation 2
    _dw(3, 5, 13, 13, 1, (3, 3), (2, 2), (2, 1, 2, 2), (2, 2)),
    _dw(1, 4, 14, 7, 1, (5, 5), (1, 2), (4, 4, 3, 2), (2, 1)),
    _dw(1, 3, 14, 14, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # channel multiplier 2
    _dw(3, 5, 13, 7, 2, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1)),
    _dw(1, 4, 9, 11, 1, (3, 3), (3, 3), (1, 0, 2, 1), (1, 1)),  # stride 3
    _dw(1, 6, 9, 10, 1, (2, 4), (1, 1), (0, 1, 1, 2), (1, 1)),  # even, non-square kernel
    _dw(1, 5, 7, 9, 1, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),  # 1x1
    _dw(3, 4, 5, 6, 1, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),  # no padding, tiny plane
    # widths of several 16-column blocks: interior blocks and a ragged last one
    _dw(1, 6, 40, 70, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    _dw(2, 3, 9, 41, 1, (3, 4), (1, 2), (1, 2, 1, 1), (1, 2)),
    _dw(1, 4, 11, 37, 1, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1)),
    _dw(1, 4, 6, 33, 2, (1, 5), (1, 2), (0, 0, 2, 2), (1, 1)),
    # the sliding window's edges: a 5x5 kernel over several blocks with uneven pads, pads wider
    # than the kernel's reach, planes smaller than the kernel, a single output row or column
    _dw(2, 3, 17, 45, 1, (5, 5), (1, 1), (2, 0, 1, 2), (1, 1)),
    _dw(1, 4, 23, 35, 1, (5, 5), (2, 2), (0, 2, 2, 0), (1, 1)),
    _dw(1, 5, 8, 9, 1, (3, 3), (1, 1), (3, 2, 2, 3), (1, 1)),
    _dw(2, 3, 3, 4, 1, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    _dw(1, 4, 2, 2, 1, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1)),
    _dw(1, 3, 3, 40, 1, (3, 3), (1, 1), (0, 1, 0, 1), (1, 1)),
    _dw(1, 3, 40, 3, 1, (3, 3), (2, 2), (1, 0, 1, 0), (1, 1)),
    # 7x7 at stride 1 (ConvNeXt): several blocks, uneven pads, a plane smaller than the kernel
    _dw(2, 3, 20, 37, 1, (7, 7), (1, 1), (3, 2, 1, 3), (1, 1)),
    _dw(1, 4, 5, 6, 2, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1)),
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


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_geometries(rng: np.random.Generator, case: tuple, tactic: str) -> None:
    one, expected = _conv_case(rng, case, activation="Clip", beta=6.0)
    if _declines(tactic, case):
        assert not get_tactic(tactic).supports(one.node, one.graph)
        return
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: e[0] or "none")
@pytest.mark.parametrize("residual", [None, "pre", "post"])
@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_epilogues(
    rng: np.random.Generator, epilogue: tuple[str, float, float], residual: str | None, tactic: str
) -> None:
    activation, alpha, beta = epilogue
    for case in (CASES[2], CASES[13]):  # stride 2 batch 3, multiplier 2
        for with_bias in (True, False):
            one, expected = _conv_case(
                rng,
                case,
                activation=activation,
                alpha=alpha,
                beta=beta,
                residual=residual,
                with_bias=with_bias,
            )
            assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_runtime_weights(rng: np.random.Generator, tactic: str, with_bias: bool) -> None:
    """Weight (and bias) fed at run time on a plain Conv, nothing packed in ``prepare``."""
    const, expected = _conv_case(rng, CASES[5], op_type="Conv", with_bias=with_bias)
    one = OneNode("Conv", const.attrs)
    for name, array in zip(const.input_names, const.arrays(), strict=True):
        one.feed(name, array)  # type: ignore[arg-type]
    one.build(expected.shape)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS)
def test_depthwise_new_input_shape_reuses_nothing_stale(rng: np.random.Generator, tactic: str) -> None:
    """One prepared node run at three input shapes in turn: the workspaces follow the shape, and
    the padding of a run is not polluted by the pixels of the run before."""
    t = get_tactic(tactic)
    one, _ = _conv_case(
        rng, _dw(3, 6, 14, 14, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)), activation="Clip", beta=6.0
    )
    prepared = t.prepare(one.node, one.graph)
    _, w, b = one.arrays()
    assert w is not None and b is not None
    inputs = [None if i in prepared.replaces else a for i, a in enumerate(one.arrays())]
    for shape in ((3, 6, 14, 14), (1, 6, 13, 15), (2, 6, 14, 14)):
        inputs[0] = rng.standard_normal(shape).astype(np.float32)
        z = conv_oracle(inputs[0], w, b, (2, 2), (1, 1, 1, 1), (1, 1), 6)
        out = np.full(z.shape, np.nan, np.float32)
        t.run(one.node, inputs, [out], prepared)
        assert_close(out, np.clip(z, 0.0, 6.0))


@pytest.mark.parametrize("tactic", [t for t in TACTICS if "depthwise_slide" not in t])  # 2-D only
def test_depthwise_conv_1d(rng: np.random.Generator, tactic: str) -> None:
    """test_kernels_conv's 1-D depthwise case (stride 2, dilation 2, asymmetric pads) on these tactics."""
    conv_tests.test_depthwise_conv_1d(rng, tactic)


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_runtime_weights_strided(rng: np.random.Generator, tactic: str, with_bias: bool) -> None:
    """test_kernels_conv's runtime-weights case (plain Conv, stride 2, asymmetric pads, batch 2)."""
    conv_tests.test_depthwise_conv_with_runtime_weights(rng, tactic, with_bias)


def test_depthwise_declines_dense_and_grouped(rng: np.random.Generator) -> None:
    for group in (1, 2):
        one, _ = _conv_case(rng, (1, 4, 6, 6, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), group))
        for tactic in TACTICS:
            assert not get_tactic(tactic).supports(one.node, one.graph)


@pytest.mark.parametrize("case", [c for c in CASES if not _declines("cpu.conv.depthwise_slide", c)])
def test_slide_reads_and_writes_stay_in_its_buffer(case: tuple) -> None:
    """The padded plane of ``depthwise_slide`` holds every element its loops touch: the last
    block's 16 lanes (a stride-2 pair: 32 floats from its last tap's start) on the last row the
    window reads, and the copy's 16-lane stores of the last image row."""
    from farm.compiler.kernels.cpu.conv import ConvGeometry
    from farm.compiler.kernels.cpu.depthwise_slide import SLACK, padded_plane

    _, _, h, wi, _, kernel, strides, pads, _, _ = case
    k, s = kernel[0], strides[0]
    geo = ConvGeometry(k, k, s, s, pads[0], pads[1], pads[2], pads[3], 1, 1, case[9])
    ho = (h + pads[0] + pads[2] - k) // s + 1
    wo = (wi + pads[1] + pads[3] - k) // s + 1
    rows, wp = padded_plane(geo, h, wi, ho, wo)
    size = rows * wp + SLACK
    last_block = (wo - 1) // 16 * 16
    last_row = (ho - 1) * s + k - 1
    lanes_read = 2 * 16 if s == 2 else 16
    assert last_row < rows
    assert last_row * wp + last_block * s + (k - 1) + lanes_read <= size
    last_store = (pads[0] + h - 1) * wp + pads[1] + (wi - 1) // 16 * 16 + 16
    assert last_store <= size
    assert pads[1] + wi <= wp and (wo - 1) * s + k <= wp  # a valid output's taps stay in its row
