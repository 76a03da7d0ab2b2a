"""The recurrent tactics (fused and step-by-step) against the reference on fresh random inputs,
over every attribute: directions, layout, sequence_lens, initial states, peepholes,
input_forget, linear_before_reset, activations with alpha/beta, clip; constant and non-constant
weights."""

from __future__ import annotations

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.ir import Graph
from farm.compiler.kernels import get_tactic
from farm.compiler.tuner import compare_outputs

TACTICS = ("cpu.recurrent.fused", "cpu.recurrent.stepwise", "cpu.recurrent.fused_concurrent",
           "cpu.recurrent.fused_blas_steps")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def recurrent_graph(
    op: str, *, seq: int = 5, batch: int = 3, features: int = 6, hidden: int = 4, direction: str = "forward",
    layout: int = 0, lengths: bool = False, initial: bool = False, peepholes: bool = False,
    const_weights: bool = True, seed: int = 0, **attrs: object,
) -> tuple[Graph, dict[str, np.ndarray]]:  # fmt: skip
    """A one-node graph of ``op`` with random weights and its random feeds."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gh = GATES[op] * hidden
    graph = Graph("recurrent", opset=21)
    feeds: dict[str, np.ndarray] = {}

    def tensor(name: str, shape: tuple[int, ...], const: bool, scale: float = 0.5) -> str:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        if const:
            graph.add_const(name, data)
        else:
            graph.add_input(name, "float32", shape)
            feeds[name] = data
        return name

    x_shape = (batch, seq, features) if layout else (seq, batch, features)
    state_shape = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    inputs = [
        tensor("X", x_shape, False, 1.0),
        tensor("W", (dirs, gh, features), const_weights),
        tensor("R", (dirs, gh, hidden), const_weights),
        tensor("B", (dirs, 2 * gh), const_weights),
    ]
    if lengths:
        graph.add_input("lens", "int32", (batch,))
        feeds["lens"] = rng.integers(0, seq + 1, size=batch).astype(np.int32)
        feeds["lens"][0] = seq
    inputs.append("lens" if lengths else "")
    inputs.append(tensor("h0", state_shape, False) if initial else "")
    if op == "LSTM":
        inputs.append(tensor("c0", state_shape, False) if initial else "")
        inputs.append(tensor("P", (dirs, 3 * hidden), const_weights) if peepholes else "")
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    graph.add_node(op, inputs, outputs, {"hidden_size": hidden, "direction": direction, "layout": layout, **attrs})
    graph.outputs = outputs
    from farm.compiler.frontend import infer_shapes

    infer_shapes(graph, {k: v.shape for k, v in feeds.items()})
    return graph, feeds


def run_tactic(name: str, graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Prepare and run one tactic on the graph's single node (outputs poisoned with NaN)."""
    node = graph.nodes[0]
    tactic = get_tactic(name)
    assert tactic.supports(node, graph)
    prepared = tactic.prepare(node, graph)
    values = {**feeds, **{k: v.const for k, v in graph.values.items() if v.const is not None}}
    ins = [None if (not n or i in prepared.replaces) else values[n] for i, n in enumerate(node.inputs)]
    outs = [np.full(graph.values[o].shape, np.nan, np.float32) for o in node.outputs]
    tactic.run(node, ins, outs, prepared)
    return outs


CASES = [
    ("LSTM", {}),
    ("LSTM", {"direction": "bidirectional", "layout": 1, "lengths": True, "initial": True, "peepholes": True}),
    ("LSTM", {"direction": "reverse", "lengths": True, "clip": 0.7, "input_forget": 1}),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "ScaledTanh"], "activation_alpha": [0.3, 0.2, 0.9],
              "activation_beta": [0.4, 0.0, 1.1]}),
    ("LSTM", {"direction": "bidirectional", "const_weights": False, "peepholes": True}),
    ("GRU", {}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional", "lengths": True, "initial": True}),
    ("GRU", {"linear_before_reset": 1, "layout": 1, "direction": "reverse", "clip": 0.5}),
    ("GRU", {"activations": ["Sigmoid", "Softsign", "HardSigmoid", "Elu"], "direction": "bidirectional",
             "const_weights": False, "layout": 1, "lengths": True}),
    ("RNN", {}),
    ("RNN", {"direction": "bidirectional", "lengths": True, "initial": True, "layout": 1}),
    ("RNN", {"activations": ["Relu"], "direction": "reverse", "clip": 1.0}),
    ("RNN", {"activations": ["Affine", "ThresholdedRelu"], "activation_alpha": [0.8, 0.1],
             "activation_beta": [0.2, 0.0], "direction": "bidirectional"}),
    ("RNN", {"activations": ["Softplus"], "const_weights": False, "initial": True}),
    # hidden 21 = two 8-row blocks of R^T plus a 5-row tail in the hidden projection
    ("LSTM", {"hidden": 21, "batch": 5, "direction": "bidirectional", "lengths": True, "peepholes": True}),
    ("GRU", {"hidden": 21, "batch": 5, "lengths": True, "initial": True}),
    ("GRU", {"hidden": 21, "batch": 5, "linear_before_reset": 1, "direction": "reverse"}),
    ("RNN", {"hidden": 16, "batch": 4, "initial": True}),
]  # fmt: skip


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize(("op", "options"), CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)])
def test_recurrent_tactic_matches_reference(tactic: str, op: str, options: dict[str, object]) -> None:
    graph, feeds = recurrent_graph(op, seed=len(str(options)), **options)  # type: ignore[arg-type]
    if not get_tactic(tactic).supports(graph.nodes[0], graph):
        assert tactic == "cpu.recurrent.fused_concurrent" and options.get("direction") != "bidirectional"
        return
    want = reference.run(graph, feeds)
    got = run_tactic(tactic, graph, feeds)
    for name, array in zip(graph.nodes[0].outputs, got, strict=True):
        assert compare_outputs(array, want[name]) is None, (name, compare_outputs(array, want[name]))


def test_fused_tactic_runs_both_directions_concurrently_when_large() -> None:
    # Large enough for the two-thread path (seq * batch * H * 4H >= 2**20): same result.
    graph, feeds = recurrent_graph("LSTM", seq=16, batch=2, features=8, hidden=64, direction="bidirectional")
    want = reference.run(graph, feeds)
    got = run_tactic("cpu.recurrent.fused_concurrent", graph, feeds)
    for name, array in zip(graph.nodes[0].outputs, got, strict=True):
        assert compare_outputs(array, want[name]) is None


def test_unknown_activation_is_declined() -> None:
    graph, _ = recurrent_graph("RNN")
    graph.nodes[0].attrs["activations"] = ["Swish"]
    assert not get_tactic("cpu.recurrent.fused").supports(graph.nodes[0], graph)
