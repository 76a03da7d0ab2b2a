"""FP16 / BF16 weight tactics: weights stored in the reduced type, compute in FP32.

Every FP32 conv and GEMM tactic that stores its weight repacked (``conv*.py``, ``gemm*.py``,
``depthwise*.py``, ``pointwise.py``, ``generic.py``) gets two twins,
``cpu.fp16w.<name>`` and ``cpu.bf16w.<name>``. A twin rounds the layer's constant weight to
FP16 (or BF16), lets the FP32 tactic prepare (repack) the rounded weight, and stores the packed
tensors in the reduced type, so the engine file holds half the bytes. At run time the tensors are
widened to FP32 once (cached per engine) and the FP32 tactic runs with FP32 activations and
FP32 accumulation.

Why not FP16 arithmetic: this CPU class (AVX2 + F16C, no AVX512-FP16) has no FP16 FMA; F16C
only converts. Computing in FP16 would mean converting every operand on every use, slower than
FP32 and less accurate. So on the CPU "fp16" and "bf16" mean reduced *storage*: the numbers are
those of the rounded weights, the speed is FP32's. The build report says so for each layer.

BF16 has no numpy/safetensors dtype; it is stored as the top 16 bits of the FP32 pattern
(``uint16``), rounded to nearest even, and widened by a shift.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from farm.compiler.ir import Graph, Node, Value
from farm.compiler.kernels.registry import Prepared, Tactic, all_tactics, register_tactic

REDUCED_PRECISIONS = ("fp16", "bf16")
# Smaller tensors (biases, scales) stay FP32: they cost nothing and keep the epilogue exact.
MIN_REDUCED_ELEMENTS = 64
# Modules whose tactics store the weight itself (repacked, not transformed): storing those tensors
# rounded is computing with the rounded weights. Winograd's transformed filters are not, so its
# tactics get no twins (a layer where Winograd is fastest keeps FP32, and the report says so).
_WRAPPED_MODULES = tuple(
    importlib.import_module(f"farm.compiler.kernels.cpu.{name}").__name__  # imported: registered
    for name in (
        "conv", "conv_lanes", "conv_packed", "conv_rows", "conv_small", "conv_tiled", "depthwise", "depthwise_rows",
        "gemm", "gemm_packed", "gemm_panels", "gemm_tiled", "generic", "pointwise", "pointwise_tiles",
    )
)  # fmt: skip
WEIGHT_OPS = frozenset({"FusedConv", "Conv", "FusedGemm", "MatMul", "Gemm"})
# The reference-backed generic tactics (priority -100) are never fast; no twins for them.
_MIN_BASE_PRIORITY = -50


def round_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """FP32 -> BF16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) -> FP32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_reduced(x: np.ndarray, precision: str) -> np.ndarray:
    """``x`` in the storage type of ``precision`` (float16, or uint16 BF16 bits)."""
    if precision == "fp16":
        return np.asarray(x, dtype=np.float32).astype(np.float16)
    return round_to_bf16_bits(x)


def from_reduced(x: np.ndarray, precision: str) -> np.ndarray:
    """Widen stored reduced values back to FP32."""
    if precision == "fp16":
        return np.ascontiguousarray(x, dtype=np.float32)
    return bf16_bits_to_float32(x)


def round_float32(x: np.ndarray, precision: str) -> np.ndarray:
    """FP32 values rounded to ``precision`` (what the reduced tactic computes with)."""
    return from_reduced(to_reduced(x, precision), precision)


def _with_rounded_weight(node: Node, graph: Graph, precision: str) -> Graph:
    """A shallow copy of ``graph`` whose weight (input 1) is rounded to ``precision``."""
    view = copy.copy(graph)
    view.values = dict(graph.values)
    old = graph.values[node.input(1)]
    assert old.const is not None
    view.values[old.name] = Value(old.name, old.dtype, old.shape, round_float32(old.const, precision))
    return view


