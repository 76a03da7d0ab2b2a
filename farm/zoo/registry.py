"""The table of zoo models: name → generator module, description, outputs, default shapes."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

from farm.zoo.models import bert, crnn, gru_stream, mlp, mobilenet, resnet, vit
from farm.zoo.spec import ZooModel


def _options(module: ModuleType) -> dict[str, Any]:
    """The keyword options of ``module.build`` (everything but seed and opset), with defaults."""
    parameters = inspect.signature(module.build).parameters
    return {
        name: p.default
        for name, p in parameters.items()
        if name not in ("seed", "opset") and p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _entry(
    name: str,
    family: str,
    module: ModuleType,
    description: str,
    outputs: list[str],
    default_shapes: dict[str, int] | None = None,
    min_opset: int = 13,
) -> ZooModel:
    return ZooModel(
        name=name,
        description=description,
        inputs=module.input_specs(),
        outputs=outputs,
        default_shapes=default_shapes or {},
        family=family,
        factory=module.build,
        inputs_factory=module.input_specs,
        options=_options(module),
        min_opset=min_opset,
    )


MODELS: dict[str, ZooModel] = {
    model.name: model
    for model in (
        _entry("mlp", "mlp", mlp, "MLP: Gemm + Relu layers (256 -> 512 -> 512 -> 256 -> 10)", ["output"]),
        _entry(
            "resnet",
            "cnn",
            resnet,
            "ResNet-18: conv-BN-relu stem, maxpool, 4 stages of BasicBlocks, GAP, Gemm; 224x224",
            ["logits"],
        ),
        _entry(
            "mobilenet",
            "cnn",
            mobilenet,
            "MobileNetV2/V3 mix: inverted residuals, depthwise conv, ReLU6 (Clip), SE, HardSwish; 224x224",
            ["logits"],
        ),
        _entry(
            "bert",
            "transformer",
            bert,
            "BERT encoder: 4 layers, hidden 256, 4 heads, FFN 1024, Erf-GELU, mask, token types, pooler",
            ["last_hidden_state", "pooler_output"],
            {"seq": 128},
        ),
        _entry(
            "vit",
            "transformer",
            vit,
            "ViT: 16x16 patch conv, cls token, pos embed, 4 pre-LN blocks (dim 192, 3 heads), head; 224x224",
            ["logits"],
        ),
        _entry(
            "crnn",
            "recurrent",
            crnn,
            "CRNN text recognizer: 5 conv-BN-ReLU-pool stages, 2-layer BiLSTM 128, CTC log-probs (37 classes)",
            ["log_probs"],
            {"width": 128},
        ),
        _entry(
            "gru_stream",
            "recurrent",
            gru_stream,
            "Streaming GRU: 40 features -> Linear+ReLU -> 2-layer GRU 128 with carried state -> 12 classes",
            ["logits", "h"],
            {"frames": 16},
        ),
    )
}
