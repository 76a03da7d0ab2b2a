"""If, Loop and Scan: their bodies compiled as nested schedules of tactics.

A body (a subgraph) becomes a :class:`NestedSchedule`: the body with the enclosing-scope values
it reads declared as extra inputs, one tactic per node (the highest-priority FP32 candidate that
supports and prepares it, so nested control flow and recurrent layers inside a body get their
own tactics), weights prepared once. Running it infers the body's concrete shapes once per input
shape signature (a Loop whose carried values keep their shapes infers once), allocates each
node's outputs and calls the tactics in order; a node whose output shape depends on data runs
through the tactic's ``run_dynamic`` or the reference.

Enclosing-scope values arrive as the inputs past ``node.inputs`` (``ir.run_inputs``): the
runtime and the tuner pass them like any other input, and the memory planner keeps them alive.

* ``cpu.control_flow.if``: both branches are built; the condition is read at run time, or, when
  it is a constant, only the taken branch is built and the condition is never read.
* ``cpu.control_flow.loop`` / ``cpu.control_flow.scan``: the body's schedule runs once per
  iteration; scan outputs are stacked at the end.

The tactic names chosen per body node are stored in the engine's manifest; a loaded engine
rebuilds the nested schedules from them on first run (bodies are part of the stored graph).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node, dtype_name, numpy_dtype, run_inputs, scope_reads
from farm.compiler.kernels.registry import Prepared, Tactic, all_tactics, get_tactic, register_tactic

Shape = tuple[int, ...]


@dataclass
class _BodyStep:
    node: Node
    tactic: Tactic
    prepared: Prepared
    reads: list[str]


def _pick_tactic(node: Node, graph: Graph) -> tuple[Tactic, Prepared]:
    """The highest-priority FP32 CPU tactic that supports and prepares ``node``."""
    found = [t for t in all_tactics("cpu") if node.op_type in t.op_types and "fp32" in t.precisions]
    for tactic in sorted(found, key=lambda t: -t.priority):
        try:
            if tactic.supports(node, graph):
                return tactic, tactic.prepare(node, graph)
        except Exception:  # a tactic that cannot judge a body node's symbolic shapes declines
            continue
    raise RuntimeError(f"no CPU tactic can run node {node.name!r} ({node.op_type}) inside a subgraph")


class NestedSchedule:
    """A control-flow body compiled into tactics; :meth:`run` maps feeds to the body's outputs.

    ``scope`` names the enclosing-scope values the body reads, with their (dtype, shape);
    ``constants`` gives those that are constants of the enclosing graph (the body sees them as
    its own constants, so what it computes from them alone is folded: :func:`simplify_body`);
    ``tactic_names`` (one per body node) restores a schedule chosen before (a loaded engine).
    """

    def __init__(
        self,
        body: Graph,
        scope: Mapping[str, tuple[str | None, Sequence[int | str] | None]],
        tactic_names: Sequence[str] | None = None,
        constants: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        graph = body.copy()
        for name, (dtype, shape) in scope.items():
            if constants is not None and name in constants:
                graph.add_const(name, np.asarray(constants[name]))
            else:
                graph.add_input(name, dtype or "float32", list(shape) if shape is not None else None)  # type: ignore[arg-type]
        graph = simplify_body(graph, own_inputs=body.inputs)
        self.graph = graph
        self.body_inputs = list(body.inputs)
        self.outputs = list(body.outputs)
        self.constants = {k: v.const for k, v in graph.values.items() if v.const is not None}
        self.steps: list[_BodyStep] = []
        stored = _stored_tactics(graph, tactic_names)
        for index, node in enumerate(graph.nodes):
            if stored is not None:
                tactic = stored[index]
                prepared = tactic.prepare(node, graph)
            else:
                tactic, prepared = _pick_tactic(node, graph)
            self.steps.append(_BodyStep(node, tactic, prepared, run_inputs(node)))
        self._shapes: dict[tuple[Any, ...], tuple[dict[str, Shape], dict[str, np.dtype]]] = {}

    @property
    def tactic_names(self) -> list[str]:
        return [s.tactic.name for s in self.steps]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, Shape], dict[str, np.dtype]]:
        key = tuple((name, feeds[name].shape, feeds[name].dtype.str) for name in self.graph.inputs)
        cached = self._shapes.get(key)
        if cached is not None:
            return cached
        from farm.compiler.frontend import infer_shapes

        graph = self.graph.copy()
        for name in graph.inputs:
            graph.values[name].dtype = dtype_name(feeds[name].dtype)
        infer_shapes(graph, {name: tuple(feeds[name].shape) for name in graph.inputs})  # in place
        shapes: dict[str, Shape] = {}
        dtypes: dict[str, np.dtype] = {}
        for name, value in graph.values.items():
            if value.shape is not None and all(isinstance(d, int) for d in value.shape):
                shapes[name] = tuple(int(d) for d in value.shape)
            if value.dtype is not None:
                dtypes[name] = numpy_dtype(value.dtype)
        self._shapes[key] = (shapes, dtypes)
        return shapes, dtypes

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the body on ``feeds`` (its inputs and the scope values); returns its outputs."""
        env: dict[str, Any] = dict(self.constants)
        env.update({k: np.asarray(v) for k, v in feeds.items()})
        shapes, dtypes = self._infer(env)
        for step in self.steps:
            node = step.node
            ins = [env[name] if name else None for name in step.reads]
            outs: Sequence[np.ndarray | None]
            if all(not o or (o in shapes and o in dtypes) for o in node.outputs):
                outs = [np.empty(shapes[o], dtypes[o]) if o else None for o in node.outputs]
                step.tactic.run(node, ins, outs, step.prepared)  # type: ignore[arg-type]
            else:
                outs = _run_allocating(step.tactic, node, ins, step.prepared, self.graph)
            for name, value in zip(node.outputs, outs, strict=False):
                if name:
                    env[name] = value
        return [env[name] for name in self.outputs]


