"""``mlp``: a few ``nn.Linear`` + ``nn.ReLU`` layers in an ``nn.Sequential`` (Gemm, Relu, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec


def input_specs(in_features: int = 256, **_: object) -> list[InputSpec]:
    """One float feature vector per batch row."""
    return [InputSpec("input", "float32", ("batch", in_features), "float")]


def build(
    *,
    seed: int,
    opset: int,
    in_features: int = 256,
    hidden: Sequence[int] = (512, 512, 256),
    num_classes: int = 10,
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """``net = Sequential(Linear, ReLU, ..., Linear)``: ``Gemm(transB=1)`` and ``Relu`` nodes
    (``exporter="dynamo"``: ``Gemm(transA=0, transB=1)``)."""
    b = OnnxGraphBuilder(seed=seed, opset=opset, exporter=exporter)
    x = b.input("input", "float32", ("batch", in_features))
    widths = [in_features, *hidden, num_classes]
    index = 0
    with b.module("net"):
        for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            with b.module(f"net.{index}"):
                x = L.linear(b, x, fan_in, fan_out, input_rank=2)
            index += 1
            if layer < len(widths) - 2:
                with b.module(f"net.{index}"):
                    x = L.relu(b, x)
                index += 1
    b.output(x, "output", "float32", ("batch", num_classes))
    return b.model("mlp", doc="MLP: " + " -> ".join(str(w) for w in widths))
