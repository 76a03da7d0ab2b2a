"""If, Loop and Scan: their bodies are nested IR graphs run by the interpreter with the
enclosing scope's values visible."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Graph, Node
from farm.compiler.reference.registry import Context, Inputs, op


def _run_body(body: Graph, feeds: dict[str, np.ndarray], ctx: Context) -> list[np.ndarray]:
    from farm.compiler.reference.interpreter import run_graph

    results = run_graph(body, feeds, scope=ctx.scope)
    return [results[name] for name in body.outputs]


@op("If")
def if_op(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    branch = node.attr("then_branch") if bool(np.asarray(inputs[0]).reshape(-1)[0]) else node.attr("else_branch")
    return _run_body(branch, {}, ctx)


@op("Loop")
def loop(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    body: Graph = node.attr("body")
    trip_count = inputs[0] if inputs and inputs[0] is not None else None
    condition = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    carried = list(inputs[2:])
    max_trips = int(np.asarray(trip_count).reshape(-1)[0]) if trip_count is not None else None
    keep_going = bool(np.asarray(condition).reshape(-1)[0]) if condition is not None else True
    n_carried = len(carried)
    scans: list[list[np.ndarray]] = [[] for _ in range(len(body.outputs) - 1 - n_carried)]
    iteration = 0
    while keep_going and (max_trips is None or iteration < max_trips):
        feeds = {body.inputs[0]: np.array(iteration, dtype=np.int64)}
        if len(body.inputs) > 1:
            feeds[body.inputs[1]] = np.array(keep_going)
        for name, value in zip(body.inputs[2:], carried, strict=False):
            feeds[name] = value
        outputs = _run_body(body, feeds, ctx)
        keep_going = bool(np.asarray(outputs[0]).reshape(-1)[0])
        carried = outputs[1 : 1 + n_carried]
        for store, value in zip(scans, outputs[1 + n_carried :], strict=True):
            store.append(np.asarray(value))
        iteration += 1
    stacked = []
    for index, store in enumerate(scans):
        if store:
            stacked.append(np.stack(store))
        else:
            value = body.values.get(body.outputs[1 + n_carried + index])
            dtype = value.dtype if value is not None and value.dtype else "float32"
            stacked.append(np.zeros((0,), dtype=dtype))
    return carried + stacked


@op("Scan")
def scan(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    body: Graph = node.attr("body")
    n_scan_inputs = int(node.attr("num_scan_inputs"))
    n_state = len(inputs) - n_scan_inputs
    states = list(inputs[:n_state])
    scan_inputs = list(inputs[n_state:])
    input_axes = node.attr("scan_input_axes", None) or [0] * n_scan_inputs
    input_dirs = node.attr("scan_input_directions", None) or [0] * n_scan_inputs
    n_scan_outputs = len(body.outputs) - n_state
    output_axes = node.attr("scan_output_axes", None) or [0] * n_scan_outputs
    output_dirs = node.attr("scan_output_directions", None) or [0] * n_scan_outputs
    moved = [np.moveaxis(x, axis % x.ndim, 0) for x, axis in zip(scan_inputs, input_axes, strict=True)]
    moved = [x[::-1] if d else x for x, d in zip(moved, input_dirs, strict=True)]
    length = moved[0].shape[0] if moved else 0
    collected: list[list[np.ndarray]] = [[] for _ in range(n_scan_outputs)]
    for step in range(length):
        feeds = dict(zip(body.inputs[:n_state], states, strict=True))
        feeds.update({name: x[step] for name, x in zip(body.inputs[n_state:], moved, strict=True)})
        outputs = _run_body(body, feeds, ctx)
        states = outputs[:n_state]
        for store, value in zip(collected, outputs[n_state:], strict=True):
            store.append(value)
    results = []
    for store, axis, direction in zip(collected, output_axes, output_dirs, strict=True):
        stacked = np.stack(store[::-1] if direction else store)
        results.append(np.moveaxis(stacked, 0, axis % stacked.ndim))
    return states + results
