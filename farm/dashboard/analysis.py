"""Numbers the pages derive from stored results: box-plot statistics of latency samples, and the
per-layer view of an engine's build report (tactic, precision and time of each layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_OUTLIERS_DRAWN = 200


@dataclass
class BoxStats:
    """Tukey box-plot statistics of latency samples (ms): whiskers at 1.5 × IQR."""

    low_whisker: float
    q1: float
    median: float
    q3: float
    high_whisker: float
    outliers: list[float]
    count: int

    def box(self) -> list[float]:
        """``[low whisker, q1, median, q3, high whisker]``, the order a box-plot series takes."""
        return [self.low_whisker, self.q1, self.median, self.q3, self.high_whisker]


def box_stats(samples_ms: list[float]) -> BoxStats | None:
    """Box-plot statistics of ``samples_ms``; outliers beyond the whiskers, the most extreme
    :data:`MAX_OUTLIERS_DRAWN` of them; ``None`` without samples."""
    if not samples_ms:
        return None
    values = np.asarray(samples_ms, dtype=np.float64)
    q1, median, q3 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    spread = q3 - q1
    inside = values[(values >= q1 - 1.5 * spread) & (values <= q3 + 1.5 * spread)]
    low, high = float(inside.min()), float(inside.max())
    outside = np.sort(values[(values < low) | (values > high)])
    if outside.size > MAX_OUTLIERS_DRAWN:
        # keep the most extreme ones at both ends
        half = MAX_OUTLIERS_DRAWN // 2
        outside = np.concatenate([outside[:half], outside[-half:]])
    return BoxStats(low, q1, median, q3, high, [float(v) for v in outside], int(values.size))


@dataclass
class Layer:
    """One layer (scheduled node) of an engine as its build report describes it."""

    node: str
    op_type: str
    tactic: str
    precision: str | None
    time_ms: float | None
    source: str | None
    candidates: int
    rejected: int
    reason: str | None


def engine_layers(report: dict[str, Any] | None) -> list[Layer]:
    """The layers of a build report in schedule order: chosen tactic, its measured time, precision."""
    report = report or {}
    precisions = {
        layer.get("node"): layer for layer in (report.get("precision_layers") or {}).get("layers") or []
    }
    layers = []
    for node in report.get("nodes") or []:
        timings = node.get("timings_ms") or {}
        tactic = str(node.get("tactic") or "")
        precision = precisions.get(node.get("node"), {})
        time_ms = timings.get(tactic)
        layers.append(
            Layer(
                node=str(node.get("node") or ""),
                op_type=str(node.get("op_type") or ""),
                tactic=tactic,
                precision=precision.get("precision"),
                time_ms=float(time_ms) if isinstance(time_ms, int | float) else None,
                source=node.get("source"),
                candidates=len(timings),
                rejected=len(node.get("rejected") or {}),
                reason=precision.get("reason"),
            )
        )
    return layers


@dataclass
class LayerChange:
    """One layer of two engines side by side."""

    node: str
    op_type: str
    a: Layer | None
    b: Layer | None

    @property
    def tactic_changed(self) -> bool:
        """The two engines run this layer with different tactics (or only one has it)."""
        return self.a is None or self.b is None or self.a.tactic != self.b.tactic

    @property
    def precision_changed(self) -> bool:
        """The two engines run this layer in different precisions."""
        return self.a is not None and self.b is not None and self.a.precision != self.b.precision

    @property
    def time_change_pct(self) -> float | None:
        """Change of the layer's tuned time from a to b, in percent."""
        if self.a is None or self.b is None or not self.a.time_ms or self.b.time_ms is None:
            return None
        return (self.b.time_ms / self.a.time_ms - 1.0) * 100.0


def compare_layers(a: list[Layer], b: list[Layer]) -> list[LayerChange]:
    """Layers of two engines matched by node name, in a's schedule order then b's new layers."""
    by_name_b = {layer.node: layer for layer in b}
    seen = set()
    changes = []
    for layer in a:
        seen.add(layer.node)
        changes.append(LayerChange(layer.node, layer.op_type, layer, by_name_b.get(layer.node)))
    for layer in b:
        if layer.node not in seen:
            changes.append(LayerChange(layer.node, layer.op_type, None, layer))
    return changes


def percent_change(a: float | None, b: float | None) -> float | None:
    """``(b / a - 1) × 100``, or ``None`` when either is missing or ``a`` is 0."""
    if a is None or b is None or a == 0:
        return None
    return (b / a - 1.0) * 100.0
