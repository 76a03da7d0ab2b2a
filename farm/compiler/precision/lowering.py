"""Precision lowering: decide what each layer may run in, get INT8 scales, and report why.

Called by the builder between optimization and autotuning:

1. :func:`plan_precisions` applies the :class:`PrecisionPolicy` to every node, writes INT8
   scales onto the layers that may run in INT8 (the model's own from Q/DQ, else calibrated),
   and returns a :class:`PrecisionPlan` whose ``node_precisions`` the tuner searches.
2. After tuning, :meth:`PrecisionPlan.finalize` sets ``node.precision`` to the precision of each
   chosen tactic and builds the report section: per layer, the precision and why (the override,
   strict, explicit Q/DQ, "no int8 tactic for MaxPool", or the timings that decided).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.compiler.ir import Graph
from farm.compiler.precision.calibration import (
    DEFAULT_BATCH,
    DEFAULT_CALIBRATOR,
    CalibrationResult,
    CalibratorSpec,
    calibrate,
    calibration_batches,
)
from farm.compiler.precision.gptq import apply_gptq
from farm.compiler.precision.observe import batch_axes
from farm.compiler.precision.policy import LayerDecision, PrecisionPolicy
from farm.compiler.precision.qdq import ExplicitQuantization, annotate_explicit
from farm.compiler.precision.quantize import (
    ActivationQuant,
    bias_correction,
    clear_quant,
    input_channel_axis,
    is_quantizable,
    set_activation_quant,
    set_bias_correction,
)

CPU_REDUCED_FLOAT_NOTE = (
    "fp16/bf16 on the CPU: weights are stored in the reduced type (half the bytes) and widened to "
    "FP32 at load; activations and accumulation stay FP32: the CPU backend has no fast FP16 arithmetic "
    "tactics (it does not use AVX512-FP16, AVX512-BF16 or AMX, even where the CPU has them). Expect FP32 "
    "speed, not a speed-up."
)
CPU_INT8_NOTE = (
    "int8 on the CPU: this CPU has no AVX-512 VNNI, so the INT8 kernels widen bytes to int32 lanes and are "
    "slower than OpenBLAS FP32; with plain --precision int8 the tuner keeps FP32 wherever it is faster, "
    "--strict int8 (or a Q/DQ model) forces INT8 for the engine size and the accuracy study."
)
CPU_INT8_VNNI_NOTE = (
    "int8 on the CPU: AVX-512 VNNI register tiles (vpdpbusd, 64 byte products per instruction) run the "
    "INT8 GEMMs and convs; compute-bound layers run several times faster than in FP32, memory-bound ones "
    "(short K, small maps) about as fast, and with plain --precision int8 the tuner keeps FP32 wherever it "
    "measured it faster."
)


def cpu_int8_note() -> str:
    """The report's note on INT8 speed for this CPU (with or without AVX-512 VNNI)."""
    from farm.compiler.kernels.cpu._vnni import VNNI

    return CPU_INT8_VNNI_NOTE if VNNI else CPU_INT8_NOTE


@dataclass
class PrecisionPlan:
    """What every layer may run in, and the INT8 calibration that was used."""

    policy: PrecisionPolicy
    decisions: dict[str, LayerDecision] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    explicit: dict[str, int] | None = None

    @property
    def node_precisions(self) -> dict[str, tuple[str, ...]]:
        """Node name -> allowed precisions, preferred first (for the tuner)."""
        return {name: d.allowed for name, d in self.decisions.items()}

    def finalize(self, graph: Graph, choices: Sequence[Any], backend: str = "cpu") -> dict[str, Any]:
        """Set each node's precision from its chosen tactic; return the report section."""
        from farm.compiler.kernels.registry import get_tactic

        nodes = {n.name: n for n in graph.nodes}
        layers = []
        for choice in choices:
            tactic = get_tactic(choice.tactic)
            precision = tactic.precisions[0]
            node = nodes[choice.node]
            node.precision = precision
            if precision != "int8":
                clear_quant(node)
            decision = self.decisions.get(choice.node)
            layers.append(
                {"node": choice.node, "op_type": choice.op_type, "precision": precision,
                 "reason": _reason(decision, precision, choice)}
            )  # fmt: skip
        counts = Counter(entry["precision"] for entry in layers)
        notes = []
        if backend == "cpu" and {"fp16", "bf16"} & set(self.policy.allowed):
            notes.append(CPU_REDUCED_FLOAT_NOTE)
        if backend == "cpu" and "int8" in self.policy.allowed:
            notes.append(cpu_int8_note())
        return {
            "requested": self.policy.precision,
            "strict": self.policy.strict,
            "layer_precision": dict(self.policy.layer_precision),
            "counts": dict(sorted(counts.items())),
            "layers": layers,
            "calibration": self.calibration,
            "explicit_qdq": self.explicit,
            "notes": notes,
        }


