"""Accuracy budget: the fewest layers kept in higher precision that meet a metric on validation data.

``BuilderConfig(accuracy_budget="cosine>=0.999", validation=data)`` (also ``rel_l2<=``,
``top1>=``, ``top5>=``, ``snr_db>=``, ``max_abs<=``) builds the engine as configured and measures
it against the FP32 reference on the validation data. When it misses the budget:

1. **Sensitivity**: each reduced-precision layer alone is emulated in INT8 (fake quantization in
   an FP32 graph run by an FP32 engine; FP16/BF16 layers with rounded weights) and the metric is measured; the
   worse the metric, the more sensitive the layer.
2. **Bisection** over k, the number of most sensitive layers pinned to FP32 (``--layer-precision``
   overrides): real engines are built (sharing one timing cache, so only the first build times
   tactics) and measured, assuming the metric improves as more layers stay in FP32. The smallest
   k that meets the budget wins.

What the probes share so that only the first build pays for it: the timing cache, and the INT8
calibration (when ``calibration_cache`` is not set, a private cache file for the search: every
probe quantizes a subset of the first build's tensors with the same data and calibrator, so it
would compute the same scales again). Probes skip in-engine tuning (it settles close calls
between tactics of one precision and cannot change the metric beyond rounding); when the first
build ran that stage and found contests, the winner is built once more with it and kept only if
it still meets the budget (``final_build`` in the report says which).

The report (``engine.report["accuracy_budget"]``) holds the budget, the metric of the first
engine and the final one, the layers kept in FP32, each probe, and the per-layer sensitivity table.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from farm.compiler.ir import Graph
from farm.compiler.precision.calibration import calibration_batches
from farm.compiler.precision.observe import BatchAxes, batch_axes, batch_size, batch_slice, concat_batches
from farm.compiler.tuner.in_engine import CONTESTED_SOURCES

# metric -> (direction, how to aggregate over outputs: the worst one counts)
METRICS: dict[str, str] = {
    "cosine": ">=", "rel_l2": "<=", "top1": ">=", "top5": ">=", "snr_db": ">=", "max_abs": "<=",
}  # fmt: skip
_BUDGET_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


class BudgetError(ValueError):
    """A malformed budget, missing validation data, or a budget not even FP32 meets."""


@dataclass(frozen=True)
class AccuracyBudget:
    """``metric op threshold``, e.g. cosine >= 0.999."""

    metric: str
    op: str
    threshold: float

    @staticmethod
    def parse(text: str) -> AccuracyBudget:
        """Parse ``"cosine>=0.999"``; the direction must be the metric's natural one."""
        match = _BUDGET_RE.match(text)
        if not match:
            raise BudgetError(f"accuracy budget {text!r} must look like METRIC>=VALUE or METRIC<=VALUE")
        metric, op, value = match.group(1), match.group(2), float(match.group(3))
        if metric not in METRICS:
            raise BudgetError(f"unknown budget metric {metric!r}; choose from {', '.join(METRICS)}")
        if op != METRICS[metric]:
            raise BudgetError(
                f"{metric} budgets use {METRICS[metric]} (a {metric} {op} bound is never the goal)"
            )
        return AccuracyBudget(metric, op, value)

    def met(self, value: float) -> bool:
        """Whether ``value`` of the metric satisfies the budget."""
        compare = operator.ge if self.op == ">=" else operator.le
        return bool(compare(value, self.threshold))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def measure(budget: AccuracyBudget, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
    """The budget's metric of ``got`` against ``want``: the worst over the outputs (classifier
    outputs only for top-k)."""
    from farm.compiler.accuracy import compare_arrays

    values = []
    for name, reference in want.items():
        result = compare_arrays(name, np.asarray(got[name]), np.asarray(reference))
        value = getattr(result, budget.metric)
        if value is not None:
            values.append(float(value))
    if not values:
        raise BudgetError(
            f"no output of the model has a {budget.metric} metric (top-k needs [batch, classes])"
        )
    return min(values) if budget.op == ">=" else max(values)


def _validation_feeds(validation: Any, inputs: list[str], axes: BatchAxes) -> dict[str, np.ndarray]:
    if validation is None:
        raise BudgetError("an accuracy budget needs validation data (--val val.npz)")
    batches = list(calibration_batches(validation, inputs, batch=1 << 30, axes=axes))
    return {n: concat_batches([b[n] for b in batches], axes.get(n, 0)) for n in inputs}


def _run_engine(engine: Any, feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The engine's outputs for ``feeds``, run ``batch`` samples at a time along each input's
    batch axis and joined along each output's."""
    graph: Graph = engine.graph
    in_axes, out_axes = batch_axes(graph, graph.inputs), batch_axes(graph, graph.outputs)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, batch_size(feeds, in_axes), batch):
        chunk = {k: batch_slice(v, in_axes.get(k, 0), start, start + batch) for k, v in feeds.items()}
        parts.append(engine.run(chunk))
    return {k: concat_batches([p[k] for p in parts], out_axes.get(k, 0)) for k in parts[0]}


def _run_reference(graph: Graph, feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """FP32 outputs of ``graph``, run by an FP32 engine of it (the numpy reference is too slow
    for hundreds of validation samples)."""
    from farm.compiler.precision.observe import GraphRunner

    return GraphRunner(graph, max_batch=batch, example=feeds).run(feeds)


def _max_batch(engine: Any) -> int:
    axes = batch_axes(engine.graph, engine.graph.inputs)
    sizes = [b.max_shape[axes[b.name]] for b in engine.inputs if b.max_shape and axes.get(b.name) is not None]
    return max(1, min(sizes, default=1))


def layer_sensitivity(
    engine: Any, feeds: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], budget: AccuracyBudget
) -> list[dict[str, Any]]:
    """The metric with only one layer in reduced precision, for every reduced layer of
    ``engine``, emulated (fake quantization in an FP32 graph run by an FP32 engine); most
    sensitive first."""
    from farm.compiler.kernels.cpu.reduced_float import round_float32, round_table
    from farm.compiler.precision.quantize import fake_quantized_graph

    graph: Graph = engine.graph
    reduced = [n for n in graph.nodes if n.precision in ("int8", "fp16", "bf16")]
    batch = _max_batch(engine)
    table = []
    for node in reduced:
        if node.precision == "int8":
            emulated = fake_quantized_graph(graph, {node.name})
        elif node.op_type == "Gather":  # an embedding table stored reduced
            emulated = graph.copy()
            embedding = emulated.values[node.input(0)]
            if embedding.const is not None:
                embedding.const = round_table(embedding.const, str(node.precision))
        else:
            emulated = graph.copy()
            w = emulated.values[node.input(1)]
            w.const = round_float32(w.const, str(node.precision)) if w.const is not None else None
        for n in emulated.nodes:
            if n.precision == "int8" and n.name != node.name:
                n.precision = None
        value = measure(budget, _run_reference(emulated, feeds, batch), want)
        table.append(
            {"node": node.name, "op_type": node.op_type, "precision": node.precision, budget.metric: value}
        )
    worse_first = (lambda e: e[budget.metric]) if budget.op == ">=" else (lambda e: -e[budget.metric])
    return sorted(table, key=worse_first)


def build_with_budget(
    model: Any, profile: str, config: Any, build: Callable[..., Any], *, progress: Any = None
) -> Any:
    """Build ``model`` and, when it misses ``config.accuracy_budget`` on ``config.validation``,
    pin the fewest most-sensitive layers to FP32 that meet it (see the module docstring)."""
    from farm.compiler.tuner import MemoryTimingCache

    budget = AccuracyBudget.parse(config.accuracy_budget)
    with tempfile.TemporaryDirectory(prefix="farm-budget-") as scratch:
        own_calibration = config.calibration is not None and config.calibration_cache is None
        shared_cache = config.cache() if config.timing_cache is not None else MemoryTimingCache()
        base = dataclasses.replace(
            config,
            accuracy_budget=None,
            timing_cache=shared_cache,
            calibration_cache=os.path.join(scratch, "calibration.json")
            if own_calibration
            else config.calibration_cache,
        )
        engine = _search(model, profile, config, base, budget, build, progress)
        calibration = engine.report.get("precision_layers", {}).get("calibration")
        if own_calibration and calibration:
            calibration["from_cache"] = False  # the search's own cache: calibrated in this build
        return engine


def _search(
    model: Any,
    profile: str,
    config: Any,
    base: Any,
    budget: AccuracyBudget,
    build: Callable[..., Any],
    progress: Any,
) -> Any:
    """:func:`build_with_budget` with ``base`` (the shared timing and calibration caches)."""
    from farm.compiler.builder import load_model

    engine = build(model, profile, base, progress=progress)
    input_axes = batch_axes(engine.graph, engine.graph.inputs)
    feeds = _validation_feeds(config.validation, [b.name for b in engine.inputs], input_axes)
    batch = _max_batch(engine)
    from farm.compiler.passes import optimize

    reference_graph, _ = optimize(load_model(model))
    want = _run_reference(reference_graph, feeds, batch)
    first = measure(budget, _run_engine(engine, feeds, batch), want)
    section: dict[str, Any] = {
        "budget": str(budget),
        "first_engine": first,
        "samples": batch_size(feeds, input_axes),
    }
    if budget.met(first):
        engine.report["accuracy_budget"] = dict(
            section,
            met=True,
            final=first,
            kept_fp32=[],
            probes=[],
            sensitivity=[],
            final_build="first engine",
        )
        return engine

    table = layer_sensitivity(engine, feeds, want, budget)
    order = [entry["node"] for entry in table]
    base_overrides = dict(_as_mapping(config.layer_precision))
    probes: list[dict[str, Any]] = []

    probe_config = dataclasses.replace(base, in_engine_tuning=False)

    def overrides(k: int) -> dict[str, str]:
        return dict(base_overrides, **{_exact(name): "fp32" for name in order[:k]})

    def probe(k: int) -> tuple[Any, float]:
        candidate = build(
            model, profile, dataclasses.replace(probe_config, layer_precision=overrides(k)), progress=progress
        )
        value = measure(budget, _run_engine(candidate, feeds, batch), want)
        probes.append({"kept_fp32": k, budget.metric: value, "met": budget.met(value)})
        return candidate, value

    best_engine, best_value = probe(len(order))
    if not budget.met(best_value):
        raise BudgetError(
            f"even with every layer in FP32 the engine has {budget.metric} {best_value:.6g}, outside {budget}"
        )
    lo, hi = 0, len(order)  # lo misses (the first engine), hi meets
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate, value = probe(mid)
        if budget.met(value):
            hi, best_engine, best_value = mid, candidate, value
        else:
            lo = mid
    final_build = "probe"
    if engine.report.get("in_engine", {}).get("source") in CONTESTED_SOURCES:
        tuned = build(
            model, profile, dataclasses.replace(base, layer_precision=overrides(hi)), progress=progress
        )
        value = measure(budget, _run_engine(tuned, feeds, batch), want)
        if budget.met(value):
            best_engine, best_value, final_build = tuned, value, "rebuilt with in-engine tuning"
        else:
            final_build = f"probe (rebuilt with in-engine tuning it had {budget.metric} {value:.6g})"
    best_engine.report["accuracy_budget"] = dict(
        section, met=True, final=best_value, kept_fp32=order[:hi], probes=probes, sensitivity=table,
        final_build=final_build,
    )  # fmt: skip
    return best_engine


def _as_mapping(layer_precision: Any) -> dict[str, str]:
    from farm.compiler.precision.policy import parse_layer_precision

    return parse_layer_precision(layer_precision)


def _exact(name: str) -> str:
    """A glob that matches exactly ``name`` (fnmatch's special characters escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


__all__ = ["METRICS", "AccuracyBudget", "BudgetError", "build_with_budget", "layer_sensitivity", "measure"]
