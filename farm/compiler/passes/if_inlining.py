"""Inlining an If whose condition is known at build time."""

from __future__ import annotations

from dataclasses import dataclass

from farm.compiler.ir import Graph, Node, subgraphs
from farm.compiler.ir.graph import rename_outer_reads
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass


@dataclass
class _Inline:
    nodes: list[Node]
    branch: Graph


class IfInlining(RewritePass[_Inline]):
    """If(constant condition) => the nodes of the branch it takes, in the enclosing graph.

    The branch's values get fresh names (its constants become constants of the enclosing graph),
    except that a branch output computed by a branch node is written under the If's output name.
    A branch output the branch does not compute (an enclosing-scope value, a constant, or a value
    returned twice) reaches the If's output through an ``Identity``. Bodies nested in the inlined
    nodes read the renamed values. Exporters guard shapes with such Ifs (``Size(Shape(x)) == 0``,
    a batch-size check, the sample rate of an audio model whose other rate the engine's fixed
    input shapes exclude): constant folding decides the condition, and this pass removes the
    per-run cost of calling a nested schedule (20-60 us per If on a 2-core host).
    """

    name = "if_inlining"
    anchor_ops = ("If",)

    def match(self, node: Node, view: GraphView) -> _Inline | None:
        condition = view.const(node.input(0)) if node.inputs else None
        if condition is None or condition.size != 1:
            return None
        branch = node.attrs.get("then_branch" if bool(condition.reshape(-1)[0]) else "else_branch")
        if not isinstance(branch, Graph) or branch.inputs or len(branch.outputs) != len(node.outputs):
            return None
        return _Inline([node], branch)

    def rewrite(self, found: _Inline, view: GraphView, edit: GraphEdit) -> str | None:
        (node,) = found.nodes
        branch = found.branch.copy()
        produced = {o for n in branch.nodes for o in n.outputs if o}
        # Branch outputs written directly under the If's output names (each at most once).
        direct: dict[str, str] = {}
        for inner, outer in zip(branch.outputs, node.outputs, strict=True):
            if outer and inner in produced and inner not in direct:
                direct[inner] = outer
        names: dict[str, str] = {}
        for key, value in branch.values.items():
            if value.const is not None:
                names[key] = edit.new_const(f"{node.name}/{key}", value.const)
            elif key in direct:
                names[key] = direct[key]
            elif key in produced:
                names[key] = edit.new_value(f"{node.name}/{key}", value.dtype, value.shape)
        for inner_node in branch.nodes:
            for sub in subgraphs(inner_node):
                for old, new in names.items():
                    rename_outer_reads(sub, old, new)
            edit.new_node(
                inner_node.op_type,
                [names.get(i, i) if i else i for i in inner_node.inputs],
                [names.get(o, o) if o else o for o in inner_node.outputs],
                inner_node.attrs,
                before=node,
                name_hint=inner_node.name or inner_node.op_type,
            )
        for inner, outer in zip(branch.outputs, node.outputs, strict=True):
            if outer and direct.get(inner) != outer:
                edit.new_node(
                    "Identity", [names.get(inner, inner)], [outer], before=node, name_hint=f"{node.name}/out"
                )
        edit.remove([node])
        return "inlined If"
