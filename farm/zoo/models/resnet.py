"""``resnet``: torchvision's ResNet-18 structure.

Stem ``conv1 → bn1 → relu → maxpool``, four stages of two BasicBlocks (``conv-BN-relu-conv-BN``,
plus a ``1x1 conv + BN`` downsample where the stride or width changes, ``Add``, ``relu``), then
``avgpool`` (GlobalAveragePool), ``Flatten`` and the ``fc`` Gemm. Node and parameter names are those
of a torchvision export (``/layer2/layer2.0/downsample/downsample.0/Conv``).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec


def input_specs(image_size: int = 224, **_: object) -> list[InputSpec]:
    """An NCHW RGB image batch."""
    return [InputSpec("input", "float32", ("batch", 3, image_size, image_size), "image")]


def basic_block(
    b: OnnxGraphBuilder, x: str, in_ch: int, out_ch: int, stride: int, *, fold: bool
) -> str:
    """One BasicBlock in the current module scope (e.g. ``/layer1/layer1.0``)."""
    out = L.conv_bn(b, x, in_ch, out_ch, 3, stride=stride, conv_scope=("conv1",), bn_scope=("bn1",), fold=fold)
    with b.module("relu"):
        out = L.relu(b, out)
    # A small last gamma keeps the residual branch from swamping the identity, as in trained nets.
    out = L.conv_bn(b, out, out_ch, out_ch, 3, conv_scope=("conv2",), bn_scope=("bn2",), fold=fold,
                    gamma_range=(0.2, 0.5))
    identity = x
    if stride != 1 or in_ch != out_ch:
        with b.module("downsample"):
            identity = L.conv_bn(b, x, in_ch, out_ch, 1, stride=stride, conv_scope=("downsample.0",),
                                 bn_scope=("downsample.1",), fold=fold)
    out = b.op("Add", [out, identity])
    # torchvision reuses one ReLU module, so the exporter names its second call relu_1.
    with b.module("relu_1"):
        return L.relu(b, out)


def build(
    *,
    seed: int,
    opset: int,
    image_size: int = 224,
    num_classes: int = 1000,
    width: int = 64,
    blocks: Sequence[int] = (2, 2, 2, 2),
    batchnorm: str = "keep",
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """ResNet-18-like classifier (``blocks=(2, 2, 2, 2)``, ``width=64`` is ResNet-18 exactly).

    ``batchnorm="keep"`` writes ``Conv → BatchNormalization`` pairs (an export with
    ``training=TrainingMode.PRESERVE``); ``"fold"`` writes what the default TorchScript eval export
    produces, BatchNorm already folded into the convs. Both draw the same weights, so for one
    seed the two compute the same function. ``exporter="dynamo"`` (with ``batchnorm="fold"``,
    opset >= 18) writes ``torch.onnx.export(..., dynamo=True)``'s pattern
    (``tests/fixtures/torch/resnet_dynamo18.onnx``): GAP as ``ReduceMean``, flatten as ``Reshape``.
    """
    if image_size < 32:
        raise ValueError(f"resnet needs image_size >= 32 (five stride-2 stages), got {image_size}")
    fold = L.folds_batchnorm(batchnorm)
    b = OnnxGraphBuilder(seed=seed, opset=opset, exporter=exporter)
    x = b.input("input", "float32", ("batch", 3, image_size, image_size))
    x = L.conv_bn(b, x, 3, width, 7, stride=2, conv_scope=("conv1",), bn_scope=("bn1",), fold=fold)
    # conv1's padding is 3 for the 7x7 kernel, which conv_bn derives as (7 - 1) // 2.
    with b.module("relu"):
        x = L.relu(b, x)
    with b.module("maxpool"):
        x = L.max_pool(b, x, (3, 3), (2, 2), 1)
    in_ch = width
    for stage, count in enumerate(blocks):
        out_ch = width * 2**stage
        with b.module(f"layer{stage + 1}"):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                with b.module(f"layer{stage + 1}.{index}"):
                    x = basic_block(b, x, in_ch, out_ch, stride, fold=fold)
                in_ch = out_ch
    with b.module("avgpool"):
        x = L.global_avg_pool(b, x)
    x = L.flatten(b, x, in_ch)
    with b.module("fc"):
        x = L.linear(b, x, in_ch, num_classes, input_rank=2)
    b.output(x, "logits", "float32", ("batch", num_classes))
    return b.model("resnet", doc=f"ResNet (BasicBlocks {tuple(blocks)}, width {width}, {image_size}px)")
