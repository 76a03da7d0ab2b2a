"""In-engine tuning: a close call between tactics timed alone is settled by timing them inside the
whole engine, and kept only when the whole engine gets faster.

The test tactics model the state a layer finds in an engine with the one thing a test can set
for sure: which layer ran just before. ``HotOnly`` is fast only right after another call for the
same node (as the tuner times it: an untimed run, then the timed one), like a kernel whose weights
must be in cache; in an engine another layer always ran in between."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from farm.compiler.builder import BuilderConfig, build
from farm.compiler.ir import Graph, Node
from farm.compiler.kernels import registry
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.tuner import JsonTimingCache, NodeChoice
from farm.compiler.tuner import in_engine as in_engine_module
from farm.compiler.tuner.in_engine import contests

_STATE: dict[str, object] = {"last_node": None, "penalty": False}
PREPARED: list[tuple[str, str]] = []  # (node, tactic) of every prepare call


def _busy(ms: float) -> None:
    """Wait ``ms`` on the CPU (a sleep's granularity is too coarse for fractions of a ms)."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


class _TestTactic(Tactic):
    """A correct kernel for its op whose time follows the rule of the subclass."""

    leaves_penalty = False

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        PREPARED.append((node.name, self.name))
        return Prepared()

    def cost_ms(self, node: Node) -> float:
        raise NotImplementedError

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        _busy(self.cost_ms(node))
        _STATE["last_node"] = node.name
        if self.leaves_penalty:
            _STATE["penalty"] = True
        x = inputs[0]
        assert x is not None
        if node.op_type == "Relu":
            np.maximum(x, 0, out=outputs[0])
        else:
            np.negative(x, out=outputs[0])


class HotOnlyRelu(_TestTactic):
    """0.1 ms right after a call for the same node, 1.5 ms after anything else."""

    name = "cpu.test.hot_only_relu"
    op_types = ("Relu",)
    priority = 1000

    def cost_ms(self, node: Node) -> float:
        return 0.1 if _STATE["last_node"] == node.name else 1.5


class SteadyRelu(_TestTactic):
    """0.19 ms whatever ran before."""

    name = "cpu.test.steady_relu"
    op_types = ("Relu",)
    priority = 999

    def cost_ms(self, node: Node) -> float:
        return 0.19


class SloppyRelu(SteadyRelu):
    """0.19 ms itself, but it leaves the next layer 3 ms of work (as a kernel that leaves its
    output where the next layer reads it slowly)."""

    name = "cpu.test.sloppy_relu"
    priority = 998
    leaves_penalty = True


class PenalizedNeg(_TestTactic):
    """0.05 ms, 3 ms more after ``SloppyRelu``."""

    name = "cpu.test.penalized_neg"
    op_types = ("Neg",)
    priority = 1000

    def cost_ms(self, node: Node) -> float:
        extra = 3.0 if _STATE["penalty"] else 0.0
        _STATE["penalty"] = False
        return 0.05 + extra


TEST_TACTICS = (HotOnlyRelu, SteadyRelu, SloppyRelu, PenalizedNeg)


@pytest.fixture
def state_tactics() -> Iterator[None]:
    for cls in TEST_TACTICS:
        register_tactic(cls)
    _STATE.update(last_node=None, penalty=False)
    PREPARED.clear()
    yield
    for cls in TEST_TACTICS:
        registry._TACTICS.pop(cls.name, None)
        for op in cls.op_types:
            registry._BY_OP[op] = [t for t in registry._BY_OP[op] if t.name != cls.name]


def _chain(ops: Sequence[str]) -> Graph:
    g = Graph("chain")
    g.add_input("x", "float32", (4, 64))
    current = "x"
    for index, op in enumerate(ops):
        out = f"v{index}" if index < len(ops) - 1 else "y"
        g.add_node(op, [current], [out])
        g.values[out].dtype, g.values[out].shape = "float32", (4, 64)
        current = out
    g.outputs = ["y"]
    return g


def _config(graph: Graph, keep: Sequence[str], **kwargs: object) -> BuilderConfig:
    """Tuning level 1 with every tactic of the graph's ops disabled but the test tactics in ``keep``."""
    names = {t.name for node in graph.nodes for t in registry.candidates(node, graph, backend="cpu")}
    return BuilderConfig(
        tuning_level=1,
        optimize=False,
        disabled_tactics=sorted(names - set(keep)),
        **kwargs,  # type: ignore[arg-type]
    )


def _tactics(engine) -> list[str]:  # type: ignore[no-untyped-def]
    return [k.tactic.name for k in engine.kernels]


def test_a_tactic_fast_only_alone_loses_to_one_that_is_fast_in_the_engine(
    state_tactics: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timed alone, HotOnly (0.1 ms) beats Steady (0.19); in the engine it takes 1.5 ms, so both
    Relus switch to Steady, the report says why, and the engine's output is still right. A
    rebuild with the same cache reuses the decision without running an engine."""
    graph = _chain(["Relu", "Relu"])
    cache = tmp_path / "timing.json"
    config = _config(graph, [HotOnlyRelu.name, SteadyRelu.name], timing_cache=cache)
    engine = build(graph, config=config)
    report = engine.report["in_engine"]
    nodes = [n.name for n in graph.nodes]
    assert all(engine.report["nodes"][i]["timings_ms"][HotOnlyRelu.name] < 0.19 for i in range(2))
    assert report["source"] == "timed"
    assert report["contests"] == {n: [HotOnlyRelu.name, SteadyRelu.name] for n in nodes}
    assert report["changed"] == {n: [HotOnlyRelu.name, SteadyRelu.name] for n in nodes}
    assert all(report["layer_ms"][n][HotOnlyRelu.name] > 1.0 for n in nodes)
    assert report["whole_ms"]["in_engine"] < report["whole_ms"]["tuned"]
    assert _tactics(engine) == [SteadyRelu.name, SteadyRelu.name]
    # each tactic prepared to validate it (on the first Relu: the second's timings are cache hits,
    # same signature), then once per node for the engines, which share what it made
    both = (HotOnlyRelu.name, SteadyRelu.name)
    assert sorted(PREPARED) == sorted([(nodes[0], t) for t in both] + [(n, t) for n in nodes for t in both])
    assert [n["source"] for n in engine.report["nodes"]] == ["in-engine", "in-engine"]
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(engine.run({"x": x})["y"], np.maximum(x, 0))

    def no_runs(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm rebuild must not run an engine to tune it")

    monkeypatch.setattr(in_engine_module, "measure_interleaved", no_runs)
    monkeypatch.setattr(in_engine_module, "_with_tactics_rounds", no_runs)
    warm = build(
        graph, config=_config(graph, [HotOnlyRelu.name, SteadyRelu.name], timing_cache=JsonTimingCache(cache))
    )
    assert warm.report["in_engine"]["source"] == "cache"
    assert warm.report["in_engine"]["changed"] == report["changed"]
    assert _tactics(warm) == _tactics(engine)


def test_a_change_that_slows_the_whole_engine_is_not_kept(state_tactics: None) -> None:
    """Sloppy's own time in the engine (0.19 ms) beats HotOnly's (1.5 ms), but it costs the next
    layer 3 ms: the whole-engine check keeps the tuner's choice."""
    graph = _chain(["Relu", "Neg"])
    engine = build(graph, config=_config(graph, [HotOnlyRelu.name, SloppyRelu.name, PenalizedNeg.name]))
    report = engine.report["in_engine"]
    relu = graph.nodes[0].name
    assert report["contests"] == {relu: [HotOnlyRelu.name, SloppyRelu.name]}
    assert report["layer_ms"][relu][SloppyRelu.name] < report["layer_ms"][relu][HotOnlyRelu.name]
    assert report["source"] == "kept"
    assert report["changed"] == {}
    assert report["whole_ms"]["in_engine"] > report["whole_ms"]["tuned"]
    assert _tactics(engine) == [HotOnlyRelu.name, PenalizedNeg.name]


def test_in_engine_tuning_can_be_turned_off(state_tactics: None) -> None:
    graph = _chain(["Relu", "Relu"])
    config = _config(graph, [HotOnlyRelu.name, SteadyRelu.name], in_engine_tuning=False)
    engine = build(graph, config=config)
    assert engine.report["in_engine"]["source"] == "off"
    assert _tactics(engine) == [HotOnlyRelu.name, HotOnlyRelu.name]


def test_in_engine_tuning_is_skipped_when_tuning_used_the_time_budget(state_tactics: None) -> None:
    graph = _chain(["Relu", "Relu"])
    engine = build(graph, config=_config(graph, [HotOnlyRelu.name, SteadyRelu.name], time_budget_s=0.0))
    assert engine.report["in_engine"]["source"].startswith("skipped")


def _choice(node: str, tactic: str, timings: dict[str, float | None], **kwargs: object) -> NodeChoice:
    return NodeChoice(node, "Conv", tactic, "timed", timings_ms=timings, **kwargs)  # type: ignore[arg-type]


def test_contests_follow_the_rule() -> None:
    """Contenders: valid, of the winner's precision, within the ratio, fastest first, at most the
    limit; winners under the minimum time, heuristic choices and lone tactics are not contested."""
    precision = {"a": "fp32", "b": "fp32", "c": "fp32", "d": "fp32", "h": "fp16", "bad": "fp32"}.__getitem__
    choices = [
        _choice(
            "n1",
            "a",
            {"a": 1.0, "b": 1.9, "c": 1.5, "d": 2.5, "h": 1.1, "bad": 1.2},
            rejected={"bad": "wrong"},
        ),
        _choice("n2", "a", {"a": 0.01, "b": 0.011}),  # too fast to time in an engine
        _choice("n3", "a", {"a": 1.0, "b": None}),  # nothing else valid
        NodeChoice("n4", "Conv", "a", "heuristic", timings_ms={"a": 1.0, "b": 1.1}),
        _choice("n5", "h", {"h": 1.0, "a": 1.2}),  # only fp16 contests an fp16 winner
    ]
    assert contests(choices, precision) == {"n1": ["a", "c", "b"]}
    assert contests(choices, precision, limit=2) == {"n1": ["a", "c"]}
    assert contests(choices, precision, ratio=3.0)["n1"] == ["a", "c", "b"]
    assert contests(choices, precision, min_ms=0.005)["n2"] == ["a", "b"]
