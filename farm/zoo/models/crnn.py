"""``crnn``: a CRNN text-line recognizer (CNN + bidirectional LSTM + CTC head).

A grayscale line image ``[batch, 1, 32, width]`` goes through five ``conv3x3-BN-ReLU-MaxPool``
stages (pools 2x2, 2x2, then 2x1 three times, so height 32 becomes 1 and width shrinks 4x),
``Squeeze(2)`` and ``Transpose(2, 0, 1)`` to a ``[time, batch, channels]`` sequence, a 2-layer
bidirectional ``nn.LSTM``, a Linear classifier and ``LogSoftmax(axis=2)``: the
``[time, batch, classes]`` log-probabilities ``nn.CTCLoss`` and CTC decoding take (class 0 is the
blank). Node for node what the TorchScript exporter writes (``tests/fixtures/torch/crnn_ts17.onnx``).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec

IMAGE_HEIGHT = 32
# (kernel, stride) of the MaxPool after each conv stage: 2x2 twice, then height-only
POOLS = ((2, 2), (2, 2), (2, 1), (2, 1), (2, 1))


def input_specs(**_: object) -> list[InputSpec]:
    """A batch of grayscale text lines, 32 pixels high, of symbolic width."""
    return [InputSpec("input", "float32", ("batch", 1, IMAGE_HEIGHT, "width"), "image")]


def build(
    *,
    seed: int,
    opset: int,
    channels: Sequence[int] = (32, 64, 128, 128, 256),
    hidden: int = 128,
    num_layers: int = 2,
    num_classes: int = 37,
    batchnorm: str = "keep",
) -> onnx.ModelProto:
    """The recognizer; ``num_classes`` counts the CTC blank (37 = blank + 26 letters + 10 digits);
    ``batchnorm`` as for ``resnet`` (``"keep"`` or ``"fold"``)."""
    if len(channels) != len(POOLS):
        raise ValueError(f"crnn has {len(POOLS)} conv stages; got {len(channels)} channel counts")
    fold = L.folds_batchnorm(batchnorm)
    b = OnnxGraphBuilder(seed=seed, opset=opset)
    x = b.input("input", "float32", ("batch", 1, IMAGE_HEIGHT, "width"))
    in_ch = 1
    index = 0
    with b.module("cnn"):
        for out_ch, (kernel_h, kernel_w) in zip(channels, POOLS, strict=True):
            # Sequential children: conv, bn, relu, pool (folded BN keeps the conv's index)
            x = L.conv_bn(b, x, in_ch, out_ch, 3, conv_scope=(f"cnn.{index}",), bn_scope=(f"cnn.{index + 1}",),
                          fold=fold)
            with b.module(f"cnn.{index + 2}"):
                x = L.relu(b, x)
            with b.module(f"cnn.{index + 3}"):
                x = L.max_pool(b, x, (kernel_h, kernel_w), (kernel_h, kernel_w), 0)
            in_ch = out_ch
            index += 4
    x = b.op("Squeeze", [x, b.const([2], "int64")])
    x = b.op("Transpose", [x], perm=[2, 0, 1])
    with b.module("rnn"):
        x = L.lstm(b, x, in_ch, hidden, num_layers=num_layers, bidirectional=True)
    with b.module("fc"):
        x = L.linear(b, x, 2 * hidden, num_classes, input_rank=3, gain=L.CLASSIFIER_GAIN)
    x = b.op("LogSoftmax", [x], axis=2)
    b.output(x, "log_probs", "float32", ("time", "batch", num_classes))
    return b.model("crnn", doc=f"CRNN: {len(channels)} conv stages, {num_layers}-layer BiLSTM {hidden}, "
                   f"{num_classes} CTC classes")
