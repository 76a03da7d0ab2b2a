"""The model zoo: reference ONNX models with seeded weights, shaped like PyTorch's exports.

Every model is generated with ``onnx.helper`` and numpy (no torch needed) and reproduces the node
pattern PyTorch's TorchScript exporter writes for the corresponding ``torch.nn`` modules, so the
compiler's passes see what they will see in the field::

    from farm import zoo
    model = zoo.build_model("bert", seed=0)               # onnx.ModelProto, opset 17
    feeds = zoo.sample_inputs("bert", batch=8, seed=1)    # {"input_ids": ..., ...}, seq=128
    zoo.export("resnet", "resnet.onnx", opset=13)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from farm.zoo.inputs import make_inputs
from farm.zoo.registry import MODELS
from farm.zoo.spec import InputSpec, ZooModel

__all__ = ["InputSpec", "ZooModel", "build_model", "export", "get", "list_models", "sample_inputs"]


def list_models(*, include_recurrent: bool = False) -> list[ZooModel]:
    """The zoo models, in a stable order.

    The recurrent models (``crnn``, ``gru_stream``: LSTM/GRU ops) are listed only with
    ``include_recurrent=True``, so suites that run "every model" through the compiler do not
    pick them up before it supports those ops; ``get`` and ``build_model`` reach them always.
    """
    return [m for m in MODELS.values() if include_recurrent or m.family != "recurrent"]


def get(name: str) -> ZooModel:
    """The zoo model called ``name``; a KeyError naming the available models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; available: {', '.join(MODELS)}") from None


def build_model(name: str, *, seed: int = 0, opset: int = 17, **options: Any) -> onnx.ModelProto:
    """Build zoo model ``name`` with weights drawn from ``seed`` at ``opset``.

    ``options`` are the model's own (``get(name).options`` lists them with their defaults), e.g.
    ``build_model("resnet", image_size=64, width=16)`` or ``build_model("bert", num_layers=2)``.
    """
    return get(name).build(seed=seed, opset=opset, **options)


def export(name: str, path: str | Path, **options: Any) -> Path:
    """Build zoo model ``name`` (``seed``, ``opset`` and model options as for ``build_model``)
    and save it to ``path``; returns the path."""
    model = build_model(name, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def sample_inputs(
    name: str, batch: int, *, seed: int, options: dict[str, Any] | None = None, **dims: int
) -> dict[str, np.ndarray]:
    """Random inputs for zoo model ``name`` at ``batch``, reproducible from ``seed``.

    Symbolic dims other than ``batch`` take their value from ``dims`` or the model's
    ``default_shapes`` (``sample_inputs("bert", 8, seed=0, seq=64)``). Pass the same ``options``
    used for ``build_model`` when they change the inputs (image size, vocabulary size).
    Images are N(0, 1), token ids lie in [1, vocab), masks pad the end of each row with zeros.
    """
    model = get(name)
    specs = model.input_specs(**(options or {}))
    known = {"batch", *model.default_shapes, *(d for s in specs for d in s.symbolic_dims)}
    unknown = sorted(set(dims) - known)
    if unknown:
        raise TypeError(f"zoo model {name!r} has no dimension(s) {unknown}; its dims are {sorted(known)}")
    return make_inputs(specs, {**model.default_shapes, **dims, "batch": batch}, seed)
