"""Every zoo model: valid ONNX, runs in ONNX Runtime, has the exporter's op patterns, is seeded."""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from farm import zoo

MODEL_NAMES = ["mlp", "resnet", "mobilenet", "bert", "vit"]
RECURRENT_NAMES = ["crnn", "gru_stream"]
ALL_NAMES = MODEL_NAMES + RECURRENT_NAMES
# options that make each model small enough to build many times in a quick test
SMALL_OPTIONS: dict[str, dict[str, object]] = {
    "mlp": {},
    "resnet": {"image_size": 32, "width": 8},
    "mobilenet": {"image_size": 32},
    "bert": {"num_layers": 1, "vocab_size": 100},
    "vit": {"image_size": 32, "depth": 1},
    "crnn": {"channels": (8, 8, 16, 16, 16), "hidden": 16},
    "gru_stream": {"projection": 16, "hidden": 16},
}


@cache
def built(name: str, opset: int = 17, seed: int = 0, **options: object) -> onnx.ModelProto:
    return zoo.build_model(name, seed=seed, opset=opset, **options)


@cache
def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(built(name).SerializeToString(), options, providers=["CPUExecutionProvider"])


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def test_list_models_names_every_model_once() -> None:
    assert [m.name for m in zoo.list_models()] == MODEL_NAMES
    assert [m.name for m in zoo.list_models(include_recurrent=True)] == ALL_NAMES
    assert {m.family for m in zoo.list_models(include_recurrent=True) if m.name in RECURRENT_NAMES} == {"recurrent"}
    assert zoo.get("bert").default_shapes == {"seq": 128}


