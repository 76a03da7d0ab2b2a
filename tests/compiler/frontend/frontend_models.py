"""Small ONNX models built with onnx.helper for the frontend tests, and an ORT comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from farm.compiler import load_onnx, reference

ORT_IR_VERSION = 8  # onnxruntime 1.31 loads IR <= 13; 8 covers opsets 11-21 in the checker


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence[int | str] | None]],
    outputs: Sequence[tuple[str, int, Sequence[int | str] | None]],
    initializers: dict[str, Any] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A model from nodes, (name, elem_type, shape) inputs/outputs and numpy initializers."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    ir = 10 if opset >= 21 else (9 if opset >= 19 else ORT_IR_VERSION)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model with ONNX Runtime (graph optimizations off, so it computes the ops as written)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_matches_ort(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-5
) -> None:
    """load_onnx + reference.run agree with ONNX Runtime on every output (values, dtypes, shapes)
    and inference predicted each output's dtype and shape."""
    graph = load_onnx(model)
    concrete = {name: tuple(x.shape) for name, x in feeds.items()}
    from farm.compiler.frontend import infer_shapes

    infer_shapes(graph, concrete)
    ours = reference.run(graph, feeds)
    theirs = ort_outputs(model, feeds)
    for name, expected in zip(graph.outputs, theirs, strict=True):
        got = ours[name]
        assert got.dtype == expected.dtype, (name, got.dtype, expected.dtype)
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        value = graph.values[name]
        assert value.shape == expected.shape, (name, value.shape, expected.shape)
        assert value.dtype == str(expected.dtype), (name, value.dtype, expected.dtype)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=name)


def random_input(rng: np.random.Generator, shape: Sequence[int], dtype: type = np.float32) -> np.ndarray:
    """Fresh random data (never zeros): normal floats, or small ints."""
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-5, 6, size=shape).astype(dtype)


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL
