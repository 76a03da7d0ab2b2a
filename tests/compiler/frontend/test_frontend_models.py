"""load_onnx + reference.run against ONNX Runtime on small models covering each op family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from frontend_models import BOOL, FLOAT, INT64, assert_matches_ort, make_model, random_input
from onnx import helper, numpy_helper

from farm.compiler import load_onnx, reference
from farm.compiler.frontend import infer_shapes

RNG = np.random.default_rng(1234)


def weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def test_cnn_block_matches_ort() -> None:
    """ResNet/MobileNet-style: conv variants, BN, activations, SE, pooling, head."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "s1", "o1", "m1", "v1"], ["bn1"], epsilon=1e-3),
        helper.make_node("Clip", ["bn1", "lo", "hi"], ["r6"]),
        helper.make_node("Conv", ["r6", "wd"], ["dw"], group=8, kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        helper.make_node("HardSwish", ["dw"], ["hs"]),
        helper.make_node("GlobalAveragePool", ["hs"], ["se0"]),
        helper.make_node("Conv", ["se0", "wse"], ["se1"]),
        helper.make_node("HardSigmoid", ["se1"], ["se2"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["hs", "se2"], ["se"]),
        helper.make_node("Conv", ["se", "wdil"], ["dil"], dilations=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("LeakyRelu", ["dil"], ["lr"], alpha=0.1),
        helper.make_node("PRelu", ["lr", "slope"], ["pr"]),
        helper.make_node("Add", ["pr", "se"], ["res"]),
        helper.make_node("MaxPool", ["res"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["res"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], axis=1),
        helper.make_node("Sigmoid", ["cat"], ["sg"]),
        helper.make_node("GlobalMaxPool", ["sg"], ["gmp"]),
        helper.make_node("Flatten", ["gmp"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    inits = {
        "w1": weights(8, 3, 3, 3), "b1": weights(8),
        "s1": np.abs(weights(8)) + 0.5, "o1": weights(8), "m1": weights(8), "v1": np.abs(weights(8)) + 0.1,
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
        "wd": weights(8, 1, 3, 3), "wse": weights(8, 8, 1, 1), "wdil": weights(8, 8, 3, 3),
        "slope": np.abs(weights(8, 1, 1)), "fc": weights(5, 16), "fcb": weights(5),
    }
    model = make_model(nodes, [("x", FLOAT, ["batch", 3, 19, 19])], [("y", FLOAT, ["batch", 5])], inits)
    for batch in (1, 3):
        assert_matches_ort(model, {"x": random_input(RNG, (batch, 3, 19, 19))}, rtol=1e-4, atol=1e-5)


def test_transformer_block_matches_ort() -> None:
    """BERT-style: embeddings, decomposed and fused LayerNorm, attention with a mask built from
    Shape arithmetic, Erf GELU."""
    hidden, heads = 16, 2
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("LayerNormalization", ["e", "ln_s", "ln_b"], ["h0"], axis=-1, epsilon=1e-12),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "zero"], ["bsz"], axis=0),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq"], axis=0),
        helper.make_node("Unsqueeze", ["bsz", "ax0"], ["bsz1"]),
        helper.make_node("Unsqueeze", ["seq", "ax0"], ["seq1"]),
        helper.make_node("Concat", ["bsz1", "seq1", "heads", "depth"], ["split_shape"], axis=0),
        helper.make_node("MatMul", ["h0", "wq"], ["q0"]),
        helper.make_node("Reshape", ["q0", "split_shape"], ["q1"]),
        helper.make_node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["q1"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores0"]),
        helper.make_node("Div", ["scores0", "sqrt_d"], ["scores1"]),
        helper.make_node("Unsqueeze", ["mask", "ax12"], ["mask4"]),
        helper.make_node("Cast", ["mask4"], ["maskf"], to=FLOAT),
        helper.make_node("Sub", ["one_f", "maskf"], ["inv"]),
        helper.make_node("Mul", ["inv", "neg_big"], ["bias"]),
        helper.make_node("Add", ["scores1", "bias"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "q"], ["ctx0"]),
        helper.make_node("Transpose", ["ctx0"], ["ctx1"], perm=[0, 2, 1, 3]),
        helper.make_node("Concat", ["bsz1", "seq1", "hid"], ["merge_shape"], axis=0),
        helper.make_node("Reshape", ["ctx1", "merge_shape"], ["ctx"]),
        helper.make_node("Add", ["ctx", "h0"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["r", "mu"], ["dev"]),
        helper.make_node("Pow", ["dev", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["dev", "std"], ["norm"]),
        helper.make_node("Div", ["norm", "sqrt2"], ["g0"]),
        helper.make_node("Erf", ["g0"], ["g1"]),
        helper.make_node("Add", ["g1", "one_f"], ["g2"]),
        helper.make_node("Mul", ["norm", "g2"], ["g3"]),
        helper.make_node("Mul", ["g3", "half"], ["y"]),
    ]
    inits = {
        "emb": weights(11, hidden), "ln_s": np.abs(weights(hidden)) + 0.5, "ln_b": weights(hidden),
        "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "ax0": np.array([0], np.int64),
        "heads": np.array([heads], np.int64), "depth": np.array([hidden // heads], np.int64),
        "hid": np.array([hidden], np.int64), "wq": weights(hidden, hidden),
        "sqrt_d": np.array(np.sqrt(hidden // heads), np.float32), "ax12": np.array([1, 2], np.int64),
        "one_f": np.array(1.0, np.float32), "neg_big": np.array(-10000.0, np.float32),
        "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
        "sqrt2": np.array(np.sqrt(2.0), np.float32), "half": np.array(0.5, np.float32),
    }
    model = make_model(
        nodes,
        [("ids", INT64, ["batch", "seq"]), ("mask", INT64, ["batch", "seq"])],
        [("y", FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    graph = load_onnx(model)
    assert graph.values["y"].shape == ("batch", "seq", hidden)
    assert graph.values["q1"].shape == ("batch", "seq", heads, hidden // heads)
    for batch, seq in ((1, 5), (2, 7)):
        ids = RNG.integers(0, 11, size=(batch, seq)).astype(np.int64)
        mask = (RNG.random((batch, seq)) > 0.3).astype(np.int64)
        assert_matches_ort(model, {"ids": ids, "mask": mask}, rtol=1e-4, atol=1e-5)


UNARY_FLOAT = ["Abs", "Neg", "Exp", "Tanh", "Sigmoid", "Erf", "Floor", "Ceil", "Round", "Sign", "Relu", "Softplus",
               "Softsign", "Sin", "Cos", "Atan", "HardSwish", "Elu", "Selu", "Celu", "Mish"]


@pytest.mark.parametrize("op_type", UNARY_FLOAT)
def test_unary_ops_match_ort(op_type: str) -> None:
    opset = 18
    model = make_model([helper.make_node(op_type, ["x"], ["y"])], [("x", FLOAT, [3, 4])], [("y", FLOAT, [3, 4])],
                       opset=opset)
    assert_matches_ort(model, {"x": random_input(RNG, (3, 4)) * 2}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Equal", "Less", "Greater",
                                     "LessOrEqual", "GreaterOrEqual", "Sum", "Mean"])
def test_broadcasting_binary_ops_match_ort(op_type: str) -> None:
    is_compare = op_type in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
    model = make_model(
        [helper.make_node(op_type, ["a", "b"], ["y"])],
        [("a", FLOAT, [2, 3, 4]), ("b", FLOAT, [3, 1])],
        [("y", BOOL if is_compare else FLOAT, [2, 3, 4])],
    )
    a = np.abs(random_input(RNG, (2, 3, 4))) + 0.1 if op_type == "Pow" else random_input(RNG, (2, 3, 4))
    b = np.round(random_input(RNG, (3, 1)))
    if op_type == "Div":
        b = b + np.where(b >= 0, 0.5, -0.5).astype(np.float32)
    assert_matches_ort(model, {"a": a, "b": b.astype(np.float32)})


def test_integer_and_logic_ops_match_ort() -> None:
    nodes = [
        helper.make_node("Div", ["a", "b"], ["q"]),
        helper.make_node("Mod", ["a", "b"], ["m"]),
        helper.make_node("Mod", ["a", "b"], ["fm"], fmod=1),
        helper.make_node("Greater", ["a", "b"], ["gt"]),
        helper.make_node("Not", ["gt"], ["ngt"]),
        helper.make_node("Equal", ["a", "b"], ["eq"]),
        helper.make_node("Or", ["ngt", "eq"], ["o"]),
        helper.make_node("And", ["o", "gt"], ["an"]),
        helper.make_node("Where", ["o", "a", "b"], ["w"]),
        helper.make_node("Cast", ["w"], ["wf"], to=FLOAT),
        helper.make_node("CastLike", ["a", "wf"], ["cl"]),
    ]
    outs = [("q", INT64, [4, 5]), ("m", INT64, [4, 5]), ("fm", INT64, [4, 5]), ("an", BOOL, [4, 5]),
            ("wf", FLOAT, [4, 5]), ("cl", FLOAT, [4, 5])]
    model = make_model(nodes, [("a", INT64, [4, 5]), ("b", INT64, [5])], outs)
    b = RNG.integers(1, 4, size=5) * RNG.choice([-1, 1], size=5)
    assert_matches_ort(model, {"a": RNG.integers(-9, 10, size=(4, 5)).astype(np.int64), "b": b.astype(np.int64)})


def test_shape_ops_match_ort() -> None:
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["s0", "s1"], axis=1),
        helper.make_node("Slice", ["s1", "st", "en", "axes", "steps"], ["sl"]),
        helper.make_node("Transpose", ["sl"], ["t"], perm=[2, 0, 1]),
        helper.make_node("Reshape", ["t", "shape0"], ["rz"], allowzero=0),
        helper.make_node("Squeeze", ["rz", "sq_axes"], ["sq"]),
        helper.make_node("Unsqueeze", ["sq", "usq_axes"], ["usq"]),
        helper.make_node("Expand", ["s0", "exp_shape"], ["ex"]),
        helper.make_node("Tile", ["ex", "reps"], ["ti"]),
        helper.make_node("Pad", ["ti", "pads", "pad_value"], ["pc"], mode="constant"),
        helper.make_node("Pad", ["ti", "pads"], ["pr"], mode="reflect"),
        helper.make_node("Pad", ["ti", "pads"], ["pe"], mode="edge"),
        helper.make_node("Shape", ["pe"], ["shp"], start=1),
        helper.make_node("ConstantOfShape", ["shp"], ["cos"], value=helper.make_tensor("v", FLOAT, [1], [2.5])),
        helper.make_node("Range", ["r0", "r1", "r2"], ["rng"]),
        helper.make_node("Size", ["x"], ["size"]),
    ]
    inits = {
        "sizes": np.array([2, 4], np.int64), "st": np.array([-1, 0], np.int64), "en": np.array([-100, 5], np.int64),
        "axes": np.array([2, 1], np.int64), "steps": np.array([-2, 2], np.int64),
        "shape0": np.array([0, -1, 1], np.int64), "sq_axes": np.array([-1], np.int64),
        "usq_axes": np.array([0, 3], np.int64), "exp_shape": np.array([3, 1, 1, 7], np.int64),
        "reps": np.array([1, 2, 1, 1], np.int64), "pads": np.array([0, 0, 1, 2, 0, 1, 1, 0], np.int64),
        "pad_value": np.array(-1.5, np.float32), "r0": np.array(1.0, np.float32), "r1": np.array(4.0, np.float32),
        "r2": np.array(0.7, np.float32),
    }
    outs = [(n, FLOAT, None) for n in ("usq", "pc", "pr", "pe", "cos", "rng")] + [("size", INT64, None)]
    model = make_model(nodes, [("x", FLOAT, [2, 6, 7])], outs, inits)
    assert_matches_ort(model, {"x": random_input(RNG, (2, 6, 7))})


def test_indexing_and_selection_ops_match_ort() -> None:
    nodes = [
        helper.make_node("GatherElements", ["x", "gi"], ["ge"], axis=1),
        helper.make_node("ScatterND", ["x", "si", "su"], ["snd"]),
        helper.make_node("ScatterElements", ["x", "gi", "ge"], ["sel"], axis=1, reduction="add"),
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], axis=1, largest=1),
        helper.make_node("TopK", ["x", "k"], ["bv", "bi"], axis=-1, largest=0),
        helper.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=0),
        helper.make_node("ArgMin", ["x"], ["an"], axis=0, select_last_index=1),
        helper.make_node("CumSum", ["x", "cax"], ["cs"], exclusive=1, reverse=1),
        helper.make_node("Trilu", ["x", "tk"], ["tr"], upper=0),
        helper.make_node("OneHot", ["oi", "depth", "ov"], ["oh"], axis=-1),
        helper.make_node("Einsum", ["x", "x"], ["es"], equation="ij,kj->ik"),
        helper.make_node("ReduceSum", ["x", "rax"], ["rs"], keepdims=0),
        helper.make_node("ReduceMax", ["x"], ["rmax"], axes=[1]),
        helper.make_node("ReduceL2", ["x"], ["rl2"], axes=[0], keepdims=0),
        helper.make_node("ReduceProd", ["x"], ["rp"]),
        helper.make_node("ReduceLogSumExp", ["x"], ["rlse"], axes=[1]),
        helper.make_node("LogSoftmax", ["x"], ["lsm"], axis=0),
        helper.make_node("Gather", ["x", "neg_idx"], ["gneg"], axis=1),
    ]
    inits = {
        "gi": np.array([[0, 2], [1, 1], [3, 0]], np.int64), "si": np.array([[1], [0]], np.int64),
        "su": weights(2, 4), "k": np.array([2], np.int64), "cax": np.array(1, np.int64),
        "tk": np.array(1, np.int64), "oi": np.array([[1, -1], [0, 2]], np.int64), "depth": np.array(4, np.int64),
        "ov": np.array([0.5, 3.0], np.float32), "rax": np.array([0], np.int64),
        "neg_idx": np.array([[-1, 0]], np.int64),
    }
    outs = [(n, FLOAT, None) for n in ("ge", "snd", "sel", "tv")] + [("ti", INT64, None)]
    outs += [("bv", FLOAT, None), ("bi", INT64, None), ("am", INT64, None), ("an", INT64, None)]
    outs += [(n, FLOAT, None) for n in ("cs", "tr", "oh", "es", "rs", "rmax", "rl2", "rp", "rlse", "lsm", "gneg")]
    model = make_model(nodes, [("x", FLOAT, [3, 4])], outs, inits)
    assert_matches_ort(model, {"x": random_input(RNG, (3, 4))})


@pytest.mark.parametrize(
    ("mode", "transform", "nearest"),
    [
        ("nearest", "asymmetric", "floor"),
        ("nearest", "half_pixel", "round_prefer_floor"),
        ("nearest", "align_corners", "round_prefer_ceil"),
        ("linear", "half_pixel", "floor"),
        ("linear", "pytorch_half_pixel", "floor"),
        ("linear", "align_corners", "floor"),
        ("linear", "asymmetric", "floor"),
        ("cubic", "half_pixel", "floor"),
        ("cubic", "align_corners", "floor"),
    ],
)
def test_resize_matches_ort(mode: str, transform: str, nearest: str) -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                            coordinate_transformation_mode=transform, nearest_mode=nearest)
    model = make_model([node], [("x", FLOAT, [1, 2, 5, 6])], [("y", FLOAT, None)],
                       {"scales": np.array([1, 1, 2.0, 1.5], np.float32)})
    assert_matches_ort(model, {"x": random_input(RNG, (1, 2, 5, 6))}, rtol=1e-4, atol=1e-5)


def test_resize_with_sizes_downsampling_matches_ort() -> None:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")
    model = make_model([node], [("x", FLOAT, [1, 1, 8, 9])], [("y", FLOAT, None)],
                       {"sizes": np.array([1, 1, 3, 4], np.int64)})
    assert_matches_ort(model, {"x": random_input(RNG, (1, 1, 8, 9))}, rtol=1e-4, atol=1e-5)


def test_conv_transpose_matches_ort() -> None:
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 1, 1],
                         output_padding=[1, 1], group=2),
        helper.make_node("ConvTranspose", ["x", "w"], ["z"], strides=[2, 2], auto_pad="SAME_UPPER", group=2),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 4, 5, 6])], [("y", FLOAT, None), ("z", FLOAT, None)],
                       {"w": weights(4, 3, 3, 3), "b": weights(6)})
    assert_matches_ort(model, {"x": random_input(RNG, (2, 4, 5, 6))}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18, 21])
