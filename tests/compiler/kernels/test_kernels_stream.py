"""The streamed-input form of ``depthwise_rows`` and ``pointwise_tiles`` (each input plane, or a
task's pixels of every channel, read once in order before the tiles' strided walk: taken for
inputs larger than ``_stream.STREAM_BYTES``) gives the same results as the plain one; here the
threshold is lowered to 0 so the small test layers take it."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import assert_close
from test_kernels_conv import _conv_case

from farm.compiler.kernels.cpu import depthwise_rows, pointwise_tiles
from farm.compiler.kernels.cpu._stream import stream_in

CASES = [
    ("cpu.conv.depthwise_rows", (2, 13, 15, 14, 13, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 13)),
    ("cpu.conv.depthwise_rows", (1, 32, 40, 40, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32)),
    ("cpu.conv.depthwise_rows_1t", (3, 6, 10, 13, 6, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 6)),
    ("cpu.conv.pointwise_tiles", (2, 7, 9, 11, 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
    ("cpu.conv.pointwise_tiles", (1, 40, 10, 10, 52, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
    ("cpu.conv.pointwise_tiles", (1, 16, 14, 14, 24, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1)),
]


@pytest.mark.parametrize(("tactic", "case"), CASES)
@pytest.mark.parametrize("residual", [None, "post"])
def test_streamed_input_gives_the_same_result(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, tactic: str, case: tuple, residual: str | None
) -> None:
    monkeypatch.setattr(depthwise_rows, "STREAM_BYTES", 0)
    monkeypatch.setattr(pointwise_tiles, "STREAM_BYTES", 0)
    one, expected = _conv_case(rng, case, activation="Relu", residual=residual)
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize(("start", "count"), [(0, 64), (3, 50), (5, 15), (0, 0)])
def test_stream_in_reads_only_the_range(rng: np.random.Generator, start: int, count: int) -> None:
    """It folds whole 16-float vectors from ``start`` (none past ``start + count``) into the sink
    (a running maximum that starts at 0)."""
    arr = rng.standard_normal(80).astype(np.float32)
    sink = np.full(16, -np.inf, np.float32)
    stream_in(arr, start, count, sink)
    whole = count // 16 * 16
    want = np.zeros(16, np.float32)
    if whole:
        want = np.maximum(want, arr[start : start + whole].reshape(-1, 16).max(axis=0))
    np.testing.assert_array_equal(sink, want)
