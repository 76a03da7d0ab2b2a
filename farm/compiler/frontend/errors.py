"""The two errors the frontend raises for bad or unsupported models."""

from __future__ import annotations


class ModelError(ValueError):
    """The model is malformed: a bad protobuf, a cycle, a dangling input, an opset out of range,
    an impossible dimension, a tensor declaring more data than it holds, an external-data path
    leaving the model's folder... The message names the node, value or file at fault."""


class UnsupportedModelError(ModelError):
    """The model is well formed but uses op types (or domains, or value kinds) that the compiler
    does not implement. ``unsupported`` maps each unsupported op type to the first node using it."""

    def __init__(self, message: str, unsupported: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.unsupported: dict[str, str] = dict(unsupported or {})
