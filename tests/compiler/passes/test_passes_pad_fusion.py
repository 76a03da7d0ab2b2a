"""Pad fusion: a zero Pad of the spatial axes folded into the Conv that reads it."""

from __future__ import annotations

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_numbers, run_pass

from farm.compiler import optimize
from farm.compiler.ir import Graph, verify
from farm.compiler.passes.pad_fusion import PadFusion


def pad_conv(
    pads: list[int],
    *,
    conv_pads: list[int] | None = None,
    mode: str = "constant",
    fill: float | None = None,
    axes: list[int] | None = None,
    strides: tuple[int, int] = (1, 1),
    second_reader: bool = False,
) -> Graph:
    """x [2, 3, 9, 8] -> Pad -> Conv(4 x 3 x 3 x 3, bias) (-> output; optionally Pad -> Relu too)."""
    rng = np.random.default_rng(0)
    b = Builder()
    x = b.input("x", (2, 3, 9, 8))
    inputs = [x, b.const(np.array(pads, np.int64))]
    if fill is not None or axes is not None:
        inputs.append(b.const(np.array(fill if fill is not None else 0.0, np.float32)))
    if axes is not None:
        inputs.append(b.const(np.array(axes, np.int64)))
    padded = b.op("Pad", inputs, {"mode": mode}, shape=None)
    w = b.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    bias = b.const(rng.standard_normal(4).astype(np.float32))
    attrs = {"kernel_shape": [3, 3], "strides": list(strides), "pads": conv_pads or [0, 0, 0, 0]}
    y = b.op("Conv", [padded, w, bias], attrs, shape=None)
    if second_reader:
        return b.output(y, b.op("Relu", [padded], shape=None))
    return b.output(y)


def test_spatial_zero_pad_goes_into_the_conv_pads() -> None:
    before = pad_conv([0, 0, 1, 2, 0, 0, 3, 1], conv_pads=[1, 0, 0, 1], strides=(2, 2))
    after, result = run_pass(PadFusion(), before)
    verify(after)
    assert result.changes == {"folded Pad into Conv": 1}
    assert after.op_histogram() == {"Conv": 1}
    (conv,) = after.nodes
    assert conv.inputs[0] == "x" and conv.attrs["pads"] == [2, 2, 3, 2]
    assert_same_numbers(before, after)


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param(pad_conv([0, 0, 1, 1, 0, 0, 1, 1], fill=0.5), id="nonzero fill"),
        pytest.param(pad_conv([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), id="reflect"),
        pytest.param(pad_conv([0, 1, 1, 1, 0, 0, 1, 1]), id="channel axis padded"),
        pytest.param(pad_conv([0, 0, -1, 1, 0, 0, 1, 1]), id="crop"),
        pytest.param(pad_conv([0, 0, 1, 1, 0, 0, 1, 1], second_reader=True), id="read twice"),
    ],
)
def test_declines(graph: Graph) -> None:
    after, result = run_pass(PadFusion(), graph)
    assert not result.changes
    assert "Pad" in after.op_histogram()


def test_axes_input_and_the_whole_pipeline() -> None:
    """Opset 18's ``axes`` (negative ones too), a zero fill given explicitly; through the whole
    pipeline the Conv then takes its bias and activation as usual."""
    before = pad_conv([2, 1, 0, 3], axes=[-2, -1], fill=0.0)
    after, report = optimize(before, verify_each=True)
    assert report["pad_fusion"].changes == {"folded Pad into Conv": 1}
    assert "Pad" not in after.op_histogram()
    assert_same_numbers(before, after)
