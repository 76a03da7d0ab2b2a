"""HardSwish / HardSigmoid fusion: PaddlePaddle's hard_swish as paddle2onnx writes it
(x * Clip(x + 3, 0, 6) / 6), its other orders, and the guards."""

from __future__ import annotations

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_numbers, run_pass

from farm.compiler.passes import optimize
from farm.compiler.passes.hardswish_fusion import HardSwishFusion

SHAPE = ("n", 8, 5, 5)
RNG = np.random.default_rng(5)


def hard_swish_chain(
    b: Builder, x: str, form: str, *, low: float = 0.0, high: float = 6.0, three: float = 3.0
) -> str:
    """x * Clip(x + 3, low, high) / 6 in the order ``form`` names."""
    a = b.op("Add", [x, b.const(np.float32(three))], shape=SHAPE)
    g = b.op("Clip", [a, b.const(np.float32(low)), b.const(np.float32(high))], shape=SHAPE)
    if form == "mul_then_div":  # paddle2onnx
        return b.op("Div", [b.op("Mul", [x, g], shape=SHAPE), b.const(np.float32(6.0))], shape=SHAPE)
    if form == "mul_then_sixth":
        return b.op("Mul", [b.const(np.float32(1 / 6)), b.op("Mul", [g, x], shape=SHAPE)], shape=SHAPE)
    assert form == "gate_then_mul"  # x * (Clip(x + 3, 0, 6) / 6): the gate is a HardSigmoid
    return b.op("Mul", [x, b.op("Div", [g, b.const(np.float32(6.0))], shape=SHAPE)], shape=SHAPE)


@pytest.mark.parametrize("form", ["mul_then_div", "mul_then_sixth", "gate_then_mul"])
def test_chains_become_one_activation(form: str) -> None:
    b = Builder()
    x = b.op("Relu", [b.input("x", SHAPE)], shape=SHAPE)  # a computed x, read twice by the chain
    before = b.output(hard_swish_chain(b, x, form))
    after, result = run_pass(HardSwishFusion(), before)
    if form == "gate_then_mul":
        assert after.op_histogram() == {"Relu": 1, "HardSigmoid": 1, "Mul": 1}
        (gate,) = [n for n in after.nodes if n.op_type == "HardSigmoid"]
        assert gate.attrs == {"alpha": pytest.approx(1 / 6), "beta": 0.5}
    else:
        assert after.op_histogram() == {"Relu": 1, "HardSwish": 1}
        assert result.changes == {"fused HardSwish (Add, Clip, Mul, Div)": 1}
    assert_same_numbers(before, after, {"n": 2})


@pytest.mark.parametrize("form", ["mul_then_div", "gate_then_mul"])
def test_after_a_conv_the_pipeline_makes_one_fused_conv(form: str) -> None:
    """Conv -> the chain: the whole pipeline ends in one FusedConv with a HardSwish epilogue."""
    b = Builder()
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    x = b.op("Conv", [b.input("x", ("n", 3, 5, 5)), b.const(w)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
             shape=SHAPE)  # fmt: skip
    before = b.output(hard_swish_chain(b, x, form))
    after, _ = optimize(before)
    (node,) = after.nodes
    assert node.op_type == "FusedConv" and node.attrs["activation"] == "HardSwish"
    assert_same_numbers(before, after, {"n": 2})


def test_guards() -> None:
    for kwargs in ({"high": 5.0}, {"low": -1.0}, {"three": 2.0}):
        b = Builder()
        x = b.op("Relu", [b.input("x", SHAPE)], shape=SHAPE)
        before = b.output(hard_swish_chain(b, x, "mul_then_div", **kwargs))  # type: ignore[arg-type]
        assert run_pass(HardSwishFusion(), before)[1].changed == 0, kwargs
    b = Builder()  # the Clip's output is read by a second node
    x = b.op("Relu", [b.input("x", SHAPE)], shape=SHAPE)
    a = b.op("Add", [x, b.const(np.float32(3.0))], shape=SHAPE)
    g = b.op("Clip", [a, b.const(np.float32(0.0)), b.const(np.float32(6.0))], shape=SHAPE)
    y = b.op("Div", [b.op("Mul", [x, g], shape=SHAPE), b.const(np.float32(6.0))], shape=SHAPE)
    assert run_pass(HardSwishFusion(), b.output(y, g))[1].changed == 0
    b = Builder()  # a constant that broadcasts x to a larger shape
    x = b.input("x", (8, 5, 5))
    a = b.op("Add", [x, b.const(np.full((1, 1, 1, 1), 3.0, np.float32))], shape=(1, 8, 5, 5))
    g = b.op("Clip", [a, b.const(np.float32(0.0)), b.const(np.float32(6.0))], shape=(1, 8, 5, 5))
    y = b.op("Div", [g, b.const(np.float32(6.0))], shape=(1, 8, 5, 5))
    assert run_pass(HardSwishFusion(), b.output(y))[1].changed == 0