def test_opset_dependent_forms_match_ort(opset: int) -> None:
    """Squeeze/Unsqueeze/Split/Reduce*/Softmax across the opsets where their form changed."""
    axes_as_input = opset >= 13
    reduce_input = opset >= 18
    inits: dict[str, np.ndarray] = {"ax": np.array([1], np.int64), "sp": np.array([1, 3], np.int64)}

    def with_axes(op_type: str, inputs: list[str], outputs: list[str], key: str, value: list[int], as_input: bool,
                  **attrs: Any) -> onnx.NodeProto:
        if as_input:
            name = f"{outputs[0]}_{key}"
            inits[name] = np.array(value, np.int64)
            return helper.make_node(op_type, [*inputs, name], outputs, **attrs)
        return helper.make_node(op_type, inputs, outputs, **{key: value, **attrs})

    nodes = [
        with_axes("Unsqueeze", ["x"], ["u"], "axes", [1], axes_as_input),
        with_axes("Squeeze", ["u"], ["s"], "axes", [1], axes_as_input),
        with_axes("Split", ["s"], ["p0", "p1"], "split", [1, 3], axes_as_input, axis=2),
        with_axes("ReduceMean", ["p1"], ["rm"], "axes", [2], reduce_input, keepdims=1),
        with_axes("ReduceSum", ["p1"], ["rsum"], "axes", [0, 2], axes_as_input, keepdims=0),
        helper.make_node("Softmax", ["x"], ["sm"], axis=1),
        helper.make_node("LogSoftmax", ["x"], ["lsm"], axis=-1),
        helper.make_node("Split", ["x"], ["h0", "h1"], axis=-1, **({"num_outputs": 2} if opset >= 18 else {})),  # type: ignore[arg-type]
    ]
    outs = [(n, FLOAT, None) for n in ("p0", "rm", "rsum", "sm", "lsm", "h0", "h1")]
    model = make_model(nodes, [("x", FLOAT, [2, 3, 4])], outs, inits, opset=opset)
    assert_matches_ort(model, {"x": random_input(RNG, (2, 3, 4))})


