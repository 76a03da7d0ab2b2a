"""Runs an IR graph (fused nodes and control-flow bodies included) with the numpy reference ops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from farm.compiler.ir.graph import Graph, Node, _outer_reads
from farm.compiler.reference.registry import Context, OpNotImplementedError, lookup


class ReferenceError(RuntimeError):
    """A node failed in the reference interpreter; the message names the node and its inputs."""


def run(
    graph: Graph,
    feeds: Mapping[str, np.ndarray],
    *,
    outputs: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` and return the requested values (default: graph outputs).

    Feeds must cover every graph input that is not also a constant; an initializer that doubles
    as an input may be overridden. ``outputs`` may name any value of the graph.
    """
    unknown = [name for name in feeds if name not in graph.inputs]
    if unknown:
        raise ValueError(f"feeds name {unknown}, which are not graph inputs (inputs: {graph.inputs})")
    arrays = {name: np.asarray(value) for name, value in feeds.items()}
    return run_graph(graph, arrays, outputs=outputs)


def run_graph(
    graph: Graph,
    feeds: Mapping[str, Any],
    *,
    outputs: list[str] | None = None,
    scope: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Execute ``graph`` with values of enclosing scopes in ``scope`` (for subgraph bodies)."""
    env: dict[str, Any] = dict(scope or {})
    for name, value in graph.values.items():
        if value.const is not None:
            env[name] = value.const
    for name in graph.inputs:
        if name in feeds:
            env[name] = feeds[name]
        elif name not in env or graph.values[name].const is None:
            raise ValueError(f"missing feed for graph input {name!r}")
    wanted = list(outputs) if outputs is not None else list(graph.outputs)
    missing = [w for w in wanted if w not in graph.values and w not in env]
    if missing:
        raise ValueError(f"requested outputs {missing} are not values of the graph")
    context = Context(graph, env)
    schedule = _needed_nodes(graph, wanted, env)
    last_use = _last_uses(schedule, keep=set(wanted) | set(graph.values) - _node_outputs(schedule))
    for step, node in enumerate(schedule):
        args = [env[i] if i else None for i in node.inputs]
        try:
            results = run_node(node, args, graph, context)
        except OpNotImplementedError:
            raise
        except Exception as exc:
            shapes = [None if a is None else (getattr(a, "dtype", None), getattr(a, "shape", None)) for a in args]
            raise ReferenceError(f"node {node.name!r} ({node.op_type}) failed on inputs {shapes}: {exc}") from exc
        for name, result in zip(node.outputs, results, strict=False):
            if name:
                env[name] = result
        for name in last_use.get(step, ()):
            env.pop(name, None)  # intermediates are dropped after their last reader
    return {name: env[name] for name in wanted}


def _node_outputs(schedule: list[Node]) -> set[str]:
    return {o for n in schedule for o in n.outputs if o}


def _last_uses(schedule: list[Node], keep: set[str]) -> dict[int, list[str]]:
    """For each step, the node outputs read for the last time there (never those in ``keep``)."""
    last: dict[str, int] = {}
    for step, node in enumerate(schedule):
        for name in list(node.inputs) + sorted(_outer_reads(node)):
            if name:
                last[name] = step
        for name in node.outputs:
            if name and name not in last:
                last[name] = step  # never read: free right away
    by_step: dict[int, list[str]] = {}
    for name, step in last.items():
        if name not in keep:
            by_step.setdefault(step, []).append(name)
    return by_step


def _needed_nodes(graph: Graph, wanted: list[str], env: Mapping[str, Any]) -> list[Node]:
    producers = graph.producers()
    needed: set[int] = set()
    stack = [w for w in wanted if w in producers]
    while stack:
        node = producers[stack.pop()]
        if id(node) in needed:
            continue
        needed.add(id(node))
        for i in list(node.inputs) + sorted(_outer_reads(node)):
            if i and i in producers and id(producers[i]) not in needed:
                stack.append(i)
    return [n for n in graph.nodes if id(n) in needed]


def run_node(
    node: Node,
    inputs: list[np.ndarray | None],
    graph: Graph | None = None,
    context: Context | None = None,
) -> list[np.ndarray]:
    """Compute one node on concrete inputs (``None`` for omitted optional inputs).

    Returns one array per node output (omitted outputs get their computed value anyway). Used by
    constant folding and the autotuner's validation; ``graph`` gives the opset (default 21).
    """
    context = context or Context(graph)
    opset = graph.opsets.get(node.domain or "", graph.opset) if graph is not None else 21
    impl = lookup(node.op_type, opset)
    result = impl(node, inputs, context)
    if isinstance(result, np.ndarray) or np.isscalar(result):
        return [np.asarray(result)]
    return [r if not isinstance(r, np.ndarray) else r for r in result]
