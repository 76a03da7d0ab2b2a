"""Opsets above 21: op versions whose meaning is the opset-21 one are read natively, function ops
(Attention-23, RMSNormalization-23, Swish-24, ...) are expanded into their ONNX function bodies,
and anything else is refused by name. Checked against ONNX Runtime and independent numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from frontend_models import FLOAT, assert_matches_ort, make_model, random_input
from onnx import TensorProto, helper

from farm.compiler import BuilderConfig, build, load_onnx, reference
from farm.compiler.frontend import UnsupportedModelError, supported_op_types, versions
from farm.compiler.frontend.functions import EXPANDED_DOMAIN

RNG = np.random.default_rng(23)


def attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v over (batch, heads, seq, dim), K/V heads repeated for GQA."""
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def test_every_op_version_above_21_of_a_supported_op_is_reviewed_or_expanded() -> None:
    """A new onnx release adds op versions; until one is reviewed (versions.REVIEWED_NEWER) models
    using it are refused, and this test names it."""
    supported = supported_op_types()
    pending = sorted(
        f"{s.name}-{s.since_version}"
        for s in onnx.defs.get_all_schemas_with_history()
        if not s.domain
        and s.since_version > versions.MAX_OPSET
        and s.name in supported
        and (s.name, s.since_version) not in versions.REVIEWED_NEWER
        and not versions.has_function(s.name, s.since_version)
    )
    assert not pending, f"review these op versions in farm/compiler/frontend/versions.py: {pending}"
    assert versions.NEWEST_OPSET >= 23


def test_attention_23_with_grouped_kv_heads_matches_numpy_and_onnxruntime() -> None:
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)
    shapes = {"q": [2, 4, 6, 8], "k": [2, 2, 6, 8], "v": [2, 2, 6, 8]}
    model = make_model([node], [(n, FLOAT, s) for n, s in shapes.items()], [("y", FLOAT, None)], opset=23)
    feeds = {n: random_input(RNG, s) for n, s in shapes.items()}
    assert_matches_ort(model, feeds)
    got = reference.run(load_onnx(model), feeds)["y"]
    np.testing.assert_allclose(
        got, attention_numpy(feeds["q"], feeds["k"], feeds["v"], True), rtol=1e-5, atol=1e-5
    )


def test_attention_23_3d_inputs_build_into_an_engine() -> None:
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=4, kv_num_heads=4)
    inputs = [("q", FLOAT, ["batch", 5, 32]), ("k", FLOAT, ["batch", 7, 32]), ("v", FLOAT, ["batch", 7, 32])]
    model = make_model([node], inputs, [("y", FLOAT, None)], opset=23)
    graph = load_onnx(model)
    assert all(n.domain != EXPANDED_DOMAIN and n.op_type != "Attention" for n in graph.nodes)
    engine = build(model.SerializeToString(), "cpu", BuilderConfig(tuning_level=0, batch_range=(1, 2, 2)))
    feeds = {
        "q": random_input(RNG, (2, 5, 32)),
        "k": random_input(RNG, (2, 7, 32)),
        "v": random_input(RNG, (2, 7, 32)),
    }
    split = {n: x.reshape(2, -1, 4, 8).transpose(0, 2, 1, 3) for n, x in feeds.items()}
    want = attention_numpy(split["q"], split["k"], split["v"], False).transpose(0, 2, 1, 3).reshape(2, 5, 32)
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("nodes", "opset", "inits"),
    [
        ([helper.make_node("RMSNormalization", ["x", "g"], ["y"], epsilon=1e-3)], 23, {"g": np.float32([0.5, 2, 1, 3])}),
        ([helper.make_node("Swish", ["x"], ["y"], alpha=0.7)], 24, {}),
        ([helper.make_node("Swish", ["x"], ["y"])], 24, {}),  # alpha's default comes from the schema
        ([helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Transpose", ["r"], ["y"])], 25,
         {"s": np.array([3, -1], np.int64)}),
        ([helper.make_node("Elu", ["x"], ["e"]), helper.make_node("Flatten", ["e"], ["y"], axis=2)], 22, {}),
    ],
    ids=["RMSNormalization-23", "Swish-24", "Swish-24 default alpha", "Reshape/Transpose-25", "Elu-22 Flatten-23"],
)  # fmt: skip
def test_newer_opset_models_match_onnxruntime(nodes: list, opset: int, inits: dict) -> None:
    model = make_model(nodes, [("x", FLOAT, [2, 3, 4])], [("y", FLOAT, None)], inits, opset=opset)
    assert_matches_ort(model, {"x": random_input(RNG, (2, 3, 4))})


def test_swish_without_alpha_uses_the_default() -> None:
    model = make_model(
        [helper.make_node("Swish", ["x"], ["y"])], [("x", FLOAT, [5])], [("y", FLOAT, None)], opset=24
    )
    x = random_input(RNG, (5,))
    np.testing.assert_allclose(
        reference.run(load_onnx(model), {"x": x})["y"], x / (1 + np.exp(-x)), rtol=1e-6
    )