def test_get_unknown_model_names_the_available_ones() -> None:
    with pytest.raises(KeyError, match="available: mlp, resnet"):
        zoo.get("alexnet")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_model_passes_full_checker(name: str) -> None:
    model = built(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == [s.name for s in zoo.get(name).inputs]
    assert [o.name for o in model.graph.output] == zoo.get(name).outputs
    for value in [*model.graph.input, *model.graph.output]:
        assert "batch" in [d.dim_param for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("batch", [1, 8])
def test_model_runs_in_onnxruntime(name: str, batch: int) -> None:
    feeds = zoo.sample_inputs(name, batch, seed=batch)
    sess = session(name)
    outputs = sess.run(None, feeds)
    assert [o.name for o in sess.get_outputs()] == zoo.get(name).outputs
    for declared, out in zip(sess.get_outputs(), outputs, strict=True):
        batch_axis = declared.shape.index("batch")
        assert out.shape[batch_axis] == batch
        assert np.isfinite(out).all()
        assert 1e-3 < float(np.std(out)) < 100.0
        if batch > 1:
            # different inputs give different outputs: the model is not a constant
            first, second = np.take(out, 0, axis=batch_axis), np.take(out, 1, axis=batch_axis)
            assert not np.allclose(first, second)


def test_bert_has_the_encoder_patterns_at_opset_17() -> None:
    counts = op_counts(built("bert"))
    assert counts["LayerNormalization"] == 1 + 2 * 4
    assert counts["Softmax"] == 4
    assert counts["Erf"] == 4
    assert counts["Tanh"] == 1  # pooler
    assert counts["Gemm"] == 1  # pooler dense on the 2-D first token
    assert counts["MatMul"] == 4 * (4 + 2 + 2)  # Q, K, V, out, FFN x2, scores, context
    assert counts["Gather"] >= 3  # word, token-type, position embeddings


def test_bert_extended_mask_is_unsqueeze_cast_sub_mul() -> None:
    model = built("bert")
    consumers = {i: n for n in model.graph.node for i in n.input}
    chain = []
    value = "attention_mask"
    for _ in range(5):
        node = consumers[value]
        chain.append(node.op_type)
        value = node.output[0]
    assert chain == ["Unsqueeze", "Unsqueeze", "Cast", "Sub", "Mul"]
    adds = [n for n in model.graph.node if n.op_type == "Add" and value in n.input]
    assert len(adds) == 4  # added to the scaled scores of every layer


def test_bert_decomposes_layernorm_below_opset_17() -> None:
    counts = op_counts(built("bert", opset=14))
    assert counts["LayerNormalization"] == 0
    assert counts["ReduceMean"] == 2 * 9 and counts["Pow"] == 9 and counts["Sqrt"] == 9
    forced = op_counts(built("bert", layernorm="decomposed", num_layers=1))
    assert forced["LayerNormalization"] == 0 and forced["Sqrt"] == 3
    with pytest.raises(ValueError, match="opset >= 17"):
        zoo.build_model("bert", opset=16, layernorm="fused")


def test_decomposed_layernorm_takes_reduce_axes_as_input_from_opset_18() -> None:
    model = built("bert", opset=18, layernorm="decomposed", num_layers=1)
    reduces = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    assert len(reduces) == 6
    assert all(len(n.input) == 2 and "axes" not in {a.name for a in n.attribute} for n in reduces)
    feeds = zoo.sample_inputs("bert", 2, seed=0, seq=8)
    fused = built("bert", opset=18, num_layers=1)
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
               for m in (model, fused)]
    for decomposed_out, fused_out in zip(*outputs, strict=True):
        np.testing.assert_allclose(decomposed_out, fused_out, rtol=1e-4, atol=1e-4)


def test_gelu_becomes_one_op_at_opset_20() -> None:
    counts = op_counts(built("bert", opset=20, num_layers=1))
    assert counts["Gelu"] == 1 and counts["Erf"] == 0


def test_resnet_has_batchnorm_and_residuals() -> None:
    counts = op_counts(built("resnet"))
    assert counts["Conv"] == 20 and counts["BatchNormalization"] == 20
    assert counts["Add"] == 8 and counts["Relu"] == 17
    assert counts["MaxPool"] == 1 and counts["GlobalAveragePool"] == 1 and counts["Gemm"] == 1


def test_resnet_folded_batchnorm_computes_the_same_function() -> None:
    options = {"image_size": 64, "width": 16, "num_classes": 10}
    kept = built("resnet", **options)
    folded = built("resnet", batchnorm="fold", **options)
    assert op_counts(folded)["BatchNormalization"] == 0
    feeds = zoo.sample_inputs("resnet", 2, seed=3, options=options)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for m in (kept, folded)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-4, atol=1e-4)


def test_mobilenet_has_depthwise_relu6_se_and_hardswish() -> None:
    model = built("mobilenet")
    counts = op_counts(model)
    assert counts["Clip"] == 4  # two ReLU6 blocks with expand + depthwise
    assert counts["HardSwish"] > 0 and counts["HardSigmoid"] == 6
    assert counts["GlobalAveragePool"] == 6 + 1  # one per SE block, one before the classifier
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "group")) > 1]
    assert len(depthwise) == 8
    se_muls = [n for n in model.graph.node if n.op_type == "Mul" and "HardSigmoid" in n.input[0]]
    assert len(se_muls) == 6


def test_hardswish_is_decomposed_below_opset_14() -> None:
    counts = op_counts(built("mobilenet", opset=13, image_size=64))
    assert counts["HardSwish"] == 0
    assert counts["HardSigmoid"] > 6


def test_vit_has_patch_conv_cls_token_and_attention() -> None:
    counts = op_counts(built("vit"))
    assert counts["Conv"] == 1 and counts["Expand"] == 1
    assert counts["Split"] == 4 and counts["Softmax"] == 4 and counts["Erf"] == 4
    assert counts["LayerNormalization"] == 2 * 4 + 1


