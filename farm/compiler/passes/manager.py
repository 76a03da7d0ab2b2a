"""The PassManager: runs a pipeline of passes to a fixed point and reports what each changed."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.compiler.ir import Graph, GraphError, verify
from farm.compiler.passes.base import Pass


@dataclass
class PassReport:
    """What one pass changed over the whole optimization, summed over fixed-point iterations."""

    name: str
    rule: str
    changes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    runs: int = 0

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    def line(self) -> str:
        """A human line, e.g. ``layernorm_fusion: fused 12 LayerNorm (1.3 ms)``."""
        if self.changes:
            parts = []
            for action, count in self.changes.items():
                verb, _, what = action.partition(" ")
                parts.append(f"{verb} {count} {what}".rstrip())
            summary = ", ".join(parts)
        else:
            summary = "no change"
        return f"{self.name}: {summary} ({self.seconds * 1e3:.1f} ms)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rule": self.rule,
            "changes": dict(self.changes),
            "changed": self.changed,
            "seconds": self.seconds,
            "runs": self.runs,
        }


@dataclass
class OptimizeReport:
    """The result of :meth:`PassManager.run`: one :class:`PassReport` per enabled pass, in order."""

    passes: list[PassReport]
    disabled: list[str]
    iterations: int
    converged: bool
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    seconds: float

    def __getitem__(self, name: str) -> PassReport:
        for p in self.passes:
            if p.name == name:
                return p
        raise KeyError(f"no pass named {name!r} in this report")

    def lines(self) -> list[str]:
        out = [p.line() for p in self.passes]
        tail = "" if self.converged else " (iteration limit reached before a fixed point)"
        out.append(
            f"{self.nodes_before} -> {self.nodes_after} nodes in {self.iterations} iterations, "
            f"{self.seconds * 1e3:.1f} ms{tail}"
        )
        if self.disabled:
            out.append("disabled: " + ", ".join(self.disabled))
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": [p.to_dict() for p in self.passes],
            "disabled": list(self.disabled),
            "iterations": self.iterations,
            "converged": self.converged,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": dict(self.ops_before),
            "ops_after": dict(self.ops_after),
            "seconds": self.seconds,
        }


class PassError(RuntimeError):
    """A pass left the graph malformed (raised when verifying after each pass)."""


class PassManager:
    """Runs ``passes`` in order, repeatedly, until none changes anything (at most
    ``max_iterations`` rounds). Passes named in ``disabled`` are skipped; an unknown name is an error
    that lists the valid ones. With ``verify_each`` the graph is verified after every pass.
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        disabled: Collection[str] = (),
        verify_each: bool = False,
        max_iterations: int = 8,
    ) -> None:
        names = [p.name for p in passes]
        if len(set(names)) != len(names):
            raise ValueError(f"pass names must be unique, got {names}")
        unknown = sorted(set(disabled) - set(names))
        if unknown:
            raise ValueError(
                f"unknown pass name(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(names)}"
            )
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.passes = [p for p in passes if p.name not in set(disabled)]
        self.disabled = [n for n in names if n in set(disabled)]
        self.verify_each = verify_each
        self.max_iterations = max_iterations

    def run(self, graph: Graph) -> OptimizeReport:
        """Optimize ``graph`` in place and return the report."""
        start = time.perf_counter()
        reports = {p.name: PassReport(p.name, p.rule()) for p in self.passes}
        nodes_before, ops_before = len(graph), graph.op_histogram()
        iterations, converged = 0, False
        while iterations < self.max_iterations:
            iterations += 1
            changed = 0
            for p in self.passes:
                t0 = time.perf_counter()
                result = p.run(graph)
                report = reports[p.name]
                report.seconds += time.perf_counter() - t0
                report.runs += 1
                for action, count in result.changes.items():
                    report.changes[action] = report.changes.get(action, 0) + count
                changed += result.changed
                if self.verify_each:
                    try:
                        verify(graph)
                    except GraphError as exc:
                        raise PassError(f"pass {p.name!r} left a malformed graph: {exc}") from exc
            if not changed:
                converged = True
                break
        return OptimizeReport(
            passes=list(reports.values()),
            disabled=list(self.disabled),
            iterations=iterations,
            converged=converged,
            nodes_before=nodes_before,
            nodes_after=len(graph),
            ops_before=ops_before,
            ops_after=graph.op_histogram(),
            seconds=time.perf_counter() - start,
        )
