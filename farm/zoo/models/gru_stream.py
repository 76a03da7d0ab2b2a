"""``gru_stream``: a streaming GRU acoustic model that carries its state between chunks.

Inputs: ``chunk [batch, frames, features]`` (e.g. 40 log-mel bins per frame) and the state
``h0 [num_layers, batch, hidden]`` returned by the previous chunk (zeros for the first). Outputs:
per-frame ``logits [batch, frames, num_classes]`` and the next state ``h``. Structure: a Linear
input projection + ReLU, a ``num_layers`` ``nn.GRU(batch_first=True)`` and a Linear classifier,
written node for node as the TorchScript exporter does (``tests/fixtures/torch/gru_ts17.onnx``).
"""

from __future__ import annotations

import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec


def input_specs(features: int = 40, hidden: int = 128, num_layers: int = 2, **_: object) -> list[InputSpec]:
    """A chunk of feature frames and the recurrent state (values in the GRU's [-1, 1] range)."""
    return [
        InputSpec("chunk", "float32", ("batch", "frames", features), "float"),
        InputSpec("h0", "float32", (num_layers, "batch", hidden), "state"),
    ]


def build(
    *,
    seed: int,
    opset: int,
    features: int = 40,
    projection: int = 128,
    hidden: int = 128,
    num_layers: int = 2,
    num_classes: int = 12,
) -> onnx.ModelProto:
    """The streaming model: ``fc(gru(relu(proj(chunk)), h0))`` and the GRU's final state."""
    b = OnnxGraphBuilder(seed=seed, opset=opset)
    x = b.input("chunk", "float32", ("batch", "frames", features))
    h0 = b.input("h0", "float32", (num_layers, "batch", hidden))
    with b.module("proj"):
        x = L.linear(b, x, features, projection, input_rank=3)
    with b.module("act"):
        x = L.relu(b, x)
    with b.module("rnn"):
        x, state = L.gru_with_state(b, x, h0, projection, hidden, num_layers=num_layers)
    with b.module("fc"):
        x = L.linear(b, x, hidden, num_classes, input_rank=3, gain=L.CLASSIFIER_GAIN)
    b.output(x, "logits", "float32", ("batch", "frames", num_classes))
    b.output(state, "h", "float32", (num_layers, "batch", hidden))
    return b.model("gru_stream", doc=f"streaming GRU: {features} features, {num_layers}x{hidden} GRU, "
                   f"{num_classes} classes")
