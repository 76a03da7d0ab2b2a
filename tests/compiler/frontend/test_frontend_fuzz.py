"""Hostile input: corrupted bytes and nonsensical-but-parseable protos never crash load_onnx with
anything but ModelError (and loading a model never raises for what the loader accepted)."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from frontend_models import FLOAT, INT64, make_model
from onnx import AttributeProto, helper

from farm.compiler import ModelError, load_onnx

RNG = np.random.default_rng(99)


def seed_model() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, None)])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"]),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["p", "target"], ["h"]),
        helper.make_node("ReduceSum", ["h", "ax1"], ["cond_f"], keepdims=0),
        helper.make_node("Greater", ["cond_f", "thr"], ["cond_v"]),
        helper.make_node("ReduceMin", ["cond_v_int"], ["cond_i"], keepdims=0),
        helper.make_node("Cast", ["cond_v"], ["cond_v_int"], to=INT64),
        helper.make_node("Cast", ["cond_i"], ["cond"], to=onnx.TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    inits: dict[str, np.ndarray] = {
        "w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "zero": np.array(0, np.int64),
        "ax": np.array([0], np.int64), "minus1": np.array([-1], np.int64), "ax1": np.array([1], np.int64),
        "thr": np.array(-1e9, np.float32),
    }
    return make_model(nodes, [("x", FLOAT, ["batch", 3, 16, 16])], [("y", FLOAT, None)], inits)


def old_seed_model() -> onnx.ModelProto:
    """An opset-9 model: loading it goes through onnx's version converter (frontend/upgrade.py)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("Upsample", ["c", "scales"], ["u"], mode="nearest"),
        helper.make_node("Pad", ["u"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
        helper.make_node("Slice", ["p"], ["s"], starts=[1], ends=[9], axes=[2]),
        helper.make_node("Clip", ["s"], ["k"], min=-1.0, max=1.0),
        helper.make_node("Split", ["k"], ["a", "b"], axis=1, split=[1, 3]),
        helper.make_node("Concat", ["b", "a"], ["y"], axis=1),
    ]
    inits = {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}
    return make_model(nodes, [("x", FLOAT, ["batch", 3, 16, 16])], [("y", FLOAT, None)], inits, opset=9)


def function_seed_model() -> onnx.ModelProto:
    """An opset-23 model of function ops: loading it builds and inlines their ONNX function bodies."""
    nodes = [
        helper.make_node("RMSNormalization", ["x", "g"], ["n"], epsilon=1e-5),
        helper.make_node("Attention", ["n", "n", "n"], ["a"], is_causal=1),
        helper.make_node("Reshape", ["a", "shape"], ["y"]),
    ]
    inits = {"g": RNG.standard_normal(16).astype(np.float32), "shape": np.array([0, -1], np.int64)}
    return make_model(nodes, [("x", FLOAT, ["batch", 3, 16, 16])], [("y", FLOAT, None)], inits, opset=23)


SEEDS = {"opset17": seed_model, "opset9": old_seed_model, "opset23": function_seed_model}


def load_or_model_error(data: bytes | onnx.ModelProto) -> None:
    with contextlib.suppress(ModelError):
        load_onnx(data)


def test_seed_model_loads() -> None:
    graph = load_onnx(seed_model())
    assert graph.values["h"].shape == ("batch", 64)
    assert load_onnx(old_seed_model()).values["y"].shape == ("batch", 4, 8, 18)
    assert load_onnx(function_seed_model()).values["y"].shape == ("batch", 768)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", list(SEEDS))
def test_corrupted_bytes_give_model_error_or_a_graph(which: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = bytearray(SEEDS[which]().SerializeToString())
    for _ in range(150):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            kind = rng.integers(0, 3)
            at = int(rng.integers(0, len(mutated)))
            if kind == 0:
                mutated[at] = int(rng.integers(0, 256))
            elif kind == 1:
                del mutated[at : at + int(rng.integers(1, 16))]
            else:
                mutated[at:at] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 8))).tolist())
        load_or_model_error(bytes(mutated))


def _mutate_attribute(attr: AttributeProto, rng: np.random.Generator) -> None:
    choice = rng.integers(0, 6)
    if choice == 0:
        attr.ClearField("ints")
        attr.ints.extend(rng.integers(-(2**40), 2**40, size=int(rng.integers(0, 5))).tolist())
        attr.type = AttributeProto.INTS
    elif choice == 1:
        attr.i = int(rng.integers(-(2**62), 2**62))
        attr.type = AttributeProto.INT
    elif choice == 2:
        attr.s = bytes(rng.integers(0, 256, size=5).tolist())
        attr.type = AttributeProto.STRING
    elif choice == 3:
        attr.f = float(rng.standard_normal() * 1e30)
        attr.type = AttributeProto.FLOAT
    elif choice == 4:
        attr.type = AttributeProto.GRAPH  # declared a graph but holds none
    else:
        attr.ClearField("ints")
        attr.ints.extend([0, -1, 7, 2**31])
        attr.type = AttributeProto.INTS


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", list(SEEDS))
def test_nonsensical_protos_give_model_error_or_a_graph(which: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    base = SEEDS[which]()
    for _ in range(120):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        graph = model.graph
        for _ in range(int(rng.integers(1, 4))):
            target = rng.integers(0, 7)
            node = graph.node[int(rng.integers(0, len(graph.node)))]
            if target == 0 and node.attribute:
                _mutate_attribute(node.attribute[int(rng.integers(0, len(node.attribute)))], rng)
            elif target == 1:
                node.attribute.add(name=str(rng.choice(["axis", "perm", "pads", "strides", "to", "group"])),
                                   type=AttributeProto.INTS, ints=[int(v) for v in rng.integers(-9, 9, size=3)])
            elif target == 2 and node.input:
                node.input[int(rng.integers(0, len(node.input)))] = str(rng.choice(["x", "w", "zero", "", "c"]))
            elif target == 3:
                init = graph.initializer[int(rng.integers(0, len(graph.initializer)))]
                init.dims.append(int(rng.integers(-3, 5)))
            elif target == 4:
                dim = graph.input[0].type.tensor_type.shape.dim[int(rng.integers(0, 4))]
                dim.dim_value = int(rng.integers(0, 5))
            elif target == 5:
                node.op_type = str(rng.choice(["Relu", "Softmax", "Transpose", "Split", "Resize", "Loop"]))
            else:
                graph.initializer[int(rng.integers(0, len(graph.initializer)))].data_type = int(rng.integers(0, 30))
        load_or_model_error(model)
