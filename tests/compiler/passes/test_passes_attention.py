"""Attention fusion on hand-built BERT-, SDPA- and ViT-style attention blocks."""

from __future__ import annotations

import math

import numpy as np
from passes_graphs import Builder, assert_same_graph, assert_same_numbers, run_pass

from farm.compiler.passes.attention_fusion import AttentionFusion
from farm.compiler.passes.dead_code import DeadCodeElimination

B, S, H, D = "batch", 6, 2, 8
HD = H * D


def proj(b: Builder, x: str, rng: np.random.Generator, width: int = HD) -> str:
    m = b.op("MatMul", [x, b.const(rng.standard_normal((HD, width)).astype(np.float32))], shape=(B, S, width))
    return b.op("Add", [m, b.const(rng.standard_normal(width).astype(np.float32))], shape=(B, S, width))


def split_heads(b: Builder, t: str, perm: list[int]) -> str:
    r = b.op("Reshape", [t, b.const(np.array([0, 0, H, D]))], shape=(B, S, H, D))
    out_shape = tuple((B, S, H, D)[p] for p in perm)
    return b.op("Transpose", [r], {"perm": perm}, shape=out_shape)


def merge_heads(b: Builder, ctx: str) -> str:
    t = b.op("Transpose", [ctx], {"perm": [0, 2, 1, 3]}, shape=(B, S, H, D))
    return b.op("Reshape", [t, b.const(np.array([0, 0, HD]))], shape=(B, S, HD))


def bert_attention(with_mask: bool = True, scores_output: bool = False, seed: int = 5):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    b = Builder()
    x = b.input("x", (B, S, HD))
    mask = b.input("mask", (B, 1, 1, S)) if with_mask else ""
    q, k, v = proj(b, x, rng), proj(b, x, rng), proj(b, x, rng)
    qh = split_heads(b, q, [0, 2, 1, 3])
    kt = split_heads(b, k, [0, 2, 3, 1])
    vh = split_heads(b, v, [0, 2, 1, 3])
    scores = b.op("MatMul", [qh, kt], shape=(B, H, S, S))
    scaled = b.op("Div", [scores, b.const(np.float32(math.sqrt(D)))], shape=(B, H, S, S))
    if with_mask:
        scaled = b.op("Add", [scaled, mask], shape=(B, H, S, S))
    p = b.op("Softmax", [scaled], {"axis": -1}, shape=(B, H, S, S))
    ctx = b.op("MatMul", [p, vh], shape=(B, H, S, D))
    outputs = [merge_heads(b, ctx)] + ([scores] if scores_output else [])
    return b.output(*outputs), (q, k, v)


def expected_attention(with_mask: bool, scale: float, seed: int = 5):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    e = Builder()
    x = e.input("x", (B, S, HD))
    inputs = [proj(e, x, rng), proj(e, x, rng), proj(e, x, rng)]
    if with_mask:
        inputs.append(e.input("mask", (B, 1, 1, S)))
    return e.output(e.op("Attention", inputs, {"num_heads": H, "scale": scale}, shape=(B, S, HD)))


def fused(before):  # type: ignore[no-untyped-def]
    after, result = run_pass(AttentionFusion(), before)
    after, _ = run_pass(DeadCodeElimination(), after)
    return after, result


def test_bert_style_attention_with_mask() -> None:
    before, _ = bert_attention()
    after, result = fused(before)
    assert result.changes == {"fused Attention": 1}
    # the projections keep their own (random) weights: compare structure, then numbers
    assert after.op_histogram() == {"Add": 3, "Attention": 1, "MatMul": 3}
    attention = after.find("Attention")[0]
    assert attention.attrs["num_heads"] == H
    assert math.isclose(attention.attrs["scale"], 1 / math.sqrt(D), rel_tol=1e-6)
    assert attention.inputs[3] == "mask"
    assert [after.producer(i).op_type for i in attention.inputs[:3]] == ["Add", "Add", "Add"]  # type: ignore[union-attr]
    assert_same_numbers(before, after, {"batch": 3})


