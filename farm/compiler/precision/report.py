"""The precision part of the build report, for ``farm build`` and ``farm inspect``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_precision_report(console: Console, report: dict[str, Any], *, layers: bool = True) -> None:
    """Print the per-layer precisions and why, calibration, notes and the accuracy-budget search."""
    section = report.get("precision_layers")
    if not section:
        return
    counts = ", ".join(f"{n} {p}" for p, n in section["counts"].items())
    console.print(
        f"precision: requested {section['requested']}{' (strict)' if section['strict'] else ''}; layers: {counts}"
    )
    if layers:
        table = Table(title="Layer precisions")
        for col in ("layer", "op", "precision", "why"):
            table.add_column(col)
        for entry in section["layers"]:
            table.add_row(entry["node"], entry["op_type"], entry["precision"], entry["reason"])
        console.print(table)
    calibration = section.get("calibration")
    if calibration:
        source = "calibration cache" if calibration["from_cache"] else f"{calibration['samples']} samples"
        console.print(
            f"INT8 calibration: {calibration['calibrator']} over {source}, {calibration['tensors']} tensors"
        )
    if section.get("explicit_qdq"):
        q = section["explicit_qdq"]
        console.print(
            f"explicit Q/DQ: {q['weights']} quantized weights, {q['activations']} activation scales, "
            f"{q['layers']} INT8 layers"
        )
    for note in section.get("notes", []):
        console.print(f"note: {note}")
    budget = report.get("accuracy_budget")
    if budget:
        console.print(
            f"accuracy budget {budget['budget']}: first engine {budget['first_engine']:.6g}, final "
            f"{budget['final']:.6g} with {len(budget['kept_fp32'])} layer(s) kept in FP32 "
            f"({len(budget['probes'])} probe builds)"
        )
        if budget["sensitivity"]:
            table = Table(title="Layer sensitivity (metric with only this layer reduced)")
            metric = budget["budget"].split(">")[0].split("<")[0]
            for col in ("layer", "op", "precision", metric, "kept in FP32"):
                table.add_column(col)
            kept = set(budget["kept_fp32"])
            for entry in budget["sensitivity"]:
                table.add_row(entry["node"], entry["op_type"], entry["precision"], f"{entry[metric]:.6g}",
                              "yes" if entry["node"] in kept else "")  # fmt: skip
            console.print(table)