class ReducedWeightTactic(Tactic):
    """An FP32 tactic whose constant weights are stored in FP16/BF16 and widened at load."""

    base: ClassVar[Tactic]
    reduced: ClassVar[str] = "fp16"

    def supports(self, node: Node, graph: Graph) -> bool:
        w = graph.values.get(node.input(1)) if len(node.inputs) > 1 else None
        if w is None or w.const is None or w.const.dtype != np.float32 or w.const.size < MIN_REDUCED_ELEMENTS:
            return False
        return self.base.supports(node, graph)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        inner = self.base.prepare(node, _with_rounded_weight(node, graph, self.reduced))
        stored: dict[str, np.ndarray] = {}
        reduced_keys = []
        for key, tensor in inner.tensors.items():
            if tensor.dtype == np.float32 and tensor.size >= MIN_REDUCED_ELEMENTS:
                stored[key] = to_reduced(tensor, self.reduced)
                reduced_keys.append(key)
            else:
                stored[key] = tensor
        replaces = set(inner.replaces)
        if 1 not in replaces:  # the FP32 tactic reads the raw weight: store it reduced ourselves
            w = graph.const(node.input(1))
            assert w is not None
            stored["raw_weight"] = to_reduced(w, self.reduced)
            replaces.add(1)
        params = dict(inner.params, reduced=self.reduced, reduced_tensors=reduced_keys)
        return Prepared(tensors=stored, params=params, replaces=frozenset(replaces))

    def _inner(self, prepared: Prepared) -> Prepared:
        inner = prepared.scratch.get("inner")
        if inner is None:
            reduced_keys = set(prepared.params.get("reduced_tensors", []))
            tensors = {
                k: from_reduced(v, self.reduced) if k in reduced_keys else v
                for k, v in prepared.tensors.items()
                if k != "raw_weight"
            }
            params = {k: v for k, v in prepared.params.items() if k not in ("reduced", "reduced_tensors")}
            inner = Prepared(tensors=tensors, params=params, replaces=prepared.replaces)
            if "raw_weight" in prepared.tensors:
                inner.scratch["__raw_weight"] = from_reduced(prepared.tensors["raw_weight"], self.reduced)
            prepared.scratch["inner"] = inner
        return inner

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        inner = self._inner(prepared)
        raw = inner.scratch.get("__raw_weight")
        if raw is not None:
            inputs = [raw if i == 1 else x for i, x in enumerate(inputs)]
        self.base.run(node, inputs, outputs, inner)


def _register_twins() -> None:
    for base in all_tactics("cpu"):
        if (
            type(base).__module__ not in _WRAPPED_MODULES
            or "fp32" not in base.precisions
            or not WEIGHT_OPS & set(base.op_types)
            or base.priority < _MIN_BASE_PRIORITY
        ):
            continue
        for precision in REDUCED_PRECISIONS:
            short = base.name.removeprefix("cpu.")
            twin = type(
                f"{precision.upper()}Weight{type(base).__name__}",
                (ReducedWeightTactic,),
                {
                    "__doc__": f"{base.name} with {precision} weight storage (FP32 compute).",
                    "name": f"cpu.{precision}w.{short}",
                    "op_types": base.op_types,
                    "precisions": (precision,),
                    # Same compute as the FP32 tactic and half the bytes: preferred untimed.
                    "priority": base.priority + 1,
                    "accepts_strided_output": base.accepts_strided_output,
                    "base": base,
                    "reduced": precision,
                    "__module__": __name__,
                },
            )
            register_tactic(twin)


_register_twins()


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 of an embedding table: (int8 values, float32 scale per row)."""
    amax = np.max(np.abs(table), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8), scale


def round_table(table: np.ndarray, precision: str) -> np.ndarray:
    """The FP32 values an embedding table stored in ``precision`` gives back."""
    if precision == "int8":
        q, scale = quantize_rows_int8(table)
        return (q.astype(np.float32) * scale[:, None]).astype(np.float32)
    return round_float32(table, precision)


class ReducedEmbeddingGather(Tactic):
    """Gather from a constant [V, D] float32 table (word/position embeddings) stored in FP16, BF16
    or INT8 (per-row symmetric scales: weight-only quantization, the rows come back as FP32);
    the table is widened once at load and rows are copied out with ``np.take``."""

    op_types = ("Gather",)
    reduced: ClassVar[str] = "fp16"

    def supports(self, node: Node, graph: Graph) -> bool:
        table = graph.values.get(node.input(0))
        out = graph.values.get(node.outputs[0])
        return (
            int(node.attr("axis", 0)) == 0
            and table is not None
            and table.const is not None
            and table.const.dtype == np.float32
            and table.const.ndim == 2
            and table.const.size >= MIN_REDUCED_ELEMENTS
            and (out is None or out.dtype in (None, "float32"))
        )

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        table = graph.const(node.input(0))
        assert table is not None
        if self.reduced == "int8":
            q, scale = quantize_rows_int8(table)
            return Prepared(tensors={"table": q, "row_scale": scale}, replaces=frozenset({0}))
        return Prepared(tensors={"table": to_reduced(table, self.reduced)}, replaces=frozenset({0}))

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        table = prepared.scratch.get("table")
        if table is None:
            stored = prepared.tensors["table"]
            if self.reduced == "int8":
                table = (
                    stored.astype(np.float32) * np.asarray(prepared.tensors["row_scale"], np.float32)[:, None]
                )
            else:
                table = from_reduced(stored, self.reduced)
            table = prepared.scratch["table"] = np.ascontiguousarray(table, dtype=np.float32)
        indices = np.asarray(inputs[1]).astype(np.int64)
        indices = np.where(indices < 0, indices + table.shape[0], indices)
        out = outputs[0]
        np.take(table, indices.reshape(-1), axis=0, out=out.reshape(-1, table.shape[1]))


for _precision in ("fp16", "bf16", "int8"):
    register_tactic(
        type(
            f"{_precision.upper()}EmbeddingGather",
            (ReducedEmbeddingGather,),
            {
                "__doc__": f"Gather from a {_precision}-stored embedding table.",
                "name": f"cpu.{_precision}w.gather" if _precision != "int8" else "cpu.int8w.gather",
                "precisions": (_precision,),
                "priority": 0,
                "reduced": _precision,
                "__module__": __name__,
            },
        )
    )
