"""ONNX -> IR: ``load_onnx``, shape/dtype inference, and the errors for bad or unsupported models.

See :mod:`farm.compiler.frontend.canonical` for the canonical form of each op."""

from farm.compiler.frontend.errors import ModelError, UnsupportedModelError
from farm.compiler.frontend.loader import load_onnx, supported_op_types
from farm.compiler.frontend.shape_inference import infer_shapes

__all__ = ["ModelError", "UnsupportedModelError", "infer_shapes", "load_onnx", "supported_op_types"]
