"""Models of opsets 7 to 10 (older exporters, paddle2onnx's default 9, the classic model zoo) are
upgraded to opset 11 by onnx's version converter and then match ONNX Runtime run on the original."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from frontend_models import FLOAT, INT64, assert_matches_ort, make_model, ort_outputs, random_input
from onnx import helper

from farm.compiler import BuilderConfig, build, load_onnx
from farm.compiler.frontend.errors import ModelError

RNG = np.random.default_rng(7)
X = ("x", FLOAT, [1, 3, 8, 8])


def w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return (RNG.random(shape) + 0.5).astype(np.float32)


def scales(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def out(name: str = "y", elem: int = FLOAT) -> tuple[str, int, None]:
    return (name, elem, None)


# (opset, nodes, outputs, initializers): each an op whose form changed before opset 11
CASES: dict[str, tuple[int, list[onnx.NodeProto], list[Any], dict[str, np.ndarray]]] = {
    "Upsample-7 linear (scales attribute)": (
        7, [helper.make_node("Upsample", ["x"], ["y"], mode="linear", scales=[1.0, 1.0, 2.0, 2.0])], [out()], {}),
    "Upsample-7 nearest x3": (
        7, [helper.make_node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 3.0, 2.0])], [out()], {}),
    "Upsample-9 nearest (scales input), non-integer": (
        9, [helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], [out()], {"s": scales(1, 1, 3, 2.5)}),
    "Upsample-9 linear": (
        9, [helper.make_node("Upsample", ["x", "s"], ["y"], mode="linear")], [out()], {"s": scales(1, 1, 2, 1.5)}),
    "Resize-10 linear up": (
        10, [helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")], [out()], {"s": scales(1, 1, 2, 2)}),
    "Resize-10 linear down": (
        10, [helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")], [out()], {"s": scales(1, 1, 0.6, 0.4)}),
    "Resize-10 nearest down": (
        10, [helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")], [out()], {"s": scales(1, 1, 0.6, 0.4)}),
    "Resize-10 nearest up": (
        10, [helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")], [out()], {"s": scales(1, 1, 3, 1.7)}),
    "Slice-1 (attributes)": (
        9, [helper.make_node("Slice", ["x"], ["y"], starts=[1, 2], ends=[3, 7], axes=[1, 2])], [out()], {}),
    "Pad-2 reflect (attributes)": (
        9, [helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")], [out()], {}),
    "Pad-2 constant value": (
        7, [helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 0, 0, 0, 2, 1], value=1.5)], [out()], {}),
    "Clip-6 (attributes)": (
        9, [helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)], [out()], {}),
    "TopK-1 (k attribute)": (
        9, [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("TopK", ["f"], ["y", "i"], k=5)],
        [out(), out("i", INT64)], {}),
    "Split-2 (split attribute)": (
        9, [helper.make_node("Split", ["x"], ["y", "z"], axis=2, split=[3, 5])], [out(), out("z")], {}),
    "BatchNormalization-7 + Dropout-7 + Conv": (
        7,
        [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "bs", "bb", "bm", "bv"], ["b"], epsilon=1e-3),
         helper.make_node("Dropout", ["b"], ["d"], ratio=0.3),
         helper.make_node("Relu", ["d"], ["y"])],
        [out()], {"cw": w(4, 3, 3, 3), "bs": positive(4), "bb": w(4), "bm": w(4), "bv": positive(4)}),
    "MaxPool-8 with indices, AveragePool-7 with pads": (
        8,
        [helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
        [out(), out("i", INT64), out("a")], {}),
    "Gemm-7, Flatten, Softmax-1 (2-D coercion)": (
        7,
        [helper.make_node("Flatten", ["x"], ["f"]),
         helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1, alpha=0.5),
         helper.make_node("Softmax", ["g"], ["y"])],
        [out()], {"gw": w(5, 192), "gb": w(5)}),
    "Sum/Mean-8 broadcasting, Unsqueeze/Squeeze-1 (axes attributes)": (
        8,
        [helper.make_node("Sum", ["x", "row"], ["s"]),
         helper.make_node("Mean", ["s", "x"], ["m"]),
         helper.make_node("Unsqueeze", ["m"], ["u"], axes=[0]),
         helper.make_node("Squeeze", ["u"], ["y"], axes=[0])],
        [out()], {"row": w(8)}),
    "ReduceMean-1, ArgMax-1 keepdims=0": (
        9,
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1),
         helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0)],
        [out(), out("i", INT64)], {}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_old_opset_model_matches_onnxruntime_on_the_original(name: str) -> None:
    opset, nodes, outputs, initializers = CASES[name]
    model = make_model(nodes, [X], outputs, initializers, opset=opset)
    assert_matches_ort(model, {"x": random_input(RNG, X[2])})
    assert load_onnx(model).metadata["source_opset"] == str(opset)


def test_an_opset_9_cnn_builds_into_an_engine_that_matches_onnxruntime() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "o", "m", "v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Upsample", ["p1", "up"], ["u1"], mode="nearest"),
        helper.make_node("Concat", ["u1", "r1"], ["cat"], axis=1),
        helper.make_node("Pad", ["cat"], ["pad"], pads=[0, 0, 1, 1, 0, 0, 1, 1]),
        helper.make_node("Conv", ["pad", "w2"], ["c2"]),
        helper.make_node("Slice", ["c2"], ["sl"], starts=[1], ends=[7], axes=[3]),
        helper.make_node("Flatten", ["sl"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1),
    ]
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "s": positive(8), "o": w(8), "m": w(8), "v": positive(8),
             "up": scales(1, 1, 2, 2), "w2": w(4, 16, 3, 3), "gw": w(10, 4 * 8 * 6), "gb": w(10)}  # fmt: skip
    model = make_model(nodes, [("x", FLOAT, ["batch", 3, 8, 8])], [out()], inits, opset=9)
    engine = build(model.SerializeToString(), "cpu", BuilderConfig(tuning_level=0, batch_range=(1, 2, 4)))
    for batch in (1, 3):
        x = random_input(RNG, (batch, 3, 8, 8))
        got = engine.run({"x": x})["y"]
        want = ort_outputs(model, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_external_weights_survive_the_upgrade(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"]),
        helper.make_node("Clip", ["c"], ["y"], min=-1.0, max=1.0),
    ]
    model = make_model(nodes, [X], [out()], {"cw": w(4, 3, 3, 3)}, opset=9)
    path = tmp_path / "model.onnx"
    stored = onnx.ModelProto()
    stored.CopyFrom(model)  # save_model rewrites the initializers it moves out
    onnx.save_model(stored, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size == 4 * 3 * 3 * 3 * 4
    x = random_input(RNG, X[2])
    graph = load_onnx(path)
    from farm.compiler import reference

    got = reference.run(graph, {"x": x})["y"]
    np.testing.assert_allclose(got, ort_outputs(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_scan_8_is_refused_rather_than_converted_wrongly() -> None:
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "xi"], ["s_next"]), helper.make_node("Identity", ["s_next"], ["yi"])],
        "body",
        [helper.make_tensor_value_info("s", FLOAT, [2]), helper.make_tensor_value_info("xi", FLOAT, [2])],
        [
            helper.make_tensor_value_info("s_next", FLOAT, [2]),
            helper.make_tensor_value_info("yi", FLOAT, [2]),
        ],
    )
    scan = helper.make_node("Scan", ["", "init", "seq"], ["final", "ys"], num_scan_inputs=1, body=body)
    model = make_model(
        [scan], [("init", FLOAT, [1, 2]), ("seq", FLOAT, [1, 3, 2])], [out("final"), out("ys")], opset=8
    )
    with pytest.raises(ModelError, match="Scan before opset 9 .* re-export the model at opset 9"):
        load_onnx(model)


def test_per_activation_batchnorm_is_refused() -> None:
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0)
    model = make_model([node], [X], [out()], {k: positive(3, 8, 8) for k in "sbmv"}, opset=7)
    with pytest.raises(ModelError, match="spatial=0"):
        load_onnx(model)


def test_nearest_resize_10_that_enlarges_and_shrinks_is_refused() -> None:
    node = helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")
    model = make_model([node], [X], [out()], {"s": scales(1, 1, 2, 0.5)}, opset=10)
    with pytest.raises(ModelError, match="enlarges some axes and shrinks others"):
        load_onnx(model)


def test_opset_11_models_are_not_rewritten() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [X], [out()], opset=11)
    assert "source_opset" not in load_onnx(model).metadata
