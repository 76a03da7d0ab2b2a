"""Concat elision: producers write straight into the slices of a Concat's output buffer."""

from __future__ import annotations

from farm.compiler.ir import Graph, Node
from farm.compiler.passes.base import GraphView, Pass, PassResult

# Ops whose output the runtime may alias to their input's buffer (views): they cannot write
# into a slice, and neither can another Concat (its own inputs may already be slices of it).
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat"})


class ConcatElision(Pass):
    """Concat(x1..xn, axis) where every xi is the only output of a non-view node and is read by
    nothing else (not a graph output) => the same Concat marked ``elide=1``.

    Contract for the runtime and memory planner (the exact rule): for a Concat with ``elide=1`` the
    planner allocates only the Concat's output buffer ``Y``; input i is the view
    ``Y[(:,)*axis, off_i:off_i + n_i]`` with ``off_i`` the sum of the sizes of the inputs before it
    along ``axis``, and its producer writes its result directly into that view; the Concat node then
    does nothing. Each input's producer is a node (never a graph input or constant) with one output,
    which only this Concat reads (once) and which is not a graph output; it is not a view op
    (Reshape, Flatten, Squeeze, Unsqueeze, Identity) nor another Concat. The views are contiguous
    only when every dimension before ``axis`` is 1; otherwise they are strided, and the runtime must
    use a producer tactic that accepts strided outputs (``Tactic.accepts_strided_output``) or fall
    back to copying: ``elide=1`` is a permission, not an obligation. The pass re-checks marked
    Concats on every run and clears the mark of one that no longer qualifies.
    """

    name = "concat_elision"

    def run(self, graph: Graph) -> PassResult:
        result = PassResult()
        view = GraphView(graph)
        for node in graph.nodes:
            if node.op_type != "Concat":
                continue
            marked = int(node.attr("elide", 0)) == 1
            ok = _elidable(node, view)
            if ok and not marked:
                node.attrs["elide"] = 1
                result.add("marked Concat for elision")
            elif marked and not ok:
                del node.attrs["elide"]
                result.add("unmarked Concat")
        return result


def _elidable(node: Node, view: GraphView) -> bool:
    if not node.inputs or view.shape(node.outputs[0]) is None:
        return False
    for name in node.inputs:
        producer = view.producer(name)
        if producer is None or producer.op_type in VIEW_OPS:
            return False
        if [o for o in producer.outputs if o] != [name] or view.only_consumer(name) is not node:
            return False
    return True