def _reason(decision: LayerDecision | None, precision: str, choice: Any) -> str:
    if decision is None:
        return f"{precision}: default"
    if precision not in decision.allowed:
        return f"{decision.reason}; no {decision.allowed[0]} tactic for {choice.op_type}, runs {precision}"
    if len(decision.allowed) > 1 and choice.timings_ms:
        by_precision: dict[str, float] = {}
        from farm.compiler.kernels.registry import get_tactic

        for name, ms in choice.timings_ms.items():
            if ms is None or name in choice.rejected:
                continue
            p = get_tactic(name).precisions[0]
            by_precision[p] = min(ms, by_precision.get(p, float("inf")))
        if len(by_precision) > 1:
            times = ", ".join(
                f"{p} {ms:.3g} ms" for p, ms in sorted(by_precision.items(), key=lambda kv: kv[1])
            )
            return f"{decision.reason}: {times}"
        if len(by_precision) == 1:
            return f"{decision.reason}: only {precision} tactics support it"
    return decision.reason


def plan_precisions(
    graph: Graph,
    policy: PrecisionPolicy,
    *,
    explicit: ExplicitQuantization | None = None,
    calibration: Any = None,
    calibrator: str = DEFAULT_CALIBRATOR,
    calibration_cache: str | os.PathLike[str] | None = None,
    calibration_limit: int | None = None,
) -> PrecisionPlan:
    """Decide every node's allowed precisions and write INT8 scales onto ``graph``'s layers.

    INT8 needs a scale for the layer's input: the model's own (Q/DQ), or calibration over
    ``calibration`` (see :mod:`calibration`; ``calibration_cache`` skips the work when it
    matches). A layer that may use INT8 but has no scale and no way to get one is an error when
    INT8 was demanded (strict, override) and INT8 is simply not allowed for it otherwise.
    """
    plan = PrecisionPlan(policy)
    explicit_layers = set(annotate_explicit(graph, explicit)) if explicit else set()
    if explicit:
        plan.explicit = dict(explicit.summary(), layers=len(explicit_layers))
    decisions = {n.name: policy.decide(n, explicit_int8=n.name in explicit_layers) for n in graph.nodes}

    need_scale = [
        n for n in graph.nodes
        if "int8" in decisions[n.name].allowed and n.name not in explicit_layers and is_quantizable(n, graph)
    ]  # fmt: skip
    if need_scale and (calibration is not None or calibration_cache is not None):
        spec = CalibratorSpec.parse(calibrator)
        if spec.gptq and calibration is not None:  # GPTQ reads the samples again
            calibration = list(
                calibration_batches(
                    calibration,
                    graph.inputs,
                    DEFAULT_BATCH,
                    calibration_limit,
                    batch_axes(graph, graph.inputs),
                )
            )
        tensors = sorted({n.input(0) for n in need_scale})
        axes: dict[str, int | None] = {}
        for node in need_scale:  # channel means along the axis the layer contracts (None: mixed)
            axis = input_channel_axis(node)
            axes[node.input(0)] = axis if axes.get(node.input(0), axis) == axis else None
        result = calibrate(
            graph,
            tensors,
            calibration,
            calibrator=calibrator,
            cache=calibration_cache,
            limit=calibration_limit,
            channel_axes=axes,
        )
        corrected = _apply_calibration(graph, need_scale, result)
        plan.calibration = {
            "calibrator": result.calibrator, "samples": result.samples, "tensors": len(tensors),
            "from_cache": result.from_cache, "bias_corrected_layers": corrected,
        }  # fmt: skip
        if spec.gptq:
            # only layers that will run INT8: the tuner may still give a permitted layer FP32,
            # which must then have its FP32 weight
            int8_only = [
                n for n in need_scale if decisions[n.name].pinned and decisions[n.name].allowed[0] == "int8"
            ]
            plan.calibration["gptq_layers"] = apply_gptq(
                graph,
                int8_only,
                result,
                calibration,
                cache=calibration_cache,
                bias_correction=spec.bias_correction,
            )
    elif need_scale and any(decisions[n.name].pinned for n in need_scale):
        pinned = [n.name for n in need_scale if decisions[n.name].pinned][:5]
        raise ValueError(
            f"INT8 was requested for layers {pinned}... but there is no calibration data (--calib) "
            "or calibration cache, and the model has no Q/DQ scales for them"
        )
    elif need_scale:
        for node in need_scale:
            d = decisions[node.name]
            decisions[node.name] = LayerDecision(
                tuple(p for p in d.allowed if p != "int8"), d.reason + " (int8 skipped: no calibration data)"
            )
    plan.decisions = decisions
    return plan


def _apply_calibration(graph: Graph, layers: Sequence[Any], result: CalibrationResult) -> int:
    """Write each layer's input quantization (and bias correction) from ``result``; returns
    the number of bias-corrected layers."""
    spec = result.spec
    corrected = 0
    for node in layers:
        lo, hi = result.range_of(node.input(0))
        set_activation_quant(node, ActivationQuant.from_range(lo, hi, spec.symmetric))
        mean = result.mean_of(node.input(0)) if spec.bias_correction else None
        w = graph.const(node.input(1))
        correction = bias_correction(node, w, mean) if mean is not None and w is not None else None
        if correction is not None:
            set_bias_correction(node, correction)
            corrected += 1
    return corrected
