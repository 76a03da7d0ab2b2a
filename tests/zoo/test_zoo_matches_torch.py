"""The zoo generators against real PyTorch 2.13 exports (tests/fixtures/torch, no torch needed).

A zoo model built at the fixture's toy size must be the same graph as the TorchScript export:
same nodes in the same order with the same names, op types, attributes and wiring; only the
random weight values differ. The fixtures themselves are checked too: each loads, passes the
checker and reproduces in ONNX Runtime the outputs torch computed when it exported them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from farm import zoo
from farm.zoo import torch_layers
from farm.zoo.onnx_builder import OnnxGraphBuilder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "torch"
ALL_FIXTURES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))

BERT_TOY = {"vocab_size": 100, "hidden": 32, "num_heads": 4, "intermediate": 64, "num_layers": 2,
            "max_positions": 64}
VIT_TOY = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 4, "mlp_hidden": 64,
           "num_classes": 10}
RESNET_TOY = {"image_size": 32, "width": 8, "blocks": (1, 1), "num_classes": 10}
MOBILENET_TOY = {"image_size": 32, "width_mult": 0.25, "num_classes": 10, "batchnorm": "fold"}

# fixture -> (zoo model, opset, options) that must reproduce it node for node
SAME_GRAPH = {
    "bert_ts17": ("bert", 17, BERT_TOY),
    "bert_ts14": ("bert", 14, BERT_TOY),
    "vit_ts17": ("vit", 17, VIT_TOY),
    "resnet_ts17": ("resnet", 17, {**RESNET_TOY, "batchnorm": "fold"}),
    "resnet_bn_ts17": ("resnet", 17, {**RESNET_TOY, "batchnorm": "keep"}),
    "mlp_ts17": ("mlp", 17, {"in_features": 16, "hidden": (32, 32), "num_classes": 4}),
    "crnn_ts17": ("crnn", 17, {"channels": (4, 8, 8, 8, 16), "hidden": 8, "num_classes": 5, "batchnorm": "fold"}),
    "gru_ts17": ("gru_stream", 17, {"features": 16, "projection": 24, "hidden": 12, "num_layers": 2,
                                    "num_classes": 5}),
    "mobilenet_ts17": ("mobilenet", 17, MOBILENET_TOY),
}


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return ("tensor", numpy_helper.to_array(value).tolist())
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float):
        return round(value, 9)
    return value


def canonical_graph(model: onnx.ModelProto) -> list[tuple[Any, ...]]:
    """Every compute node as (name, op type, attributes, inputs), with inputs described by what
    produces them: a node output, a graph input, a parameter (by state_dict name and shape, or by
    kind and shape for the exporter's ``onnx::<Kind>_<n>`` / ``val_<n>`` ones) or a constant's value."""
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    sources: dict[str, tuple[Any, ...]] = {i.name: ("input", i.name) for i in graph.input}
    for name, array in initializers.items():
        if name.startswith("onnx::"):
            sources[name] = ("param", "onnx::" + name.split("::")[1].rsplit("_", 1)[0], array.shape)
        elif re.fullmatch(r"val_\d+", name):
            # the dynamo exporter's anonymous initializers: weights, or constants (scalars and
            # integer shapes/axes) whose values are part of the pattern
            is_constant = array.ndim == 0 or array.dtype.kind == "i"
            sources[name] = ("param", "val", array.shape, array.tolist() if is_constant else None)
        else:
            sources[name] = ("param", name, array.shape)
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
            sources[node.output[0]] = ("const", str(value.dtype), value.shape, value.tolist())
            continue
        if node.op_type == "Identity" and node.input[0] in initializers:
            # the exporter de-duplicates equal parameters through Identity; the zoo's differ
            sources[node.output[0]] = ("param", node.output[0], initializers[node.input[0]].shape)
            continue
        for index, output in enumerate(node.output):
            sources[output] = ("node", node.name, index)
        attrs = tuple(sorted((a.name, _attribute(a)) for a in node.attribute))
        nodes.append((node.name, node.op_type, attrs, tuple(sources.get(i, ("absent",)) for i in node.input)))
    return nodes


# dynamo exports: the same graph up to node names (which depend on the exporter's counters)
SAME_GRAPH_UNNAMED = {
    "bert_dynamo18": ("bert", 18, {**BERT_TOY, "exporter": "dynamo"}),
    "vit_dynamo18": ("vit", 18, {**VIT_TOY, "exporter": "dynamo"}),
    "resnet_dynamo18": ("resnet", 18, {**RESNET_TOY, "batchnorm": "fold", "exporter": "dynamo"}),
    "mobilenet_dynamo18": ("mobilenet", 18, {**MOBILENET_TOY, "exporter": "dynamo"}),
    "mlp_dynamo18": ("mlp", 18, {"in_features": 16, "hidden": (32, 32), "num_classes": 4, "exporter": "dynamo"}),
}


def unnamed(nodes: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A canonical graph with node names replaced by positions."""
    position = {node[0]: index for index, node in enumerate(nodes)}
    return [
        (op, attrs, tuple(("node", position[i[1]], i[2]) if i[0] == "node" else i for i in inputs))
        for _, op, attrs, inputs in nodes
    ]


@pytest.mark.parametrize("fixture", sorted(SAME_GRAPH))
def test_zoo_model_is_the_same_graph_as_the_torchscript_export(fixture: str) -> None:
    name, opset, options = SAME_GRAPH[fixture]
    real = canonical_graph(onnx.load(FIXTURES / f"{fixture}.onnx"))
    generated = canonical_graph(zoo.build_model(name, opset=opset, **options))
    assert len(generated) == len(real)
    for mine, theirs in zip(generated, real, strict=True):
        assert mine == theirs


@pytest.mark.parametrize("fixture", sorted(SAME_GRAPH_UNNAMED))
def test_zoo_model_is_the_same_graph_as_the_dynamo_export(fixture: str) -> None:
    name, opset, options = SAME_GRAPH_UNNAMED[fixture]
    real = unnamed(canonical_graph(onnx.load(FIXTURES / f"{fixture}.onnx")))
    generated = unnamed(canonical_graph(zoo.build_model(name, opset=opset, **options)))
    assert len(generated) == len(real)
    for mine, theirs in zip(generated, real, strict=True):
        assert mine == theirs


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_decomposition_matches_the_export(approximate: str) -> None:
    real = onnx.load(FIXTURES / "gelu_ts17.onnx")
    b = OnnxGraphBuilder(seed=0, opset=17)
    x = b.input("x", "float32", ("batch", "seq", 16))
    scope = "gelu_erf" if approximate == "none" else "gelu_tanh"
    with b.module(scope):
        y = torch_layers.gelu(b, x, approximate)
    b.output(y, scope, "float32", ("batch", "seq", 16))
    mine = canonical_graph(b.model("gelu"))
    theirs = [n for n in canonical_graph(real) if n[0].startswith(f"/{scope}/")]
    assert mine == theirs


@pytest.mark.parametrize("fixture", ALL_FIXTURES)
def test_fixture_reproduces_torch_outputs_in_onnxruntime(fixture: str) -> None:
    path = FIXTURES / f"{fixture}.onnx"
    assert path.stat().st_size < 1_000_000
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    data = np.load(FIXTURES / f"{fixture}.npz")
    feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    expected = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for name, got in zip(names, session.run(None, feeds), strict=True):
        np.testing.assert_allclose(got, expected[name], rtol=1e-4, atol=1e-5)


def test_every_fixture_is_listed_in_the_readme() -> None:
    readme = (FIXTURES / "README.md").read_text()
    for fixture in ALL_FIXTURES:
        assert f"`{fixture}.onnx`" in readme
