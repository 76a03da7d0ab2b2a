"""Structural checks of an IR graph, run after every pass in tests."""

from __future__ import annotations

from farm.compiler.ir.dtypes import numpy_dtype
from farm.compiler.ir.graph import Graph, _outer_reads, subgraphs


class GraphError(ValueError):
    """A graph is malformed: the message names the node or value at fault."""


def verify(graph: Graph, *, outer_scope: frozenset[str] = frozenset()) -> None:
    """Check that ``graph`` is well formed, or raise :class:`GraphError` naming the problem.

    Rules: every node input is defined before it is read (a graph input, a constant, an earlier
    node's output, or a name from the enclosing scope for subgraphs); every value is produced
    once; graph outputs are defined; value records exist for every name; constants' dtype and
    shape agree with their data; node names are unique.
    """
    defined: set[str] = set(outer_scope) | set(graph.inputs)
    for name, v in graph.values.items():
        if v.name != name:
            raise GraphError(f"value record {name!r} is named {v.name!r}")
        if v.const is not None:
            if name in graph.inputs:
                continue  # an initializer that doubles as an overridable input
            defined.add(name)
            if tuple(v.const.shape) != tuple(v.shape or ()):
                raise GraphError(f"constant {name!r} has shape {v.const.shape} but records {v.shape}")
            if v.dtype is not None and numpy_dtype(v.dtype) != v.const.dtype:
                raise GraphError(f"constant {name!r} has dtype {v.const.dtype} but records {v.dtype}")
    for i in graph.inputs:
        if i not in graph.values:
            raise GraphError(f"graph input {i!r} has no value record")
    produced: set[str] = set()
    names: set[str] = set()
    for node in graph.nodes:
        if node.name in names:
            raise GraphError(f"two nodes are named {node.name!r}")
        names.add(node.name)
        for i in node.inputs:
            if i and i not in defined:
                if any(i in n.outputs for n in graph.nodes):
                    raise GraphError(
                        f"node {node.name!r} ({node.op_type}) reads {i!r} before it is produced "
                        "(nodes out of topological order, or a cycle)"
                    )
                raise GraphError(f"node {node.name!r} ({node.op_type}) reads {i!r}, which nothing defines")
        for r in _outer_reads(node):
            if r not in defined:
                raise GraphError(f"a subgraph of node {node.name!r} reads {r!r}, which nothing defines")
        for sub in subgraphs(node):
            verify(sub, outer_scope=frozenset(defined))
        for o in node.outputs:
            if not o:
                continue
            if (
                o in produced
                or o in graph.inputs
                or (o in graph.values and graph.values[o].const is not None)
            ):
                raise GraphError(f"value {o!r} is produced twice (again by node {node.name!r})")
            if o not in graph.values:
                raise GraphError(f"output {o!r} of node {node.name!r} has no value record")
            produced.add(o)
            defined.add(o)
    for o in graph.outputs:
        if o not in defined:
            raise GraphError(f"graph output {o!r} is not produced by any node, input or constant")
