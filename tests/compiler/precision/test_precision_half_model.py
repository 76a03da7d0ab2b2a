"""Models stored in float16 (exported for GPUs) build for the CPU and compute in float32 inside,
with float16 bindings; checked against ONNX Runtime on the same weights, fresh random inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from farm import zoo
from farm.compiler import BuilderConfig, build
from farm.compiler.accuracy import compare_arrays, onnxruntime_outputs
from farm.compiler.ir import Graph
from farm.compiler.precision.half_model import widen_half_model

RNG = np.random.default_rng(16)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as a GPU export writes it: float weights, inputs and outputs in float16."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for info in list(graph.input) + list(graph.output):
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                value = np.clip(numpy_helper.to_array(attr.t), -65504, 65504)  # as fp16 converters clamp
                attr.t.CopyFrom(numpy_helper.from_array(value.astype(np.float16), attr.t.name))
    return half


def rounded_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 model with its weights rounded through float16 (what the half model holds)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    return out


@pytest.mark.parametrize(
    ("name", "options"),
    [("resnet", {"image_size": 32, "width": 8}), ("bert", {"num_layers": 1})],
)
def test_a_float16_zoo_model_builds_and_matches_onnxruntime(name: str, options: dict) -> None:
    model = zoo.build_model(name, **options)
    half = to_float16(model)
    feeds = zoo.sample_inputs(name, 2, seed=3, options=options)
    engine = build(half.SerializeToString(), "cpu", BuilderConfig(tuning_level=0, batch_range=(1, 2, 2),
                   input_shapes={k: ["batch", *v.shape[1:]] for k, v in feeds.items()}))  # fmt: skip
    half_feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
    got = engine.run(half_feeds)
    want = onnxruntime_outputs(rounded_fp32(model).SerializeToString(),
                               {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in half_feeds.items()})  # fmt: skip
    float_inputs = [b for b in engine.inputs if b.dtype != "int64"]
    assert all(b.dtype == "float16" for b in float_inputs) and all(
        b.dtype == "float16" for b in engine.outputs
    )
    for out_name, expected in want.items():
        assert got[out_name].dtype == np.float16
        metrics = compare_arrays(out_name, got[out_name].astype(np.float32), expected)
        assert metrics.rel_l2 < 2e-3, (out_name, metrics)
    assert engine.report["half_model"]["inputs_cast"] == len(float_inputs)
    assert all(n["precision"] in (None, "fp32") for n in engine.report["precision_layers"]["layers"])


def test_mixed_precision_casts_and_a_bfloat16_body_compute_in_float32() -> None:
    """fp32 in, Cast to float16, float16 MatMul, an If whose branches hold bfloat16 constants."""
    then = helper.make_graph(
        [helper.make_node("Mul", ["h", "two"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT16, None)],
        [numpy_helper.from_array(np.array(2.0, np.float16), "two")],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT16, None)]
    )  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["xh", "w"], ["h"]),
        helper.make_node("If", ["flag"], ["hh"], then_branch=then, else_branch=other),
        helper.make_node("Cast", ["hh"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float16), "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    engine = build(model.SerializeToString(), "cpu", BuilderConfig(tuning_level=0, batch_range=(1, 3, 3)))
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    w = numpy_helper.to_array(graph.initializer[0]).astype(np.float32)
    for flag, sign in ((True, 2.0), (False, -1.0)):
        got = engine.run({"x": x, "flag": np.array(flag)})["y"]
        want = sign * (x.astype(np.float16).astype(np.float32) @ w)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    assert (
        engine.report["half_model"]["inputs_cast"] == 0 and engine.report["half_model"]["values_widened"] >= 4
    )


def test_widening_keeps_half_bindings_and_leaves_float32_graphs_alone() -> None:
    g = Graph("g")
    g.add_input("x", "float16", ("batch", 4))
    g.add_const("w", RNG.standard_normal((4, 4)).astype(np.float16))
    g.add_node("MatMul", ["x", "w"], ["y"])
    g.values["y"].dtype = "float16"
    g.outputs = ["y"]
    changed = widen_half_model(g)
    assert changed == {"inputs_cast": 1, "outputs_cast": 1, "values_widened": 1}
    assert g.values["x"].dtype == "float16" and g.values["y"].dtype == "float16"
    assert g.values["w"].dtype == "float32" and g.values["w"].const.dtype == np.float32
    assert [n.op_type for n in g.nodes] == ["Cast", "MatMul", "Cast"]
    f = Graph("f")
    f.add_input("x", "float32", (2,))
    f.add_node("Relu", ["x"], ["y"])
    f.outputs = ["y"]
    assert widen_half_model(f) == {}
