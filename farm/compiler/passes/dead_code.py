"""Dead-code elimination."""

from __future__ import annotations

from farm.compiler.ir import Graph
from farm.compiler.ir.graph import _outer_reads
from farm.compiler.passes.base import Pass, PassResult


class DeadCodeElimination(Pass):
    """Node whose outputs nobody reads (and that are not graph outputs) => removed, repeatedly.

    Walks the nodes once in reverse topological order, so a whole dead chain goes in one run;
    values and constants nothing refers to any more are pruned.
    """

    name = "dead_code"

    def run(self, graph: Graph) -> PassResult:
        result = PassResult()
        live: set[str] = set(graph.outputs)
        kept = []
        for node in reversed(graph.nodes):
            if any(o and o in live for o in node.outputs):
                kept.append(node)
                live.update(i for i in node.inputs if i)
                live.update(_outer_reads(node))
            else:
                result.add("removed nodes")
        if result.changed:
            graph.nodes = kept[::-1]
        pruned = graph.prune()
        result.add("dropped unused values", pruned)
        return result