def test_dynamic_shape_chain_resolves_with_concrete_inputs() -> None:
    """Shape -> Gather -> Mul -> Concat -> Reshape: symbolic at load, concrete after infer_shapes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i01"], ["bs"], axis=0),
        helper.make_node("ReduceProd", ["bs"], ["rows"], keepdims=1),
        helper.make_node("Concat", ["rows", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = make_model(nodes, [("x", FLOAT, ["batch", "seq", 8])], [("y", FLOAT, None)],
                       {"i01": np.array([0, 1], np.int64), "minus1": np.array([-1], np.int64)})
    graph = load_onnx(model)
    assert graph.values["y"].shape is not None and len(graph.values["y"].shape) == 2
    infer_shapes(graph, {"x": (3, 5, 8)})
    assert graph.values["y"].shape == (15, 8)
    assert graph.values["target"].shape == (2,)
    x = random_input(RNG, (3, 5, 8))
    assert reference.run(graph, {"x": x})["y"].shape == (15, 8)


def test_symbolic_reshape_keeps_batch_name() -> None:
    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, ["batch", "seq", 8])], [("y", FLOAT, None)],
                       {"target": np.array([0, 0, 2, 4], np.int64)})
    graph = load_onnx(model, input_shapes={"x": ["N", 7, 8]})
    assert graph.values["y"].shape == ("N", 7, 2, 4)


def test_upsample_becomes_resize() -> None:
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    model = make_model([node], [("x", FLOAT, [1, 2, 3, 4])], [("y", FLOAT, None)],
                       {"scales": np.array([1, 1, 2, 3], np.float32)}, opset=11)
    graph = load_onnx(model)
    assert [n.op_type for n in graph.nodes] == ["Resize"]
    x = random_input(RNG, (1, 2, 3, 4))
    expected = np.repeat(np.repeat(x, 2, axis=2), 3, axis=3)
    np.testing.assert_array_equal(reference.run(graph, {"x": x})["y"], expected)
    assert graph.values["y"].shape == (1, 2, 6, 12)


def test_loop_with_scan_output_matches_ort() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Mul", ["acc_out", "two"], ["scan_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         helper.make_tensor_value_info("acc_in", FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info("acc_out", FLOAT, [3]),
         helper.make_tensor_value_info("scan_out", FLOAT, [3])],
    )
    nodes = [helper.make_node("Loop", ["trips", "", "init"], ["final", "stacked"], body=body)]
    model = make_model(nodes, [("x", FLOAT, [3]), ("init", FLOAT, [3])],
                       [("final", FLOAT, [3]), ("stacked", FLOAT, [4, 3])],
                       {"trips": np.array(4, np.int64), "two": np.array(2.0, np.float32)})
    assert_matches_ort(model, {"x": random_input(RNG, (3,)), "init": random_input(RNG, (3,))})


def test_external_data_written_by_onnx_loads(tmp_path: Path) -> None:
    weight = weights(64, 32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", FLOAT, ["n", 64])],
                       [("y", FLOAT, ["n", 32])], {"w": weight})
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    graph = load_onnx(path)
    np.testing.assert_array_equal(graph.const("w"), weight)


def test_sparse_initializer_is_densified() -> None:
    model = make_model([helper.make_node("Add", ["x", "s"], ["y"])], [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])])
    values = numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([1, 5], np.int64), "s_idx")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2, 3]))
    graph = load_onnx(model)
    np.testing.assert_array_equal(graph.const("s"), [[0, 5, 0], [0, 0, 7]])


def test_pooling_and_normalization_variants_match_ort() -> None:
    nodes = [
        helper.make_node("AveragePool", ["x"], ["ap"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                         ceil_mode=1, count_include_pad=0),
        helper.make_node("MaxPool", ["x"], ["mp", "mi"], kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 1, 0, 0]),
        helper.make_node("LpPool", ["x"], ["lp"], kernel_shape=[2, 2], p=3),
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["inorm"], epsilon=1e-3),
        helper.make_node("LRN", ["x"], ["lrn"], size=3),
        helper.make_node("LpNormalization", ["x"], ["l2n"], axis=1, p=2),
        helper.make_node("DepthToSpace", ["x"], ["d2s"], blocksize=2, mode="CRD"),
        helper.make_node("SpaceToDepth", ["x"], ["s2d"], blocksize=2),
        helper.make_node("GlobalLpPool", ["x"], ["glp"], p=2),
    ]
    outs = [(n, FLOAT, None) for n in ("ap", "mp")] + [("mi", INT64, None)]
    outs += [(n, FLOAT, None) for n in ("lp", "inorm", "lrn", "l2n", "d2s", "s2d", "glp")]
    model = make_model(nodes, [("x", FLOAT, [2, 4, 6, 6])], outs, {"s": weights(4), "b": weights(4)})
    assert_matches_ort(model, {"x": random_input(RNG, (2, 4, 6, 6))}, rtol=1e-4, atol=1e-5)


def test_auto_pad_is_resolved_into_pads() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_LOWER", strides=[2, 2]),
        helper.make_node("MaxPool", ["c"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    model = make_model(nodes, [("x", FLOAT, [1, 2, 7, 8])], [("y", FLOAT, None)], {"w": weights(3, 2, 3, 3)})
    graph = load_onnx(model)
    conv, pool = graph.nodes
    assert "auto_pad" not in conv.attrs and conv.attrs["pads"] == [1, 1, 1, 0]
    assert conv.attrs["kernel_shape"] == [3, 3]
    assert "auto_pad" not in pool.attrs and pool.attrs["pads"] == [0, 0, 0, 0]
    assert_matches_ort(model, {"x": random_input(RNG, (1, 2, 7, 8))})


def test_qdq_and_integer_ops_match_ort() -> None:
    """QAT-style QuantizeLinear/DequantizeLinear (per tensor and per channel) and integer GEMM/conv."""
    uint8 = onnx.TensorProto.UINT8
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["qc"]),
        helper.make_node("ConvInteger", ["xq", "wq8", "xz"], ["ci"]),
        helper.make_node("DynamicQuantizeLinear", ["x"], ["dq", "dqs", "dqz"]),
    ]
    inits = {
        "xs": np.array(0.05, np.float32), "xz": np.array(128, np.uint8),
        "wq": RNG.integers(-100, 100, size=(3, 2, 3, 3)).astype(np.int8),
        "wq8": RNG.integers(0, 255, size=(3, 2, 3, 3)).astype(np.uint8),
        "ws": np.array([0.01, 0.02, 0.03], np.float32), "wz": np.zeros(3, np.int8),
        "ys": np.array(0.2, np.float32), "yz": np.array(10, np.uint8),
    }
    outs = [("c", FLOAT, None), ("qc", uint8, None), ("ci", onnx.TensorProto.INT32, None), ("dq", uint8, None),
            ("dqs", FLOAT, None), ("dqz", uint8, None)]
    model = make_model(nodes, [("x", FLOAT, [1, 2, 6, 5])], outs, inits)
    assert_matches_ort(model, {"x": random_input(RNG, (1, 2, 6, 5))}, rtol=1e-5, atol=1e-5)


def test_non_max_suppression_matches_ort() -> None:
    boxes = np.sort(RNG.random((2, 12, 4)).astype(np.float32) * 10, axis=-1)
    scores = RNG.random((2, 3, 12)).astype(np.float32)
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "thr"], ["sel"])
    model = make_model([node], [("boxes", FLOAT, [2, 12, 4]), ("scores", FLOAT, [2, 3, 12])], [("sel", INT64, None)],
                       {"k": np.array([4], np.int64), "iou": np.array([0.3], np.float32),
                        "thr": np.array([0.2], np.float32)})
    graph = load_onnx(model)
    ours = reference.run(graph, {"boxes": boxes, "scores": scores})["sel"]
    from frontend_models import ort_outputs

    np.testing.assert_array_equal(ours, ort_outputs(model, {"boxes": boxes, "scores": scores})[0])
