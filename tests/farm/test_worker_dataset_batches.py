"""The worker cuts user datasets and generates feeds along each input's batch axis: axis 0, or
the axis an RNN state declares with the batch symbol (``h0[layers, batch, hidden]``)."""

from __future__ import annotations

import numpy as np

from farm import zoo
from farm.worker.accuracy import dataset_batches, model_batch_axes, model_input_specs


def test_batch_axes_follow_the_batch_symbol() -> None:
    assert model_batch_axes(zoo.build_model("gru_stream")) == {"chunk": 0, "h0": 1}
    assert set(model_batch_axes(zoo.build_model("mlp")).values()) == {0}


def test_input_specs_put_the_batch_on_the_state_axis() -> None:
    shapes, dtypes = model_input_specs(
        zoo.build_model("gru_stream"), batch=3, input_shapes={"chunk": [3, 16, 40]}
    )
    assert shapes == {"chunk": [3, 16, 40], "h0": [2, 3, 128]}
    assert dtypes == {"chunk": "float32", "h0": "float32"}


def test_dataset_batches_cut_each_input_along_its_axis() -> None:
    rng = np.random.default_rng(5)
    chunk, h0 = rng.standard_normal((10, 16, 40)), rng.standard_normal((2, 10, 128))
    dtypes = {"chunk": "float32", "h0": "float32"}
    axes = {"chunk": 0, "h0": 1}
    batches = dataset_batches(dtypes, {"chunk": chunk, "h0": h0}, batch=4, axes=axes)
    assert len(batches) == 2  # the short tail of 2 samples is dropped
    np.testing.assert_array_equal(batches[1]["chunk"], chunk[4:8].astype(np.float32))
    np.testing.assert_array_equal(batches[1]["h0"], h0[:, 4:8].astype(np.float32))
    few = dataset_batches(dtypes, {"chunk": chunk[:3], "h0": h0[:, :3]}, batch=4, axes=axes)
    assert [b["h0"].shape for b in few] == [(2, 4, 128)]
    np.testing.assert_array_equal(few[0]["h0"][:, 3], h0[:, 0].astype(np.float32))  # repeated from the start


def test_static_models_batch_on_axis_0_and_inputs_without_the_batch_are_fed_whole() -> None:
    from onnx import TensorProto, helper

    def model(x_shape: list, extra: list | None = None) -> object:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
        if extra is not None:
            inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, extra))
            nodes = [helper.make_node("Add", ["x", "bias"], ["y"])]
        graph = helper.make_graph(
            nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
        )
        return helper.make_model(graph)

    assert model_batch_axes(model([1, 8])) == {"x": 0}  # type: ignore[arg-type]
    axes = model_batch_axes(model(["n", 8], [8]))  # type: ignore[arg-type]
    assert axes == {"x": 0, "bias": None}
    bias = np.arange(8, dtype=np.float32)
    batches = dataset_batches(
        {"x": "float32", "bias": "float32"}, {"x": np.ones((6, 8)), "bias": bias}, batch=3, axes=axes
    )
    assert [b["x"].shape for b in batches] == [(3, 8), (3, 8)]
    assert all(b["bias"].shape == (8,) for b in batches)
