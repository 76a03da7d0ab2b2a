"""Pooling tactics against float64 window oracles (pads, strides, dilations, ceil_mode)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close

from farm.compiler.kernels import get_tactic


def _out_size(size: int, k: int, s: int, pad_begin: int, pad_end: int, d: int, ceil_mode: bool) -> int:
    """ONNX's pooled size; with ceil_mode the last window must start inside the input or its leading pad."""
    span = (k - 1) * d + 1
    out = (math.ceil if ceil_mode else math.floor)((size + pad_begin + pad_end - span) / s) + 1
    if ceil_mode and (out - 1) * s >= size + pad_begin:
        out -= 1
    return out


def pool_oracle(
    x: np.ndarray,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    out_hw: tuple[int, int],
    is_max: bool,
    count_include_pad: bool,
) -> np.ndarray:
    """Every window evaluated explicitly; the divisor counts taps in the counted region."""
    n, c, h, w = x.shape
    ho, wo = out_hw
    out = np.empty((n, c, ho, wo))
    lo_y, hi_y = (-pads[0], h + pads[2]) if count_include_pad else (0, h)
    lo_x, hi_x = (-pads[1], w + pads[3]) if count_include_pad else (0, w)
    for oy in range(ho):
        for ox in range(wo):
            ys = [oy * strides[0] - pads[0] + i * dilations[0] for i in range(kernel[0])]
            xs = [ox * strides[1] - pads[1] + j * dilations[1] for j in range(kernel[1])]
            inside = [(y, xx) for y in ys for xx in xs if 0 <= y < h and 0 <= xx < w]
            vals = np.stack([x[:, :, y, xx] for y, xx in inside], axis=-1).astype(np.float64)
            if is_max:
                out[:, :, oy, ox] = vals.max(axis=-1)
            else:
                count = sum(1 for y in ys if lo_y <= y < hi_y) * sum(1 for xx in xs if lo_x <= xx < hi_x)
                out[:, :, oy, ox] = vals.sum(axis=-1) / count
    return out


# (N, C, H, W, kernel, strides, pads, dilations, ceil_mode)
CASES = [
    (1, 3, 9, 11, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
    (3, 4, 8, 7, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True),
    (2, 2, 10, 9, (3, 2), (1, 2), (1, 0, 0, 1), (1, 1), False),
    (1, 2, 12, 12, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), False),
    (2, 64, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),  # parallel path
    (2, 3, 13, 17, (5, 4), (3, 2), (2, 1, 2, 3), (1, 2), True),  # generic taps, ceil_mode past the pad
    (1, 2, 6, 23, (1, 3), (1, 3), (0, 2, 0, 2), (1, 3), False),  # one-row window, stride 3
    (1, 4, 5, 5, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), False),  # window as large as the plane
    (3, 7, 10, 10, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), False),  # YOLO SPPF, rows < 16
    (1, 3, 7, 37, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False),  # rows past one 16-lane block
    (2, 5, 23, 50, (3, 3), (2, 2), (1, 0, 1, 1), (1, 1), True),  # ResNet-like stride 2, ragged tail
    (1, 2, 4, 40, (2, 7), (1, 2), (0, 3, 1, 3), (1, 2), False),  # wide dilated taps, stride 2
]
TACTICS = ["cpu.pool.window", "cpu.pool.separable", "cpu.pool.rows"]
ROWS = "cpu.pool.rows"  # width strides 1 and 2 only


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    ("op_type", "count_include_pad"), [("MaxPool", False), ("AveragePool", False), ("AveragePool", True)]
)
@pytest.mark.parametrize("tactic", TACTICS)
def test_window_pool_matches_oracle(
    rng: np.random.Generator, case: tuple, op_type: str, count_include_pad: bool, tactic: str
) -> None:
    n, c, h, w, kernel, strides, pads, dilations, ceil_mode = case
    if op_type == "AveragePool" and dilations != (1, 1):
        dilations = (1, 1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    ho = _out_size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil_mode)
    wo = _out_size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil_mode)
    attrs = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "pads": list(pads),
        "dilations": list(dilations),
        "ceil_mode": int(ceil_mode),
    }
    if op_type == "AveragePool":
        attrs["count_include_pad"] = int(count_include_pad)
    one = OneNode(op_type, attrs).feed("x", x)
    one.build((n, c, ho, wo))
    if tactic == ROWS and strides[1] > 2:
        assert not get_tactic(ROWS).supports(one.node, one.graph)
        return
    expected = pool_oracle(
        x, kernel, strides, pads, dilations, (ho, wo), op_type == "MaxPool", count_include_pad
    )
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: expected))


@pytest.mark.parametrize("tactic", TACTICS)
def test_pool_1d(rng: np.random.Generator, tactic: str) -> None:
    x = rng.standard_normal((2, 3, 15)).astype(np.float32)
    one = OneNode("MaxPool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}).feed("x", x)
    one.build((2, 3, 8))
    expected = pool_oracle(x[:, :, None, :], (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), (1, 8), True, False)[
        :, :, 0, :
    ]
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: expected))


@pytest.mark.parametrize("shape", [(1, 5, 7, 7), (3, 64, 14, 13)])
def test_global_average_pool(rng: np.random.Generator, shape: tuple) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    one = OneNode("GlobalAveragePool").feed("x", x)
    one.build((shape[0], shape[1], 1, 1))
    expected = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    assert_close(one.run_tactic("cpu.pool.global_average"), one.expected(lambda *_: expected))
