"""The inspect step: the facts of a real ONNX model."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from farm.worker.inspect import compute_model_facts


def test_facts_of_the_small_cnn(small_cnn) -> None:  # type: ignore[no-untyped-def]
    facts = compute_model_facts(onnx.load_from_string(small_cnn.data))
    assert facts["opsets"] == {"ai.onnx": 17}
    assert facts["inputs"] == [{"name": "input", "dtype": "float32", "shape": small_cnn.input_shape}]
    assert facts["outputs"] == [{"name": "logits", "dtype": "float32", "shape": small_cnn.output_shape}]
    assert facts["op_histogram"] == small_cnn.op_histogram
    assert facts["node_count"] == sum(small_cnn.op_histogram.values())
    assert facts["parameter_count"] == small_cnn.parameter_count
    assert facts["parameter_bytes"] == 4 * small_cnn.parameter_count
    compute = facts["compute"]
    assert compute["macs_by_op"] == {
        "Conv": small_cnn.conv_macs,
        "Gemm": small_cnn.gemm_macs,
        "MatMul": small_cnn.matmul_macs,
    }
    assert compute["macs"] == small_cnn.conv_macs + small_cnn.gemm_macs + small_cnn.matmul_macs
    assert compute["flops"] == 2 * compute["macs"]
    assert compute["symbolic_dims_as_1"] == [small_cnn.batch_symbol]
    assert compute["unestimated_nodes"] == []


def test_batched_matmul_grouped_conv_and_transposed_gemm() -> None:
    # MatMul [2,5,6,7] x [7,3]; Conv with 4 groups; Gemm with transA
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "b"], ["mm"]),
            helper.make_node("Conv", ["x", "w"], ["conv"], group=4, kernel_shape=[3, 3]),
            helper.make_node("Gemm", ["p", "q"], ["gemm"], transA=1),
        ],
        "shapes",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 5, 6, 7]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [7, 3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [12, 2, 3, 3]),
            helper.make_tensor_value_info("p", TensorProto.FLOAT, [9, 4]),  # transposed: K=9, M=4
            helper.make_tensor_value_info("q", TensorProto.FLOAT, [9, 5]),
        ],
        [
            helper.make_tensor_value_info("mm", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("conv", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("gemm", TensorProto.FLOAT, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    facts = compute_model_facts(model)
    assert facts["compute"]["macs_by_op"] == {
        "MatMul": 2 * 5 * 6 * 3 * 7,
        "Conv": (12 * 8 * 8) * (2 * 3 * 3),  # output 12×8×8, each reads C_in/group=2 channels × 3×3
        "Gemm": 4 * 5 * 9,
    }
    assert facts["parameter_count"] == 0


def test_unknown_shapes_are_listed_not_guessed() -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"], name="mystery")],
        "unknown",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )
    facts = compute_model_facts(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert facts["compute"]["macs"] == 0
    assert facts["compute"]["unestimated_nodes"] == ["mystery"]


def test_subgraph_nodes_and_custom_domains_are_counted() -> None:
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
            helper.make_node("Gelu", ["y"], ["z"], domain="com.microsoft"),
        ],
        "branches",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    facts = compute_model_facts(model)
    assert facts["op_histogram"] == {"If": 1, "Neg": 1, "Relu": 1, "com.microsoft::Gelu": 1}
    assert facts["opsets"] == {"ai.onnx": 17, "com.microsoft": 1}


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.INT8, TensorProto.INT64])
def test_dtypes_are_named(dtype: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "dtype",
        [helper.make_tensor_value_info("x", dtype, [3])],
        [helper.make_tensor_value_info("y", dtype, [3])],
    )
    facts = compute_model_facts(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    expected = helper.tensor_dtype_to_np_dtype(dtype).name
    assert facts["inputs"][0]["dtype"] == expected