def _stored_tactics(graph: Graph, names: Sequence[str] | None) -> list[Tactic] | None:
    """The stored tactic of every body node, or None (pick them again) when there are none or
    they do not fit the body: an engine made by a compiler that simplified bodies differently."""
    if names is None or len(names) != len(graph.nodes):
        return None
    tactics = [get_tactic(name) for name in names]
    if any(node.op_type not in tactic.op_types for node, tactic in zip(graph.nodes, tactics, strict=True)):
        return None
    return tactics


def simplify_body(body: Graph, own_inputs: Sequence[str] = ()) -> Graph:
    """``body`` (its scope values declared as inputs) with what does not depend on run-time data
    computed once: Identity and no-op chains removed, constant subgraphs folded (``Constant`` ->
    ``Slice`` of weights, ``Shape``/``Size`` of values whose shapes the enclosing graph fixes),
    nested Ifs whose condition folding decides inlined, and the nodes no body output needs
    dropped (the rules of the cleanup, folding, If-inlining and dead-code passes). Exporters write LSTM cells and shape checks into If/Loop bodies as dozens of such
    nodes, each a call per run. The passes are deterministic, so a loaded engine simplifies its
    stored bodies to the same nodes. Only the scope values' shapes count as known: they come from
    the enclosing graph, whose shapes the engine checks; ``own_inputs`` (a Loop's iteration count,
    condition and carried values) are taken as unknown whatever the body declares. The body is
    returned as it was when a pass fails on it."""
    from farm.compiler.frontend import infer_shapes
    from farm.compiler.passes import Cleanup, ConstantFolding, DeadCodeElimination
    from farm.compiler.passes.if_inlining import IfInlining
    from farm.compiler.passes.manager import PassManager

    simplified = body.copy()
    for name in own_inputs:
        simplified.values[name].shape = None
    try:
        static = {
            name: tuple(int(d) for d in value.shape)
            for name in simplified.inputs
            if (value := simplified.values[name]).shape is not None and value.is_static
        }
        infer_shapes(simplified, static)
        PassManager([Cleanup(), ConstantFolding(), IfInlining(), DeadCodeElimination()]).run(simplified)
    except Exception:  # a body the passes cannot handle runs as it was exported
        return body
    return simplified


def _run_allocating(
    tactic: Tactic, node: Node, ins: list[np.ndarray | None], prepared: Prepared, graph: Graph
) -> list[np.ndarray]:
    """A node whose output shapes depend on data: its tactic's ``run_dynamic``, else the reference."""
    run_dynamic = getattr(tactic, "run_dynamic", None)
    if run_dynamic is not None:
        return list(run_dynamic(node, ins, prepared))
    from farm.compiler.kernels.cpu.generic import run_reference_node

    return [np.asarray(v) for v in run_reference_node(node, ins, graph)]