def test_structure_matches_expected_graph_without_mask() -> None:
    before, _ = bert_attention(with_mask=False)
    expected = expected_attention(False, float(1 / np.float32(math.sqrt(D))))
    after, _ = fused(before)
    assert_same_graph(after, expected)
    assert_same_numbers(before, after)


def test_sdpa_style_scales_on_q_and_k() -> None:
    rng = np.random.default_rng(6)
    b = Builder()
    x = b.input("x", (B, S, HD))
    q, k, v = proj(b, x, rng), proj(b, x, rng), proj(b, x, rng)
    root = np.float32(math.sqrt(1 / math.sqrt(D)))
    qh = b.op("Mul", [split_heads(b, q, [0, 2, 1, 3]), b.const(root)], shape=(B, H, S, D))
    kh = split_heads(b, k, [0, 2, 1, 3])
    kt = b.op(
        "Mul",
        [b.op("Transpose", [kh], {"perm": [0, 1, 3, 2]}, shape=(B, H, D, S)), b.const(root)],
        shape=(B, H, D, S),
    )
    p = b.op("Softmax", [b.op("MatMul", [qh, kt], shape=(B, H, S, S))], {"axis": -1}, shape=(B, H, S, S))
    before = b.output(
        merge_heads(b, b.op("MatMul", [p, split_heads(b, v, [0, 2, 1, 3])], shape=(B, H, S, D)))
    )
    after, result = fused(before)
    assert result.changes == {"fused Attention": 1}
    assert math.isclose(after.find("Attention")[0].attrs["scale"], 1 / math.sqrt(D), rel_tol=1e-6)
    assert_same_numbers(before, after)


def test_vit_style_packed_qkv_becomes_split() -> None:
    b = Builder()
    x = b.input("x", (B, S, HD))
    qkv = proj(b, x, np.random.default_rng(7), 3 * HD)
    r = b.op("Reshape", [qkv, b.const(np.array([0, 0, 3, H, D]))], shape=(B, S, 3, H, D))
    t = b.op("Transpose", [r], {"perm": [2, 0, 3, 1, 4]}, shape=(3, B, H, S, D))
    parts = b.op("Split", [t, b.const(np.array([1, 1, 1]))], {"axis": 0}, outputs=3, shape=(1, B, H, S, D))
    zero = b.const(np.array([0]))
    q, k, v = (b.op("Squeeze", [p, zero], shape=(B, H, S, D)) for p in parts)
    kt = b.op("Transpose", [k], {"perm": [0, 1, 3, 2]}, shape=(B, H, D, S))
    scores = b.op(
        "Mul", [b.op("MatMul", [q, kt], shape=(B, H, S, S)), b.const(np.float32(0.25))], shape=(B, H, S, S)
    )
    p = b.op("Softmax", [scores], {"axis": -1}, shape=(B, H, S, S))
    before = b.output(merge_heads(b, b.op("MatMul", [p, v], shape=(B, H, S, D))))
    after, result = fused(before)
    assert result.changes == {"fused Attention": 1}
    assert after.op_histogram() == {"Add": 1, "Attention": 1, "MatMul": 1, "Split": 1}
    split = after.find("Split")[0]
    assert split.attrs == {"axis": -1} and list(after.const(split.inputs[1])) == [HD, HD, HD]  # type: ignore[arg-type]
    assert after.find("Attention")[0].inputs == split.outputs
    assert_same_numbers(before, after, {"batch": 2})


def test_guards_decline() -> None:
    before, _ = bert_attention(scores_output=True)  # scores also a graph output
    assert run_pass(AttentionFusion(), before)[1].changed == 0
    # softmax over a non-last axis
    before, _ = bert_attention()
    before.find("Softmax")[0].attrs["axis"] = 2
    assert run_pass(AttentionFusion(), before)[1].changed == 0
    # V split into a different number of heads than Q and K
    before, (q, k, v) = bert_attention()
    for node in before.nodes:
        if node.op_type == "Reshape" and node.inputs[0] == v:
            node.inputs[1] = before.add_const("v_heads", np.array([0, 0, 4, 4])).name
            before.values[node.outputs[0]].shape = (B, S, 4, 4)
    assert run_pass(AttentionFusion(), before)[1].changed == 0
