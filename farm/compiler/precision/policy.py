"""Precision as permission (TensorRT's meaning) and per-layer overrides.

``--precision int8`` *allows* INT8 (and FP32 as the fallback); the autotuner then picks the
fastest allowed tactic for each layer. ``strict`` makes the request an obligation: every layer
that has a tactic in the requested precision runs in it. ``--layer-precision NAME=PREC`` pins
layers whose name (or output name) matches the glob ``NAME`` to ``PREC`` exactly, whatever
``strict`` says. Explicitly quantized layers (Q/DQ in the model) are pinned to INT8.

The policy only says what each layer *may* run in and why; :mod:`farm.compiler.precision.lowering`
applies it to a graph.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from farm.compiler.ir import Node
from farm.compiler.kernels.registry import Tactic

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "best")
LAYER_PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# What each requested precision allows, in order of preference (lowest first; fp32 always last).
ALLOWED: dict[str, tuple[str, ...]] = {
    "fp32": ("fp32",),
    "fp16": ("fp16", "fp32"),
    "bf16": ("bf16", "fp32"),
    "int8": ("int8", "fp32"),
    "best": ("int8", "fp16", "fp32"),  # trtexec --best: FP32 + FP16 + INT8
}

# Bytes per weight element, used to prefer the smaller engine when two tactics are equally fast.
WEIGHT_BYTES = {"int8": 1, "fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4}


class PrecisionError(ValueError):
    """A precision request that cannot be honoured (unknown name, malformed override)."""


def parse_layer_precision(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["conv1=fp32", "*/attn*=fp16"]`` (or a mapping) -> ``{glob: precision}``, validated."""
    if not items:
        return {}
    pairs = list(items.items()) if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        for item in items:
            pattern, sep, precision = str(item).rpartition("=")
            if not sep or not pattern:
                raise PrecisionError(
                    f"--layer-precision {item!r} must look like NAME=PRECISION (globs allowed)"
                )
            pairs.append((pattern, precision))
    out: dict[str, str] = {}
    for pattern, precision in pairs:
        precision = precision.strip().lower()
        if precision not in LAYER_PRECISIONS:
            raise PrecisionError(
                f"layer precision {precision!r} for {pattern!r} is not one of {', '.join(LAYER_PRECISIONS)}"
            )
        out[pattern.strip()] = precision
    return out


@dataclass(frozen=True)
class LayerDecision:
    """The precisions one layer may run in (preferred first) and why."""

    allowed: tuple[str, ...]
    reason: str
    pinned: bool = False  # True: the tuner must use the first precision that has a tactic


@dataclass
class PrecisionPolicy:
    """The precision request of a build: global permission, strictness and per-layer overrides."""

    precision: str = "fp32"
    strict: bool = False
    layer_precision: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.precision = self.precision.lower()
        if self.precision not in PRECISIONS:
            raise PrecisionError(
                f"precision {self.precision!r} is not supported; choose from {list(PRECISIONS)}"
            )
        self.layer_precision = parse_layer_precision(self.layer_precision)

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every precision some layer of this build may use (for the tactic search)."""
        found = list(ALLOWED[self.precision])
        for p in self.layer_precision.values():
            if p not in found:
                found.insert(0, p)
        return tuple(found)

    @property
    def wants_int8(self) -> bool:
        """Whether any layer may run in INT8 (then scales are needed)."""
        return "int8" in self.allowed

    def override_for(self, node: Node) -> tuple[str, str] | None:
        """(glob, precision) of the last ``--layer-precision`` matching the node's name or output."""
        found = None
        for pattern, precision in self.layer_precision.items():
            names = [node.name, *(o for o in node.outputs if o)]
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                found = (pattern, precision)
        return found

    def decide(self, node: Node, *, explicit_int8: bool = False) -> LayerDecision:
        """What ``node`` may run in: an override, explicit Q/DQ, strict, or the permission."""
        override = self.override_for(node)
        if override is not None:
            pattern, precision = override
            return LayerDecision((precision,), f"--layer-precision {pattern}={precision}", pinned=True)
        if explicit_int8:
            return LayerDecision(("int8",), "explicit Q/DQ in the model", pinned=True)
        if self.strict:
            first = ALLOWED[self.precision][0]
            return LayerDecision((first,), f"strict {first}", pinned=True)
        allowed = ALLOWED[self.precision]
        if len(allowed) == 1:
            return LayerDecision(allowed, f"precision {self.precision}")
        return LayerDecision(allowed, f"fastest of {'/'.join(allowed)}")


def compute_family(tactic: Tactic) -> str:
    """Tactics that run the same arithmetic share a family: a reduced-weight twin (FP16/BF16
    storage, FP32 compute) belongs to its FP32 base tactic's family."""
    base = getattr(tactic, "base", None)
    return base.name if base is not None else tactic.name


def pick_fastest(timings: Sequence[tuple[Tactic, float]], tie_ratio: float = 0.03) -> str:
    """The name of the tactic to use from ``(tactic, median_ms)`` rows.

    Rule: tactics are grouped by :func:`compute_family` (a group's time is its fastest member's);
    the fastest group wins, and among groups within ``tie_ratio`` of it (timer noise) the one
    with the smallest weights; inside the winning group, the member with the smallest weights
    (the allowed reduced-storage twin: same arithmetic, fewer bytes).
    """
    if not timings:
        raise ValueError("no timings to choose from")
    groups: dict[str, list[tuple[Tactic, float]]] = {}
    for tactic, ms in timings:
        groups.setdefault(compute_family(tactic), []).append((tactic, ms))

    def weight_bytes(tactic: Tactic) -> int:
        return WEIGHT_BYTES.get(tactic.precisions[0] if tactic.precisions else "fp32", 4)

    group_ms = {family: min(ms for _, ms in rows) for family, rows in groups.items()}
    best = min(group_ms.values())
    close = [f for f, ms in group_ms.items() if ms <= best * (1.0 + tie_ratio)]
    family = min(close, key=lambda f: (min(weight_bytes(t) for t, _ in groups[f]), group_ms[f]))
    return min(groups[family], key=lambda row: (weight_bytes(row[0]), row[1]))[0].name
