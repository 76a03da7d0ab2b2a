"""What a zoo model is: its name, its inputs and how to make sensible values for them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import onnx

Dim = int | str
InputKind = Literal["image", "token_ids", "mask", "segment_ids", "float", "state"]
INPUT_KINDS: tuple[str, ...] = ("image", "token_ids", "mask", "segment_ids", "float", "state")


@dataclass(frozen=True)
class InputSpec:
    """One graph input of a zoo model.

    ``shape`` holds ints for static dims and strings for symbolic ones (``"batch"``, ``"seq"``).
    ``kind`` says what values make sense: ``"image"`` (roughly N(0, 1), like a normalized
    picture), ``"token_ids"`` (integers in ``[0, high)``, ``high`` being the vocabulary size),
    ``"mask"`` (1 for real tokens, 0 for padding), ``"segment_ids"`` (0/1 sentence ids),
    ``"float"`` (N(0, 1) features) or ``"state"`` (a recurrent state carried between calls,
    uniform in [-1, 1] like a tanh-bounded hidden state).
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    kind: InputKind
    high: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input {self.name!r}: unknown kind {self.kind!r}; expected one of {INPUT_KINDS}")
        if self.kind == "token_ids" and not self.high:
            raise ValueError(f"input {self.name!r}: token_ids need 'high' (the vocabulary size)")

    @property
    def symbolic_dims(self) -> tuple[str, ...]:
        """The names of this input's symbolic dimensions, in order."""
        return tuple(d for d in self.shape if isinstance(d, str))


ModelFactory = Callable[..., onnx.ModelProto]
InputsFactory = Callable[..., list[InputSpec]]


@dataclass(frozen=True)
class ZooModel:
    """A reference model: how to build it, what it takes and what it returns.

    ``inputs`` describe the model built with default options; ``default_shapes`` gives a value
    for every symbolic dimension except ``batch`` (e.g. ``{"seq": 128}`` for BERT).
    ``options`` lists the keyword options ``build_model`` accepts for this model, with defaults.
    ``family`` groups models ("mlp", "cnn", "transformer", "recurrent").
    """

    name: str
    description: str
    inputs: list[InputSpec]
    outputs: list[str]
    default_shapes: dict[str, int]
    family: str
    factory: ModelFactory = field(repr=False, compare=False)
    inputs_factory: InputsFactory = field(repr=False, compare=False)
    options: dict[str, Any] = field(default_factory=dict)
    min_opset: int = 13
    max_opset: int = 21

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise TypeError naming every option this model does not accept."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"zoo model {self.name!r} has no option(s) {unknown}; its options are {sorted(self.options)}"
            )

    def input_specs(self, **options: Any) -> list[InputSpec]:
        """The inputs of the model built with ``options`` (``inputs`` is the default build's)."""
        self.check_options(options)
        return self.inputs_factory(**options)

    def build(self, *, seed: int = 0, opset: int = 17, **options: Any) -> onnx.ModelProto:
        """Build this model's ONNX graph with weights drawn from ``seed``."""
        self.check_options(options)
        if not self.min_opset <= opset <= self.max_opset:
            raise ValueError(
                f"zoo model {self.name!r} supports opsets {self.min_opset}..{self.max_opset}, not {opset}"
            )
        return self.factory(seed=seed, opset=opset, **options)
