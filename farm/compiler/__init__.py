"""The compiler: ONNX in, an optimized serialized engine out, and the runtime that runs it.

Public API (imported lazily, so ``import farm.compiler.ir`` stays light)::

    from farm.compiler import load_onnx, optimize, reference
    graph = load_onnx("model.onnx")
    graph, report = optimize(graph)
    outputs = reference.run(graph, {"input": x})

    from farm.compiler import build, BuilderConfig, Engine
    engine = build("model.onnx", profile="cpu", config=BuilderConfig())
    engine.save("model.engine"); engine = Engine.load("model.engine")
    outputs = engine.run({"input": x})
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY: dict[str, tuple[str, str | None]] = {
    "load_onnx": ("farm.compiler.frontend", "load_onnx"),
    "UnsupportedModelError": ("farm.compiler.frontend", "UnsupportedModelError"),
    "ModelError": ("farm.compiler.frontend", "ModelError"),
    "optimize": ("farm.compiler.passes", "optimize"),
    "reference": ("farm.compiler.reference", None),
    "build": ("farm.compiler.builder", "build"),
    "BuilderConfig": ("farm.compiler.builder", "BuilderConfig"),
    "Engine": ("farm.compiler.engine", "Engine"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'farm.compiler' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)