def _scope_meta(node: Node, graph: Graph) -> dict[str, list[Any]]:
    """(dtype, shape) of every enclosing-scope value ``node``'s bodies read, JSON-able."""
    meta: dict[str, list[Any]] = {}
    for name in scope_reads(node):
        value = graph.values.get(name)
        dtype = value.dtype if value is not None else None
        shape = list(value.shape) if value is not None and value.shape is not None else None
        meta[name] = [dtype, shape]
    return meta


class _ControlFlowTactic(Tactic):
    """Shared by If/Loop/Scan: building, storing and restoring the nested schedules."""

    priority = 0
    # Subclasses: which graph attributes hold bodies.
    body_attrs: tuple[str, ...] = ()

    def bodies_to_build(self, node: Node, graph: Graph) -> tuple[str, ...]:
        """The body attributes to compile (If with a constant condition builds one)."""
        return self.body_attrs

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Compile every body into a nested schedule; the manifest keeps each body node's tactic
        and which scope values are constants of the enclosing graph."""
        meta = _scope_meta(node, graph)
        constants = {name: c for name in meta if (c := graph.const(name)) is not None}
        schedules = {
            attr: NestedSchedule(node.attrs[attr], {k: (v[0], v[1]) for k, v in meta.items()}, None, constants)
            for attr in self.bodies_to_build(node, graph)
        }
        prepared = Prepared(
            params={
                "scope": meta,
                "scope_constants": sorted(constants),
                "tactics": {attr: s.tactic_names for attr, s in schedules.items()},
            }
        )
        prepared.scratch["schedules"] = schedules
        return prepared

    @staticmethod
    def schedules(
        node: Node, prepared: Prepared, scope: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, NestedSchedule]:
        """The nested schedules, rebuilt after an engine load from the stored tactic names, with
        the constant scope values taken from ``scope`` (the run's scope values: the engine passes
        its constants as they are)."""
        schedules = prepared.scratch.get("schedules")
        if schedules is None:
            meta = prepared.params["scope"]
            names = prepared.params.get("scope_constants", [])
            constants = {name: scope[name] for name in names if scope is not None and name in scope}
            schedules = {
                attr: NestedSchedule(
                    node.attrs[attr], {k: (v[0], v[1]) for k, v in meta.items()}, tactics, constants
                )
                for attr, tactics in prepared.params["tactics"].items()
            }
            prepared.scratch["schedules"] = schedules
        return schedules

    @staticmethod
    def scope_values(node: Node, inputs: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
        """The enclosing-scope values, passed after the node's own inputs."""
        extra = inputs[len(node.inputs) :]
        return {name: value for name, value in zip(scope_reads(node), extra, strict=True) if value is not None}

    def run_dynamic(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> list[np.ndarray]:
        """Compute the outputs, allocating them (used when their shapes depend on data)."""
        raise NotImplementedError

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """Compute, then copy into the preallocated outputs."""
        results = self.run_dynamic(node, inputs, prepared)
        for out, result in zip(outputs, results, strict=False):
            if out is not None:
                np.copyto(out, np.asarray(result).reshape(out.shape), casting="unsafe")


def _scalar(array: np.ndarray) -> Any:
    return np.asarray(array).reshape(-1)[0]


@register_tactic
class IfTactic(_ControlFlowTactic):
    """If: both branches compiled; a constant condition builds and runs only the taken one."""

    name = "cpu.control_flow.if"
    op_types = ("If",)
    body_attrs = ("then_branch", "else_branch")

    def bodies_to_build(self, node: Node, graph: Graph) -> tuple[str, ...]:
        """Only the taken branch when the condition is a constant."""
        condition = graph.const(node.input(0))
        if condition is None:
            return self.body_attrs
        return ("then_branch",) if bool(_scalar(condition)) else ("else_branch",)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Compile the branches; a constant condition is folded (its input is not needed at run time)."""
        prepared = super().prepare(node, graph)
        if graph.const(node.input(0)) is not None:
            prepared.replaces = frozenset({0})
        return prepared

    def run_dynamic(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> list[np.ndarray]:
        """Run the branch the condition selects."""
        scope = self.scope_values(node, inputs)
        schedules = self.schedules(node, prepared, scope)
        if len(schedules) == 1:
            (branch,) = schedules.values()
        else:
            condition = inputs[0]
            assert condition is not None
            branch = schedules["then_branch" if bool(_scalar(condition)) else "else_branch"]
        return branch.run(scope)


@register_tactic
class LoopTactic(_ControlFlowTactic):
    """Loop: the body's schedule once per iteration; carried values passed on, scan outputs stacked."""

    name = "cpu.control_flow.loop"
    op_types = ("Loop",)
    body_attrs = ("body",)

    def run_dynamic(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> list[np.ndarray]:
        """ONNX Loop semantics: trip count and/or condition, carried values, scan outputs."""
        feeds = self.scope_values(node, inputs)
        schedule = self.schedules(node, prepared, feeds)["body"]
        body: Graph = node.attrs["body"]
        own = list(inputs[: len(node.inputs)])
        trip_count = own[0] if own and own[0] is not None else None
        condition = own[1] if len(own) > 1 and own[1] is not None else None
        carried = [np.asarray(v) for v in own[2:]]
        max_trips = int(_scalar(trip_count)) if trip_count is not None else None
        keep_going = bool(_scalar(condition)) if condition is not None else True
        n_carried = len(carried)
        scans: list[list[np.ndarray]] = [[] for _ in range(len(body.outputs) - 1 - n_carried)]
        iteration = 0
        while keep_going and (max_trips is None or iteration < max_trips):
            feeds[body.inputs[0]] = np.array(iteration, dtype=np.int64)
            if len(body.inputs) > 1:
                feeds[body.inputs[1]] = np.array(keep_going)
            feeds.update(zip(body.inputs[2:], carried, strict=False))
            outputs = schedule.run(feeds)
            keep_going = bool(_scalar(outputs[0]))
            carried = outputs[1 : 1 + n_carried]
            for store, value in zip(scans, outputs[1 + n_carried :], strict=True):
                store.append(np.asarray(value))
            iteration += 1
        stacked = []
        for index, store in enumerate(scans):
            if store:
                stacked.append(np.stack(store))
            else:
                declared = body.values.get(body.outputs[1 + n_carried + index])
                dtype = numpy_dtype(declared.dtype) if declared is not None and declared.dtype else np.float32
                stacked.append(np.zeros((0,), dtype=dtype))
        return carried + stacked


@register_tactic
class ScanTactic(_ControlFlowTactic):
    """Scan (opset 9+): the body's schedule once per slice of the scan inputs."""

    name = "cpu.control_flow.scan"
    op_types = ("Scan",)
    body_attrs = ("body",)

    def run_dynamic(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> list[np.ndarray]:
        """State variables carried; scan inputs sliced along their axes/directions; scan outputs
        stacked along theirs."""
        feeds = self.scope_values(node, inputs)
        schedule = self.schedules(node, prepared, feeds)["body"]
        body: Graph = node.attrs["body"]
        own = [np.asarray(v) for v in inputs[: len(node.inputs)]]
        n_scan_inputs = int(node.attr("num_scan_inputs"))
        n_state = len(own) - n_scan_inputs
        states = own[:n_state]
        input_axes = node.attr("scan_input_axes", None) or [0] * n_scan_inputs
        input_dirs = node.attr("scan_input_directions", None) or [0] * n_scan_inputs
        n_scan_outputs = len(body.outputs) - n_state
        output_axes = node.attr("scan_output_axes", None) or [0] * n_scan_outputs
        output_dirs = node.attr("scan_output_directions", None) or [0] * n_scan_outputs
        moved = [np.moveaxis(x, a % x.ndim, 0) for x, a in zip(own[n_state:], input_axes, strict=True)]
        moved = [x[::-1] if d else x for x, d in zip(moved, input_dirs, strict=True)]
        length = moved[0].shape[0] if moved else 0
        collected: list[list[np.ndarray]] = [[] for _ in range(n_scan_outputs)]
        for step in range(length):
            feeds.update(zip(body.inputs[:n_state], states, strict=True))
            feeds.update(
                (name, np.ascontiguousarray(x[step])) for name, x in zip(body.inputs[n_state:], moved, strict=True)
            )
            outputs = schedule.run(feeds)
            states = outputs[:n_state]
            for store, value in zip(collected, outputs[n_state:], strict=True):
                store.append(value)
        results = []
        for store, axis, direction in zip(collected, output_axes, output_dirs, strict=True):
            stacked = np.stack(store[::-1] if direction else store)
            results.append(np.moveaxis(stacked, 0, axis % stacked.ndim))
        return states + results
