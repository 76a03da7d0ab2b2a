"""ONNX -> IR: ``load_onnx``, shape/dtype inference, and the errors for bad or unsupported models.

See :mod:`farm.compiler.frontend.canonical` for the canonical form of each op.

The names are imported on first use, so that the runtime (which only needs ``infer_shapes`` for
input shapes it has not seen) does not import onnx with the loader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from farm.compiler.frontend.errors import ModelError, UnsupportedModelError

if TYPE_CHECKING:
    from farm.compiler.frontend.loader import load_onnx, supported_op_types
    from farm.compiler.frontend.shape_inference import infer_shapes

_LAZY = {
    "load_onnx": "farm.compiler.frontend.loader",
    "supported_op_types": "farm.compiler.frontend.loader",
    "infer_shapes": "farm.compiler.frontend.shape_inference",
}

__all__ = ["ModelError", "UnsupportedModelError", "infer_shapes", "load_onnx", "supported_op_types"]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'farm.compiler.frontend' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
