"""Malformed, hostile and unsupported models give ModelError/UnsupportedModelError naming the problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from frontend_models import FLOAT, make_model
from onnx import TensorProto, helper, numpy_helper

from farm.compiler import ModelError, UnsupportedModelError, load_onnx, reference
from farm.compiler.frontend.versions import NEWEST_OPSET


def relu_model(opset: int = 17) -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [2])], [("y", FLOAT, [2])], opset=opset)


def test_unsupported_ops_are_all_named_with_their_first_node() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("FancyOp", ["a"], ["b"], name="fancy_1"),
        helper.make_node("FancyOp", ["b"], ["c"], name="fancy_2"),
        helper.make_node("ImageDecoder", ["c"], ["d"], name="decoder"),
        helper.make_node("QOrderedMatMul", ["d", "d"], ["y"], name="ms", domain="com.microsoft"),
    ]
    model = make_model(nodes, [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(model)
    message = str(info.value)
    assert "FancyOp (first node: 'fancy_1')" in message
    assert "ImageDecoder (first node: 'decoder')" in message
    assert "com.microsoft.QOrderedMatMul (first node: 'ms')" in message
    assert "fancy_2" not in message
    assert info.value.unsupported == {"FancyOp": "fancy_1", "ImageDecoder": "decoder", "com.microsoft.QOrderedMatMul": "ms"}
    assert isinstance(info.value, ModelError) and isinstance(info.value, ValueError)


def test_unsupported_op_inside_a_subgraph_is_found() -> None:
    body = helper.make_graph([helper.make_node("FancyOp", ["x"], ["z"], name="deep")], "then", [],
                             [helper.make_tensor_value_info("z", FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["w"])], "else", [],
                              [helper.make_tensor_value_info("w", FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)]
    model = make_model(nodes, [("x", FLOAT, [2]), ("c", TensorProto.BOOL, [])], [("y", FLOAT, [2])])
    with pytest.raises(UnsupportedModelError, match="FancyOp \\(first node: 'deep'\\)"):
        load_onnx(model)


def test_cycle_is_a_model_error() -> None:
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="n1"), helper.make_node("Neg", ["a"], ["b"], name="n2")]
    model = make_model(nodes, [("x", FLOAT, [2])], [("a", FLOAT, [2])])
    with pytest.raises(ModelError, match="cycle"):
        load_onnx(model)


def test_dangling_input_is_named() -> None:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    model = make_model(nodes, [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    with pytest.raises(ModelError, match="'adder'.*'ghost'"):
        load_onnx(model)


def test_value_produced_twice_is_a_model_error() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    with pytest.raises(ModelError, match="produced twice"):
        load_onnx(model)


def test_undefined_graph_output_is_a_model_error() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [2])], [("nope", FLOAT, [2])])
    with pytest.raises(ModelError, match="'nope'"):
        load_onnx(model)


@pytest.mark.parametrize("version", [1, 6, NEWEST_OPSET + 1, 99])
def test_opset_out_of_range(version: int) -> None:
    model = relu_model()
    model.opset_import[0].version = version
    with pytest.raises(ModelError, match=f"opset {version} is not supported"):
        load_onnx(model)


def test_missing_default_opset() -> None:
    model = relu_model()
    model.opset_import[0].domain = "com.example"
    with pytest.raises(ModelError, match="default-domain"):
        load_onnx(model)


def test_op_newer_than_the_model_opset() -> None:
    model = make_model([helper.make_node("Gelu", ["x"], ["y"])], [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    with pytest.raises(ModelError, match="not defined in ai.onnx opset 17"):
        load_onnx(model)


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f"])
def test_bad_protobuf_bytes(data: bytes) -> None:
    with pytest.raises(ModelError):
        load_onnx(data)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")


def test_minus_one_dims_read_as_dynamic() -> None:
    """paddle2onnx and older converters write -1 for a dynamic dimension (ONNX Runtime accepts
    it): such a model loads with a symbolic dimension, builds for a concrete shape and runs.
    Any other negative dimension is refused."""
    from farm.compiler.builder import BuilderConfig, build

    model = relu_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -3
    with pytest.raises(ModelError, match="invalid dimension -3"):
        load_onnx(model)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = -1
    graph = load_onnx(model)
    (dim,) = graph.values["x"].shape
    assert isinstance(dim, str)
    engine = build(model.SerializeToString(), "cpu", BuilderConfig(tuning_level=0, input_shapes={"x": [5]}))
    x = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    np.testing.assert_array_equal(engine.create_context().run({"x": x})["y"], np.maximum(x, 0))


def test_huge_dims() -> None:
    tensor = TensorProto(name="w", data_type=FLOAT, dims=[2**45, 2**45])
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    model.graph.initializer.append(tensor)
    with pytest.raises(ModelError, match="dimension"):
        load_onnx(model)


def test_tensor_declaring_more_data_than_it_holds() -> None:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", FLOAT, [4])], [("y", FLOAT, [4])])
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    tensor.raw_data = tensor.raw_data[:8]
    model.graph.initializer.append(tensor)
    with pytest.raises(ModelError, match="holds 8 bytes"):
        load_onnx(model)
    typed = TensorProto(name="w", data_type=FLOAT, dims=[4], float_data=[1.0, 2.0])
    del model.graph.initializer[:]
    model.graph.initializer.append(typed)
    with pytest.raises(ModelError, match="holds 2"):
        load_onnx(model)


def test_bad_input_shapes_argument() -> None:
    with pytest.raises(ModelError, match="not a graph input"):
        load_onnx(relu_model(), input_shapes={"zzz": [1]})
    with pytest.raises(ModelError, match="rank"):
        load_onnx(relu_model(), input_shapes={"x": [1, 2]})
    with pytest.raises(ModelError, match="invalid dimension"):
        load_onnx(relu_model(), input_shapes={"x": [-1]})


# ------------------------------------------------------------------------------- external data
def external_model(location: str, length: int | None = None, offset: int = 0) -> onnx.ModelProto:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", FLOAT, [4])], [("y", FLOAT, [4])])
    tensor = TensorProto(name="w", data_type=FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    model.graph.initializer.append(tensor)
    return model


def save(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    weights = np.arange(4, dtype=np.float32) + 0.5
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"\x00" * 16 + weights.tobytes())
    path = save(external_model("weights.bin", 16, offset=16), tmp_path / "m")
    graph = load_onnx(path)
    np.testing.assert_array_equal(graph.const("w"), weights)
    x = np.ones(4, np.float32)
    np.testing.assert_array_equal(reference.run(graph, {"x": x})["y"], x + weights)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../../etc/passwd", "leaves the model's folder"),
        ("sub/../../secret.bin", "leaves the model's folder"),
        ("/etc/passwd", "absolute path"),
        ("missing.bin", "does not exist"),
    ],
)
def test_external_data_paths_are_confined(tmp_path: Path, location: str, message: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 16)
    path = save(external_model(location, 16), tmp_path / "m")
    with pytest.raises(ModelError, match=message):
        load_onnx(path)


def test_external_data_symlink_leaving_the_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 16)
    folder = tmp_path / "m"
    path = save(external_model("link.bin", 16), folder)
    os.symlink(tmp_path / "secret.bin", folder / "link.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_onnx(path)


def test_external_data_file_too_short(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    path = save(external_model("w.bin", 16), folder)
    (folder / "w.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelError, match="too short"):
        load_onnx(path)


def test_external_data_length_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    path = save(external_model("w.bin", 8), folder)
    (folder / "w.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match="external data length is 8"):
        load_onnx(path)


def test_external_data_from_bytes_needs_a_path() -> None:
    with pytest.raises(ModelError, match="load the model from its file path"):
        load_onnx(external_model("w.bin", 16).SerializeToString())


# ------------------------------------------------------------------------------- graph features
def test_initializer_that_is_an_input_stays_overridable() -> None:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", FLOAT, [3]), ("w", FLOAT, [3])],
                       [("y", FLOAT, [3])], {"w": np.ones(3, np.float32)})
    graph = load_onnx(model)
    assert "w" in graph.inputs and graph.const("w") is not None
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(reference.run(graph, {"x": x})["y"], x + 1)
    np.testing.assert_array_equal(reference.run(graph, {"x": x, "w": x})["y"], 2 * x)


def test_constant_nodes_become_constants() -> None:
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([3.0, 4.0], np.float32))),
        helper.make_node("Add", ["c", "k"], ["s"]),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    graph = load_onnx(make_model(nodes, [("x", FLOAT, [2])], [("y", FLOAT, [2])]))
    assert [n.op_type for n in graph.nodes] == ["Add", "Add"]
    np.testing.assert_array_equal(graph.const("c"), [1.0, 2.0])


def test_if_subgraph_becomes_nested_graph_and_runs() -> None:
    then = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    graph = load_onnx(make_model(nodes, [("x", FLOAT, [2]), ("c", TensorProto.BOOL, [])], [("y", FLOAT, [2])]))
    if_node = graph.nodes[0]
    from farm.compiler.ir import Graph

    assert isinstance(if_node.attrs["then_branch"], Graph)
    assert graph.values["y"].shape == (2,)
    x = np.array([2.0, -3.0], np.float32)
    np.testing.assert_array_equal(reference.run(graph, {"x": x, "c": np.array(True)})["y"], x * x)
    np.testing.assert_array_equal(reference.run(graph, {"x": x, "c": np.array(False)})["y"], -x)


def test_huge_sparse_tensor_is_refused_before_allocation() -> None:
    model = make_model([helper.make_node("Add", ["x", "s"], ["y"])], [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    values = numpy_helper.from_array(np.array([1.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([3], np.int64), "s_idx")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2**20, 2**13]))
    with pytest.raises(ModelError, match="too large to densify"):
        load_onnx(model)
