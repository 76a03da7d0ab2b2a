"""``mobilenet``: torchvision's MobileNetV3 building blocks with MobileNetV2's ReLU6 blocks mixed in.

``features.0`` is a stride-2 ``conv-BN-HardSwish`` stem; then inverted residuals (``block.0``:
1x1 expand conv-BN-act, ``block.1``: depthwise kxk conv-BN-act (``group`` = channels), optionally
``block.2``: squeeze-and-excitation ``GlobalAveragePool → 1x1 conv → Relu → 1x1 conv →
HardSigmoid → Mul(scale, x)``, last: 1x1 project conv-BN), with an ``Add`` when the block keeps
its shape. The first blocks use ReLU6, exported as ``Clip(x, 0.0, 6.0)`` with ``Constant``
bounds; the later ones HardSwish and SE, as in MobileNetV3. Then a 1x1 conv-BN-HardSwish,
``GlobalAveragePool``, ``Flatten`` and the classifier ``Gemm → HardSwish → Gemm``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec


@dataclass(frozen=True)
class BlockConfig:
    """One inverted residual: channels in/out, expanded width, depthwise kernel, stride, SE, act."""

    in_ch: int
    kernel: int
    expand: int
    out_ch: int
    use_se: bool
    activation: str  # "relu6" or "hardswish"
    stride: int


BLOCKS = (
    BlockConfig(16, 3, 64, 24, False, "relu6", 2),
    BlockConfig(24, 3, 72, 24, False, "relu6", 1),
    BlockConfig(24, 5, 96, 40, True, "hardswish", 2),
    BlockConfig(40, 5, 240, 40, True, "hardswish", 1),
    BlockConfig(40, 5, 120, 48, True, "hardswish", 1),
    BlockConfig(48, 5, 144, 48, True, "hardswish", 1),
    BlockConfig(48, 5, 288, 96, True, "hardswish", 2),
    BlockConfig(96, 5, 576, 96, True, "hardswish", 1),
)
LAST_CHANNELS = 576
CLASSIFIER_HIDDEN = 1024


def input_specs(image_size: int = 224, **_: object) -> list[InputSpec]:
    """An NCHW RGB image batch."""
    return [InputSpec("input", "float32", ("batch", 3, image_size, image_size), "image")]


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never below 90 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def activation(b: OnnxGraphBuilder, x: str, kind: str) -> str:
    """The block activation ``kind``: ``"relu6"`` (Clip) or ``"hardswish"``."""
    return L.relu6(b, x) if kind == "relu6" else L.hardswish(b, x)


def conv_bn_act(b: OnnxGraphBuilder, x: str, in_ch: int, out_ch: int, kernel: int, *, prefix: str,
                stride: int = 1, groups: int = 1, act: str | None, fold: bool) -> str:
    """torchvision's ``Conv2dNormActivation`` as module ``prefix`` (children ``.0``, ``.1``, ``.2``)."""
    with b.module(prefix):
        x = L.conv_bn(b, x, in_ch, out_ch, kernel, stride=stride, groups=groups,
                      conv_scope=(f"{prefix}.0",), bn_scope=(f"{prefix}.1",), fold=fold)
        if act is None:
            return x
        with b.module(f"{prefix}.2"):
            return activation(b, x, act)


def squeeze_excitation(b: OnnxGraphBuilder, x: str, channels: int) -> str:
    """torchvision's ``SqueezeExcitation(channels, make_divisible(channels // 4))`` with Hardsigmoid."""
    squeeze = make_divisible(channels // 4)
    with b.module("avgpool"):
        scale = L.global_avg_pool(b, x)
    with b.module("fc1"):
        scale = L.conv2d(b, scale, channels, squeeze, 1)
    with b.module("activation"):
        scale = L.relu(b, scale)
    with b.module("fc2"):
        scale = L.conv2d(b, scale, squeeze, channels, 1)
    with b.module("scale_activation"):
        scale = L.hardsigmoid(b, scale)
    return b.op("Mul", [scale, x])


def inverted_residual(b: OnnxGraphBuilder, x: str, cfg: BlockConfig, *, fold: bool) -> str:
    """One ``InvertedResidual`` in the current scope (``/features/features.N``)."""
    out = x
    with b.module("block"):
        index = 0
        if cfg.expand != cfg.in_ch:
            out = conv_bn_act(b, out, cfg.in_ch, cfg.expand, 1, prefix=f"block.{index}", act=cfg.activation,
                              fold=fold)
            index += 1
        out = conv_bn_act(b, out, cfg.expand, cfg.expand, cfg.kernel, prefix=f"block.{index}", stride=cfg.stride,
                          groups=cfg.expand, act=cfg.activation, fold=fold)
        index += 1
        if cfg.use_se:
            with b.module(f"block.{index}"):
                out = squeeze_excitation(b, out, cfg.expand)
            index += 1
        out = conv_bn_act(b, out, cfg.expand, cfg.out_ch, 1, prefix=f"block.{index}", act=None, fold=fold)
    if cfg.stride == 1 and cfg.in_ch == cfg.out_ch:
        out = b.op("Add", [out, x])
    return out


def scaled(config: BlockConfig, width_mult: float) -> BlockConfig:
    """A block with its channel counts scaled as torchvision's ``adjust_channels`` does."""
    return replace(
        config,
        in_ch=make_divisible(config.in_ch * width_mult),
        expand=make_divisible(config.expand * width_mult),
        out_ch=make_divisible(config.out_ch * width_mult),
    )


def build(
    *,
    seed: int,
    opset: int,
    image_size: int = 224,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    batchnorm: str = "keep",
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """The classifier; ``width_mult`` scales every channel count (torchvision's rounding to
    multiples of 8); ``batchnorm`` and ``exporter`` as for ``resnet``."""
    if image_size < 32:
        raise ValueError(f"mobilenet needs image_size >= 32 (four stride-2 stages), got {image_size}")
    fold = L.folds_batchnorm(batchnorm)
    b = OnnxGraphBuilder(seed=seed, opset=opset, exporter=exporter)
    x = b.input("input", "float32", ("batch", 3, image_size, image_size))
    blocks = [scaled(cfg, width_mult) for cfg in BLOCKS]
    last_channels = make_divisible(LAST_CHANNELS * width_mult)
    classifier_hidden = make_divisible(CLASSIFIER_HIDDEN * width_mult)
    with b.module("features"):
        x = conv_bn_act(b, x, 3, blocks[0].in_ch, 3, prefix="features.0", stride=2, act="hardswish", fold=fold)
        for index, cfg in enumerate(blocks, start=1):
            with b.module(f"features.{index}"):
                x = inverted_residual(b, x, cfg, fold=fold)
        x = conv_bn_act(b, x, blocks[-1].out_ch, last_channels, 1, prefix=f"features.{len(blocks) + 1}",
                        act="hardswish", fold=fold)
    with b.module("avgpool"):
        x = L.global_avg_pool(b, x)
    x = L.flatten(b, x, last_channels)
    with b.module("classifier"):
        with b.module("classifier.0"):
            x = L.linear(b, x, last_channels, classifier_hidden, input_rank=2)
        with b.module("classifier.1"):
            x = L.hardswish(b, x)
        # classifier.2 is Dropout, which the eval export drops
        with b.module("classifier.3"):
            x = L.linear(b, x, classifier_hidden, num_classes, input_rank=2)
    b.output(x, "logits", "float32", ("batch", num_classes))
    return b.model("mobilenet", doc=f"MobileNetV2/V3-style classifier, {image_size}px")
