"""Packed-QKV attention: an Attention whose Q, K and V are the three parts of one Split reads the
packed tensor instead (the Split goes), and only then."""

from __future__ import annotations

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_numbers, run_pass

from farm.compiler.ir import Graph
from farm.compiler.passes.packed_attention import PackedAttention

RNG = np.random.default_rng(5)
HEADS, HIDDEN = 2, 8


def qkv_graph(
    *, sizes: tuple[int, ...] = (HIDDEN,) * 3, order: tuple[int, ...] = (0, 1, 2), axis: int = -1,
    extra_reader: bool = False, mask: bool = True, split_input: bool = True,
) -> Graph:  # fmt: skip
    """x [batch, 5, 16] -> FusedGemm -> [batch, 5, sum(sizes)] -> Split -> Attention(parts in
    ``order``, mask?)."""
    b = Builder()
    x = b.input("x", ("batch", 5, 16))
    width = sum(sizes)
    w = RNG.standard_normal((16, width)).astype(np.float32)
    bias = RNG.standard_normal(width).astype(np.float32)
    qkv = b.op("FusedGemm", [x, b.const(w), b.const(bias)], {"transB": 0, "activation": "", "alpha": 0.0,
               "beta": 0.0}, shape=("batch", 5, width))  # fmt: skip
    split_inputs = [qkv, b.const(np.array(sizes, np.int64))] if split_input else [qkv]
    attrs = {"axis": axis} if split_input else {"axis": axis, "num_outputs": 3}
    parts = b.op("Split", split_inputs, attrs, outputs=3, shape=("batch", 5, HIDDEN))
    inputs = [parts[i] for i in order]
    if mask:
        inputs.append(b.input("mask", ("batch", 1, 1, 5)))
    y = b.op("Attention", inputs, {"num_heads": HEADS, "scale": 0.35}, shape=("batch", 5, HIDDEN))
    outs = [y, b.op("Relu", [parts[0]], shape=("batch", 5, HIDDEN))] if extra_reader else [y]
    return b.output(*outs)


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("split_input", [True, False])
def test_attention_reads_the_packed_projection(mask: bool, split_input: bool) -> None:
    before = qkv_graph(mask=mask, split_input=split_input)
    after, result = run_pass(PackedAttention(), before)
    assert result.changes == {"packed Attention inputs": 1}
    assert after.op_histogram() == {"FusedGemm": 1, "Attention": 1}
    (attention,) = after.find("Attention")
    gemm = after.find("FusedGemm")[0]
    assert attention.inputs[:3] == [gemm.outputs[0], "", ""]
    assert attention.attrs["packed_qkv"] == 1 and attention.attrs["num_heads"] == HEADS
    assert attention.outputs == before.find("Attention")[0].outputs
    assert_same_numbers(before, after, {"batch": 3})


@pytest.mark.parametrize(
    "variant",
    [
        {"sizes": (HIDDEN, HIDDEN, HIDDEN + 4)},  # unequal parts
        {"order": (1, 0, 2)},  # K first: not the packed order
        {"extra_reader": True},  # a part is read elsewhere too
    ],
)
def test_other_splits_are_left_alone(variant: dict) -> None:
    before = qkv_graph(**variant)
    after, result = run_pass(PackedAttention(), before)
    assert result.changed == 0
    assert after.op_histogram() == before.op_histogram()