@pytest.mark.parametrize("name", ALL_NAMES)
def test_same_seed_same_model_other_seed_other_weights(name: str) -> None:
    small = SMALL_OPTIONS[name]
    first = zoo.build_model(name, seed=5, **small).SerializeToString()
    again = zoo.build_model(name, seed=5, **small).SerializeToString()
    other = zoo.build_model(name, seed=6, **small)
    assert first == again
    assert other.SerializeToString() != first
    assert [n.op_type for n in other.graph.node] == [n.op_type for n in onnx.load_from_string(first).graph.node]


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_model_builds_and_runs_at_the_opset_bounds(name: str, opset: int) -> None:
    small = SMALL_OPTIONS[name]
    model = zoo.build_model(name, opset=opset, **small)
    assert model.opset_import[0].version == opset
    dims = {"bert": {"seq": 16}, "crnn": {"width": 64}}.get(name, {})
    feeds = zoo.sample_inputs(name, 2, seed=0, options=small, **dims)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert all(np.isfinite(o).all() for o in sess.run(None, feeds))


def test_crnn_is_cnn_bilstm_and_ctc_log_probs() -> None:
    model = built("crnn")
    counts = op_counts(model)
    assert counts["Conv"] == 5 and counts["BatchNormalization"] == 5 and counts["MaxPool"] == 5
    lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert len(lstms) == 2
    assert all(helper_attr(n, "direction") == b"bidirectional" for n in lstms)
    assert model.graph.node[-1].op_type == "LogSoftmax"
    log_probs = session("crnn").run(None, zoo.sample_inputs("crnn", 2, seed=0, width=96))[0]
    assert log_probs.shape == (96 // 4, 2, 37)
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=-1), 1.0, rtol=1e-5)


def test_gru_stream_carries_its_state_between_chunks() -> None:
    sess = session("gru_stream")
    feeds = zoo.sample_inputs("gru_stream", 2, seed=0, frames=12)
    whole_logits, whole_state = sess.run(None, feeds)
    # the same audio fed as two chunks, the state passed along, gives the same result
    first_logits, state = sess.run(None, {"chunk": feeds["chunk"][:, :5], "h0": feeds["h0"]})
    second_logits, final_state = sess.run(None, {"chunk": feeds["chunk"][:, 5:], "h0": state})
    np.testing.assert_allclose(np.concatenate([first_logits, second_logits], axis=1), whole_logits,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(final_state, whole_state, rtol=1e-4, atol=1e-5)
    assert op_counts(built("gru_stream"))["GRU"] == 2


def helper_attr(node: onnx.NodeProto, name: str) -> object:
    return onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == name))


def test_opset_outside_the_supported_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"supports opsets 13\.\.21"):
        zoo.build_model("mlp", opset=12)


def test_unknown_option_is_refused_with_the_known_ones() -> None:
    with pytest.raises(TypeError, match="image_size"):
        zoo.build_model("resnet", colour="red")


def test_export_writes_a_loadable_file(tmp_path) -> None:
    path = zoo.export("mlp", tmp_path / "sub" / "mlp.onnx", seed=3, opset=15)
    model = onnx.load(path)
    assert model.opset_import[0].version == 15
    assert model.SerializeToString() == zoo.build_model("mlp", seed=3, opset=15).SerializeToString()


@pytest.mark.parametrize("name", ["mlp", "resnet", "mobilenet", "bert", "vit"])
def test_dynamo_variant_computes_the_same_function(name: str) -> None:
    options = {**SMALL_OPTIONS[name], **({"batchnorm": "fold"} if name in ("resnet", "mobilenet") else {})}
    torchscript = zoo.build_model(name, seed=2, opset=18, **options)
    dynamo = zoo.build_model(name, seed=2, opset=18, exporter="dynamo", **options)
    assert dynamo.ir_version == 10
    assert not any(n.op_type == "Constant" for n in dynamo.graph.node)
    feeds = zoo.sample_inputs(name, 3, seed=0, options=options, **({"seq": 12} if name == "bert" else {}))
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
               for m in (torchscript, dynamo)]
    for ts_out, dynamo_out in zip(*outputs, strict=True):
        np.testing.assert_allclose(dynamo_out, ts_out, rtol=1e-5, atol=1e-5)