def test_space_to_depth_crd_inverts_depth_to_space_crd() -> None:
    nodes = [helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2, mode="CRD"),
             helper.make_node("DepthToSpace", ["s"], ["y"], blocksize=2, mode="CRD")]  # fmt: skip
    model = make_model(nodes, [("x", FLOAT, [1, 3, 4, 6])], [("y", FLOAT, None)], opset=28)
    x = random_input(RNG, (1, 3, 4, 6))
    out = reference.run(load_onnx(model), {"x": x}, outputs=["s", "y"])
    np.testing.assert_array_equal(out["y"], x)
    # channel ci * 4 + bh * 2 + bw holds pixel (2 h + bh, 2 w + bw) of channel ci
    np.testing.assert_array_equal(out["s"][0, 1 * 4 + 1 * 2 + 0], x[0, 1, 1::2, 0::2])


def test_dequantize_output_dtype_casts_the_result() -> None:
    node = helper.make_node("DequantizeLinear", ["q", "scale"], ["y"], output_dtype=TensorProto.FLOAT16)
    model = make_model([node], [("q", TensorProto.INT8, [4, 5])], [("y", TensorProto.FLOAT16, None)],
                       {"scale": np.float32(0.05)}, opset=23)  # fmt: skip
    q = RNG.integers(-128, 128, (4, 5)).astype(np.int8)
    got = reference.run(load_onnx(model), {"q": q})["y"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, (q.astype(np.float32) * np.float32(0.05)).astype(np.float16))


def test_cumprod_bitcast_and_tensor_scatter() -> None:
    nodes = [
        helper.make_node("CumProd", ["x", "axis"], ["p"], exclusive=1, reverse=1),
        helper.make_node("BitCast", ["x"], ["bits"], to=TensorProto.INT32),
        helper.make_node("TensorScatter", ["cache", "update", "at"], ["present"], mode="circular"),
    ]
    inputs = [("x", FLOAT, [2, 3]), ("cache", FLOAT, [2, 2, 5, 4]), ("update", FLOAT, [2, 2, 2, 4]),
              ("at", TensorProto.INT64, [2])]  # fmt: skip
    outputs = [("p", FLOAT, None), ("bits", TensorProto.INT32, None), ("present", FLOAT, None)]
    model = make_model(nodes, inputs, outputs, {"axis": np.array(1, np.int64)}, opset=26)
    x, cache, update = (
        random_input(RNG, (2, 3)),
        random_input(RNG, (2, 2, 5, 4)),
        random_input(RNG, (2, 2, 2, 4)),
    )
    at = np.array([1, 4], np.int64)
    out = reference.run(load_onnx(model), {"x": x, "cache": cache, "update": update, "at": at})
    np.testing.assert_allclose(out["p"], np.stack([[x[0, 1] * x[0, 2], x[0, 2], 1], [x[1, 1] * x[1, 2], x[1, 2], 1]]),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(out["bits"], x.view(np.int32))
    want = cache.copy()
    want[0, :, 1:3] = update[0]
    want[1, :, [4, 0]] = np.moveaxis(update[1], 1, 0)
    np.testing.assert_array_equal(out["present"], want)


def test_an_unreviewed_newer_op_version_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "REVIEWED_NEWER", versions.REVIEWED_NEWER - {("Reshape", 23)})
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = make_model(
        nodes, [("x", FLOAT, [2, 3])], [("y", FLOAT, None)], {"s": np.array([-1], np.int64)}, opset=23
    )
    with pytest.raises(UnsupportedModelError, match="Reshape-23"):
        load_onnx(model)


def test_a_function_op_whose_body_is_unsupported_is_refused() -> None:
    node = helper.make_node("Bernoulli", ["x"], ["y"])
    model = make_model([node], [("x", FLOAT, [4])], [("y", FLOAT, None)], opset=22)
    with pytest.raises(UnsupportedModelError, match="RandomUniformLike"):
        load_onnx(model)


@pytest.mark.parametrize("rank", [3, 4])
def test_plain_attention_23_becomes_the_fused_pattern_and_matches_onnxruntime(rank: int) -> None:
    from farm.compiler import optimize

    if rank == 3:
        node = helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=4, kv_num_heads=4, scale=0.3)
        shapes = {"q": ["batch", 5, 32], "k": ["batch", 7, 32], "v": ["batch", 7, 32]}
    else:
        node = helper.make_node("Attention", ["q", "k", "v"], ["y"])
        shapes = {"q": ["batch", 4, 5, 8], "k": ["batch", 4, 7, 8], "v": ["batch", 4, 7, 8]}
    model = make_model([node], [(n, FLOAT, s) for n, s in shapes.items()], [("y", FLOAT, None)], opset=23)
    feeds = {n: random_input(RNG, [2, *s[1:]]) for n, s in shapes.items()}
    assert_matches_ort(model, feeds)
    graph = load_onnx(model)
    assert "Where" not in graph.op_histogram()  # not the general function body
    optimized, _ = optimize(graph)
    if rank == 3:
        assert optimized.op_histogram().get("Attention") == 1
    engine = build(model.SerializeToString(), "cpu", BuilderConfig(tuning_level=0, batch_range=(1, 2, 2)))
    want = reference.run(graph, feeds)["y"]
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


def test_attention_23_with_a_mask_keeps_the_function_body() -> None:
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], q_num_heads=2, kv_num_heads=2)
    inputs = [("q", FLOAT, [1, 3, 8]), ("k", FLOAT, [1, 3, 8]), ("v", FLOAT, [1, 3, 8]), ("mask", FLOAT, [3, 3])]
    model = make_model([node], inputs, [("y", FLOAT, None)], opset=23)
    assert "Where" in load_onnx(model).op_histogram()
    assert_matches_ort(model, {n: random_input(RNG, s) for n, _, s in inputs})
