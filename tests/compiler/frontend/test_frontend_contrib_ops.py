"""ONNX Runtime's contrib ops (com.microsoft, and its ops in the ONNX domain) against ONNX Runtime.

Each op runs as a one-node model through ``load_onnx`` + the reference on fresh random inputs and
is compared with ONNX Runtime, which implements these ops natively; the ops' variants (optional
inputs and outputs, attributes, mask kinds, opsets whose Split/Unsqueeze/Reduce forms differ) each
get a case. A BERT put through ONNX Runtime's transformer optimizer builds into an engine with the
same fused kernels as the plain export and matches ONNX Runtime on a padded batch.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from farm.compiler import load_onnx, reference
from farm.compiler.frontend.errors import ModelError, UnsupportedModelError
from tests.compiler.frontend.frontend_models import ORT_IR_VERSION, assert_matches_ort, ort_outputs

F = TensorProto.FLOAT
I32 = TensorProto.INT32
MS = "com.microsoft"


def contrib_model(
    node: onnx.NodeProto,
    inputs: Sequence[tuple[str, int, Sequence[int | str]]],
    outputs: Sequence[tuple[str, int, Sequence[int | str] | None]],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "contrib",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=imports, ir_version=ORT_IR_VERSION)


def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: float = 2e-5) -> None:
    """Every output of ``load_onnx`` + the reference equals ONNX Runtime's (dtype, shape, values),
    and shape inference predicted each one."""
    assert_matches_ort(model, feeds, rtol=tol, atol=tol)


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


# ---------------------------------------------------------------------------------------------
# activations and adds


@pytest.mark.parametrize("op", ["Gelu", "FastGelu", "QuickGelu"])
def test_unary_gelus(rng: np.random.Generator, op: str) -> None:
    node = helper.make_node(op, ["x"], ["y"], domain=MS)
    check(contrib_model(node, [("x", F, [2, 5, 24])], [("y", F, None)]), {"x": rand(rng, 2, 5, 24, scale=2)})


def test_nodes_of_the_same_name_get_distinct_new_names(rng: np.random.Generator) -> None:
    """ONNX does not make node names unique; the values written for each must not collide."""
    first = helper.make_node("BiasGelu", ["x", "b"], ["h"], domain=MS, name="block/act")
    second = helper.make_node("FastGelu", ["h", "b"], ["y"], domain=MS, name="block/act")
    graph = helper.make_graph(
        [first, second],
        "same_names",
        [helper.make_tensor_value_info("x", F, [2, 8])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(rand(rng, 8), "b")],
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=imports, ir_version=ORT_IR_VERSION)
    feeds = {"x": rand(rng, 2, 8)}
    got = reference.run(load_onnx(model), feeds)["y"]
    model.graph.node[1].name = "block/act2"  # ONNX Runtime refuses repeated node names
    np.testing.assert_allclose(got, ort_outputs(model, feeds)[0], rtol=2e-5, atol=2e-5)


def test_quick_gelu_alpha(rng: np.random.Generator) -> None:
    node = helper.make_node("QuickGelu", ["x"], ["y"], domain=MS, alpha=1.3)
    check(contrib_model(node, [("x", F, [3, 7])], [("y", F, None)]), {"x": rand(rng, 3, 7, scale=3)})


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])
def test_gelus_with_bias(rng: np.random.Generator, op: str) -> None:
    node = helper.make_node(op, ["x", "b"], ["y"], domain=MS)
    model = contrib_model(node, [("x", F, [2, 6, 16])], [("y", F, None)], {"b": rand(rng, 16)})
    check(model, {"x": rand(rng, 2, 6, 16, scale=2)})


def test_bias_add(rng: np.random.Generator) -> None:
    node = helper.make_node("BiasAdd", ["x", "b", "skip"], ["y"], domain=MS)
    bias = rand(rng, 8)
    model = contrib_model(node, [("x", F, [2, 4, 8]), ("skip", F, [2, 4, 8])], [("y", F, None)], {"b": bias})
    feeds = {"x": rand(rng, 2, 4, 8), "skip": rand(rng, 2, 4, 8)}
    # ONNX Runtime implements BiasAdd for CUDA only: its documented meaning, x + bias + skip
    got = reference.run(load_onnx(model), feeds)["y"]
    np.testing.assert_allclose(got, feeds["x"] + bias + feeds["skip"], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# normalizations


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("optional", ["beta+bias", "none", "sum output", "all outputs"])
def test_skip_layer_normalization(rng: np.random.Generator, opset: int, optional: str) -> None:
    hidden = 32
    inits = {"gamma": rand(rng, hidden) + 1}
    names = ["x", "skip", "gamma"]
    outputs: list[tuple[str, int, Any]] = [("y", F, None)]
    node_outputs = ["y"]
    if optional != "none":
        inits.update(beta=rand(rng, hidden), bias=rand(rng, hidden))
        names += ["beta", "bias"]
    if optional == "sum output":
        node_outputs += ["", "", "sum"]
        outputs.append(("sum", F, None))
    if optional == "all outputs":
        node_outputs += ["mean", "inv_std_var", "sum"]
        outputs += [("mean", F, None), ("inv_std_var", F, None), ("sum", F, None)]
    node = helper.make_node("SkipLayerNormalization", names, node_outputs, domain=MS, epsilon=1e-6)
    shape = [2, 5, hidden]
    model = contrib_model(node, [("x", F, shape), ("skip", F, shape)], outputs, inits, opset=opset)
    check(model, {"x": rand(rng, *shape, scale=3) + 1, "skip": rand(rng, *shape)})


def test_skip_simplified_layer_normalization(rng: np.random.Generator) -> None:
    hidden = 24
    node = helper.make_node(
        "SkipSimplifiedLayerNormalization",
        ["x", "skip", "gamma", "bias"],
        ["y", "", "", "sum"],
        domain=MS,
        epsilon=1e-5,
    )
    inits = {"gamma": rand(rng, hidden) + 1, "bias": rand(rng, hidden)}
    shape = [3, 4, hidden]
    model = contrib_model(
        node, [("x", F, shape), ("skip", F, shape)], [("y", F, None), ("sum", F, None)], inits
    )
    check(model, {"x": rand(rng, *shape, scale=2), "skip": rand(rng, *shape)})


def test_simplified_layer_normalization_in_the_onnx_domain(rng: np.random.Generator) -> None:
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["y"], axis=-1, epsilon=1e-5)
    model = contrib_model(node, [("x", F, [2, 3, 16])], [("y", F, None)], {"gamma": rand(rng, 16) + 1})
    check(model, {"x": rand(rng, 2, 3, 16, scale=2)})


@pytest.mark.parametrize("axis", [-1, 2, -2])
def test_layer_normalization_before_opset_17(rng: np.random.Generator, axis: int) -> None:
    """ONNX Runtime's LayerNormalization in the ONNX domain, which exporters and its optimizer
    write at opsets where ONNX had none; written out, it is fused back into one LayerNorm."""
    shape = [2, 3, 4, 8]
    norm = shape[axis:]
    node = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=axis, epsilon=1e-5)
    inits = {"gamma": rand(rng, *norm) + 1, "beta": rand(rng, *norm)}
    model = contrib_model(node, [("x", F, shape)], [("y", F, None)], inits, opset=13)
    check(model, {"x": rand(rng, *shape, scale=2) + 0.5})

    from farm.compiler.passes import optimize

    fused, _ = optimize(load_onnx(model))
    assert [n.op_type for n in fused.nodes] == ["LayerNorm"]


# ---------------------------------------------------------------------------------------------
# GEMM and conv


@pytest.mark.parametrize(
    ("trans_a", "trans_b", "alpha"), [(0, 0, 1.0), (1, 0, 0.5), (0, 1, 2.0), (1, 1, 0.125)]
)
def test_fused_matmul(rng: np.random.Generator, trans_a: int, trans_b: int, alpha: float) -> None:
    a_shape = [2, 3, 7, 5][:2] + ([5, 7] if trans_a else [7, 5])
    b_shape = [6, 5] if trans_b else [5, 6]
    node = helper.make_node(
        "FusedMatMul", ["a", "b"], ["y"], domain=MS, transA=trans_a, transB=trans_b, alpha=alpha
    )
    model = contrib_model(node, [("a", F, a_shape)], [("y", F, None)], {"b": rand(rng, *b_shape)})
    check(model, {"a": rand(rng, *a_shape)})


@pytest.mark.parametrize(
    ("activation", "params", "with_z"),
    [
        ("Relu", [], False),
        ("Clip", [-0.5, 0.7], False),
        ("LeakyRelu", [0.2], True),
        ("Sigmoid", [], True),
        ("", [], True),
    ],
)
def test_fused_conv(rng: np.random.Generator, activation: str, params: list[float], with_z: bool) -> None:
    attrs: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = params
    inputs = ["x", "w", "b"] + (["z"] if with_z else [])
    node = helper.make_node("FusedConv", inputs, ["y"], domain=MS, **attrs)
    graph_inputs = [("x", F, [1, 4, 6, 6])] + ([("z", F, [1, 8, 6, 6])] if with_z else [])
    inits = {"w": rand(rng, 8, 4, 3, 3, scale=0.3), "b": rand(rng, 8)}
    model = contrib_model(node, graph_inputs, [("y", F, None)], inits)
    feeds = {"x": rand(rng, 1, 4, 6, 6)} | ({"z": rand(rng, 1, 8, 6, 6)} if with_z else {})
    check(model, feeds)


# ---------------------------------------------------------------------------------------------
# transformer blocks


def _embed_model(
    rng: np.random.Generator, with_mask: bool, with_segments: bool, opset: int = 17
) -> onnx.ModelProto:
    hidden, vocab, positions = 16, 50, 12
    names = [
        "ids",
        "segments" if with_segments else "",
        "words",
        "positions",
        "segment_table" if with_segments else "",
    ]
    names += ["gamma", "beta"] + (["mask"] if with_mask else [])
    node = helper.make_node(
        "EmbedLayerNormalization", names, ["y", "mask_index", "sum"], domain=MS, epsilon=1e-12
    )
    inits = {
        "words": rand(rng, vocab, hidden),
        "positions": rand(rng, positions, hidden),
        "gamma": rand(rng, hidden) + 1,
        "beta": rand(rng, hidden),
    }
    inputs: list[tuple[str, int, Sequence[int | str]]] = [("ids", I32, ["batch", "seq"])]
    if with_segments:
        inits["segment_table"] = rand(rng, 2, hidden)
        inputs.append(("segments", I32, ["batch", "seq"]))
    if with_mask:
        inputs.append(("mask", I32, ["batch", "seq"]))
    outputs = [("y", F, None), ("mask_index", I32, None), ("sum", F, None)]
    return contrib_model(node, inputs, outputs, inits, opset=opset)


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize(("with_mask", "with_segments"), [(True, True), (False, True), (True, False)])
def test_embed_layer_normalization(
    rng: np.random.Generator, with_mask: bool, with_segments: bool, opset: int
) -> None:
    batch, seq = 3, 9
    feeds = {"ids": rng.integers(0, 50, (batch, seq)).astype(np.int32)}
    if with_segments:
        feeds["segments"] = rng.integers(0, 2, (batch, seq)).astype(np.int32)
    if with_mask:
        feeds["mask"] = (np.arange(seq)[None, :] < np.array([[9], [4], [1]])).astype(np.int32)
    check(_embed_model(rng, with_mask, with_segments, opset), feeds)


def _attention_model(
    rng: np.random.Generator,
    *,
    mask: str = "",
    unidirectional: int = 0,
    sizes: Sequence[int] = (),
    attention_bias: bool = False,
    present: bool = False,
    scale: float = 0.0,
    opset: int = 17,
    mask_filter_value: float | None = None,
) -> onnx.ModelProto:
    hidden, heads = 32, 4
    widths = list(sizes) or [hidden] * 3
    attrs: dict[str, Any] = {"num_heads": heads, "unidirectional": unidirectional}
    if sizes:
        attrs["qkv_hidden_sizes"] = list(sizes)
    if scale:
        attrs["scale"] = scale
    if mask_filter_value is not None:
        attrs["mask_filter_value"] = mask_filter_value
    inputs: list[tuple[str, int, Sequence[int | str]]] = [("x", F, ["batch", "seq", hidden])]
    names = ["x", "w", "b", "mask" if mask else ""]
    if mask == "1d":
        inputs.append(("mask", I32, ["batch"]))
    elif mask == "2d":
        inputs.append(("mask", I32, ["batch", "seq"]))
    elif mask == "3d":
        inputs.append(("mask", I32, ["batch", "seq", "seq"]))
    if attention_bias:
        names += ["", "attention_bias"]
        inputs.append(("attention_bias", F, ["batch", heads, "seq", "seq"]))
    outputs: list[tuple[str, int, Any]] = [("y", F, None)]
    node_outputs = ["y"]
    if present:
        node_outputs.append("present")
        outputs.append(("present", F, None))
    node = helper.make_node("Attention", names, node_outputs, domain=MS, **attrs)
    inits = {"w": rand(rng, hidden, sum(widths), scale=0.3), "b": rand(rng, sum(widths), scale=0.1)}
    return contrib_model(node, inputs, outputs, inits, opset=opset)


def _attention_feeds(
    rng: np.random.Generator, mask: str, attention_bias: bool = False
) -> dict[str, np.ndarray]:
    batch, seq = 3, 7
    feeds = {"x": rand(rng, batch, seq, 32)}
    lengths = np.array([7, 3, 1])
    if mask == "1d":
        feeds["mask"] = lengths.astype(np.int32)
    elif mask == "2d":
        feeds["mask"] = (rng.random((batch, seq)) < 0.7).astype(np.int32)
        feeds["mask"][:, 0] = 1  # every row attends somewhere
    elif mask == "3d":
        feeds["mask"] = (rng.random((batch, seq, seq)) < 0.7).astype(np.int32)
        feeds["mask"][:, :, 0] = 1
    if attention_bias:
        feeds["attention_bias"] = rand(rng, batch, 4, seq, seq)
    return feeds


@pytest.mark.parametrize("opset", [12, 13, 17])
@pytest.mark.parametrize("mask", ["", "1d", "2d", "3d"])
def test_attention_masks(rng: np.random.Generator, mask: str, opset: int) -> None:
    check(_attention_model(rng, mask=mask, opset=opset), _attention_feeds(rng, mask))


@pytest.mark.parametrize(
    "variant",
    ["unidirectional", "unidirectional+2d", "sizes", "attention_bias", "present", "scale", "filter"],
)
def test_attention_variants(rng: np.random.Generator, variant: str) -> None:
    mask = "2d" if variant in ("unidirectional+2d", "filter") else ""
    model = _attention_model(
        rng,
        mask=mask,
        unidirectional=int(variant.startswith("unidirectional")),
        sizes=(32, 32, 16) if variant == "sizes" else (),
        attention_bias=variant == "attention_bias",
        present=variant == "present",
        scale=0.05 if variant == "scale" else 0.0,
        mask_filter_value=-1e9 if variant == "filter" else None,
    )
    check(model, _attention_feeds(rng, mask, attention_bias=variant == "attention_bias"))


def test_attention_is_fused_into_one_kernel(rng: np.random.Generator) -> None:
    """The written-out Attention (with its projection) optimizes into our own fused ops."""
    from farm.compiler.passes import optimize

    graph, _ = optimize(load_onnx(_attention_model(rng, mask="2d")))
    ops = collections.Counter(n.op_type for n in graph.nodes)
    assert ops["Attention"] == 1
    assert "Softmax" not in ops and "Transpose" not in ops


# ---------------------------------------------------------------------------------------------
# what is not written out


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            helper.make_node("Attention", ["x", "w", "b", "", "past"], ["y"], domain=MS, num_heads=4),
            "KV cache",
        ),
        (
            helper.make_node("FusedMatMul", ["x", "w2"], ["y"], domain=MS, transBatchA=1),
            "transBatchA",
        ),
        (
            helper.make_node(
                "FusedConv", ["img", "k"], ["y"], domain=MS, activation="Gelu", kernel_shape=[1, 1]
            ),
            "activation 'Gelu'",
        ),
    ],
)
def test_variants_not_written_out_are_named(node: onnx.NodeProto, message: str) -> None:
    rng = np.random.default_rng(0)
    inputs = [
        ("x", F, [1, 4, 32]),
        ("past", F, [2, 1, 4, 2, 8]),
        ("img", F, [1, 4, 5, 5]),
    ]
    inits = {"w": rand(rng, 32, 96), "b": rand(rng, 96), "w2": rand(rng, 32, 8), "k": rand(rng, 8, 4, 1, 1)}
    used = set(node.input)
    model = contrib_model(
        node,
        [i for i in inputs if i[0] in used],
        [("y", F, None)],
        {k: v for k, v in inits.items() if k in used},
    )
    with pytest.raises(ModelError, match=message) as info:
        load_onnx(model)
    assert node.op_type in str(info.value)


def test_other_contrib_ops_are_reported_unsupported_by_name() -> None:
    node = helper.make_node("QOrderedMatMul", ["x", "x"], ["y"], domain=MS)
    model = contrib_model(node, [("x", F, [4, 4])], [("y", F, None)])
    with pytest.raises(UnsupportedModelError, match="com.microsoft.QOrderedMatMul"):
        load_onnx(model)


# ---------------------------------------------------------------------------------------------
# a whole model from ONNX Runtime's transformer optimizer


def test_bert_from_the_onnxruntime_transformer_optimizer_builds_and_matches(tmp_path: Any) -> None:
    from onnxruntime.transformers import optimizer

    from farm import zoo
    from farm.compiler.builder import BuilderConfig, build

    plain = tmp_path / "bert.onnx"
    onnx.save(zoo.build_model("bert"), plain)
    optimized = optimizer.optimize_model(
        str(plain), model_type="bert", num_heads=4, hidden_size=256, opt_level=0
    )
    fused_by_ort = optimized.get_fused_operator_statistics()
    assert fused_by_ort["Attention"] == 4 and fused_by_ort["SkipLayerNormalization"] == 8
    assert fused_by_ort["EmbedLayerNormalization"] == 1
    path = tmp_path / "bert_opt.onnx"
    optimized.save_model_to_file(str(path))

    batch, seq = 2, 24
    shapes = {name: ["batch", seq] for name in ("input_ids", "attention_mask", "token_type_ids")}
    config = BuilderConfig(tuning_level=0, batch_range=(1, 2, 2), input_shapes=shapes)
    engines = {name: build(str(p), "cpu", config) for name, p in (("plain", plain), ("optimized", path))}
    kernels = {
        name: collections.Counter(layer["op_type"] for layer in engine.describe_layers())
        for name, engine in engines.items()
    }
    for op in ("Attention", "FusedGemm", "LayerNorm"):
        assert kernels["optimized"][op] == kernels["plain"][op] > 0, (op, kernels)

    rng = np.random.default_rng(7)
    feeds = {
        "input_ids": rng.integers(0, 1000, (batch, seq)).astype(np.int64),
        "attention_mask": (np.arange(seq)[None, :] < np.array([[seq], [15]])).astype(np.int64),
        "token_type_ids": rng.integers(0, 2, (batch, seq)).astype(np.int64),
    }
    expected = ort_outputs(onnx.load(path), feeds)
    got = engines["optimized"].run(feeds)
    for name, want in zip(("last_hidden_state", "pooler_output"), expected, strict=True):
        rel = np.linalg.norm(got[name] - want) / np.linalg.norm(want)
        assert rel < 1e-5, (name, rel)
