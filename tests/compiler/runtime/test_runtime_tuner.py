"""The autotuner: a wrong tactic is rejected, never chosen; a warm timing cache times nothing."""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_testgraphs import conv_mlp_graph

from farm.compiler import builder, reference
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.ir import Node
from farm.compiler.kernels import registry
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.tuner import JsonTimingCache, TuningError, autotune, compare_outputs


class WrongReluTactic(Tactic):
    """Deliberately wrong (adds 1) and very fast: the tuner must never pick it."""

    name = "cpu.test.wrong_relu"
    op_types = ("Relu",)
    priority = 1000

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        np.maximum(inputs[0], 0, out=outputs[0])
        outputs[0] += 1


class CrashingReluTactic(Tactic):
    name = "cpu.test.crashing_relu"
    op_types = ("Relu",)
    priority = 999

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        raise RuntimeError("boom")


@pytest.fixture
def bad_tactics() -> Iterator[None]:
    register_tactic(WrongReluTactic)
    register_tactic(CrashingReluTactic)
    yield
    for cls in (WrongReluTactic, CrashingReluTactic):
        registry._TACTICS.pop(cls.name, None)
        registry._BY_OP["Relu"] = [t for t in registry._BY_OP["Relu"] if t.name != cls.name]


def test_wrong_tactic_is_rejected_and_reported(bad_tactics: None) -> None:
    graph = conv_mlp_graph()
    engine = build(graph, config=BuilderConfig(tuning_level=1, optimize=False))
    relu = next(k for k in engine.kernels if k.node.op_type == "Relu")
    assert relu.tactic.name not in (WrongReluTactic.name, CrashingReluTactic.name)
    rejected = {(r["tactic"], r["reason"].split(":")[0]) for r in engine.report["rejected"]}
    assert (WrongReluTactic.name, "wrong output") in rejected
    assert (CrashingReluTactic.name, "raised RuntimeError") in rejected
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        engine.run({"x": x})["y"], reference.run(graph, {"x": x})["y"], rtol=1e-4, atol=1e-4
    )


def test_heuristic_level_takes_the_highest_priority_without_timing(bad_tactics: None) -> None:
    engine = build(conv_mlp_graph(), config=BuilderConfig(tuning_level=0, optimize=False))
    relu = next(k for k in engine.kernels if k.node.op_type == "Relu")
    assert relu.tactic.name == WrongReluTactic.name  # level 0 trusts priorities: nothing is run
    assert all(n["source"] == "heuristic" and not n["timings_ms"] for n in engine.report["nodes"])


def test_every_candidate_wrong_is_a_clear_error(bad_tactics: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real_candidates = registry.candidates

    def only_test_tactics_for_relu(node, graph, **kwargs):
        found = real_candidates(node, graph, **kwargs)
        return [t for t in found if t.name.startswith("cpu.test.")] if node.op_type == "Relu" else found

    monkeypatch.setattr(autotune, "candidates", only_test_tactics_for_relu)
    with pytest.raises(TuningError, match="every tactic for node .* was rejected"):
        build(conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False))


def test_warm_timing_cache_rebuild_times_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_path = tmp_path / "timing.json"
    cold = build(
        conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False, timing_cache=cache_path)
    )
    assert cold.report["timing_cache"]["misses"] > 0
    assert cold.report["timing_cache"]["hits"] == 0
    # one record per timed tactic, plus the whole-schedule thread choice and, where layers had
    # close calls, the in-engine decision
    in_engine_timed = cold.report["in_engine"]["source"] in ("timed", "kept")
    assert len(JsonTimingCache(cache_path)) == cold.report["timing_cache"]["misses"] + 1 + in_engine_timed
    assert cold.report["threads"]["source"] == "timed"

    calls = {"validated": 0, "timed": 0, "oracle": 0}
    real_validate, real_time, real_oracle = (
        autotune._validate_tactic,
        autotune._time_candidates,
        autotune.default_oracle,
    )

    def counting_validate(*args, **kwargs):
        calls["validated"] += 1
        return real_validate(*args, **kwargs)

    def counting_time(*args, **kwargs):
        calls["timed"] += 1
        return real_time(*args, **kwargs)

    def counting_oracle(*args, **kwargs):
        calls["oracle"] += 1
        return real_oracle(*args, **kwargs)

    monkeypatch.setattr(autotune, "_validate_tactic", counting_validate)
    monkeypatch.setattr(autotune, "_time_candidates", counting_time)
    monkeypatch.setattr(autotune, "default_oracle", counting_oracle)

    def no_schedule_timing(*args, **kwargs):
        raise AssertionError("a warm rebuild must not time the whole schedule again")

    monkeypatch.setattr(builder, "choose_thread_counts", no_schedule_timing)
    warm = build(
        conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False, timing_cache=str(cache_path))
    )
    assert calls == {"validated": 0, "timed": 0, "oracle": 0}
    assert warm.report["timing_cache"] == {"hits": cold.report["timing_cache"]["misses"], "misses": 0}
    assert [k.tactic.name for k in warm.kernels] == [k.tactic.name for k in cold.kernels]
    assert all(n["source"] in ("cache", "in-engine") for n in warm.report["nodes"])
    assert warm.report["in_engine"]["source"] in ("cache", "none")
    assert warm.report["threads"]["source"] == "cache"
    assert (warm.threads, warm.numba_threads) == (cold.threads, cold.numba_threads)


def test_compare_outputs_tolerances() -> None:
    want = np.linspace(-1, 1, 100, dtype=np.float32)
    assert compare_outputs(want + 1e-7, want) is None
    assert compare_outputs(want + 0.1, want) is not None
    assert compare_outputs(np.full_like(want, np.nan), want) is not None
    assert compare_outputs(np.arange(4), np.arange(4)) is None
    assert compare_outputs(np.arange(4), np.arange(1, 5)) == "4 of 4 elements differ"


def test_time_budget_falls_back_to_heuristic_choices() -> None:
    engine = build(conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False, time_budget_s=0.0))
    sources = [n["source"] for n in engine.report["nodes"]]
    # the budget is spent before the first node: every choice is the highest-priority candidate
    assert sources == ["heuristic"] * len(engine.kernels)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = reference.run(conv_mlp_graph(), {"x": x})["y"]
    np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)


def test_disabled_tactics_are_never_chosen() -> None:
    """``disabled_tactics`` (name globs) removes tactics from every node's candidates, at the
    heuristic level and when timing; a node left with no candidate is a clear error."""
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = reference.run(conv_mlp_graph(), {"x": x})["y"]
    for level in (0, 1):
        free = build(conv_mlp_graph(), config=BuilderConfig(tuning_level=level, optimize=False))
        conv = next(k.tactic.name for k in free.kernels if k.node.op_type == "Conv")
        engine = build(
            conv_mlp_graph(), config=BuilderConfig(tuning_level=level, optimize=False, disabled_tactics=[conv])
        )
        chosen = {k.node.op_type: k.tactic.name for k in engine.kernels}
        assert chosen["Conv"] != conv, chosen
        np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TuningError, match="no cpu tactic supports node"):
        build(conv_mlp_graph(), config=BuilderConfig(tuning_level=0, optimize=False, disabled_tactics=["cpu.*"]))


def test_choose_thread_counts_keeps_the_fastest_whole_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.compiler.tuner import threads as thread_tuner

    clock = {"now": 0.0}
    cost_ms = {(1, 4): 7.0, (1, 1): 5.0, (4, 1): 2.0}  # a fake schedule's cost per setting
    monkeypatch.setattr(thread_tuner.time, "perf_counter", lambda: clock["now"])

    def run(blas: int, numba: int) -> None:
        clock["now"] += cost_ms[(blas, numba)] / 1e3

    best, medians = thread_tuner.choose_thread_counts(run, 4, rounds=3)[:2]
    assert best == (4, 1)
    assert medians == {thread_tuner.thread_label(b, n): pytest.approx(ms) for (b, n), ms in cost_ms.items()}
    assert thread_tuner.parse_thread_label("blas=4,numba=1") == (4, 1)
    assert thread_tuner.thread_candidates(1) == [(1, 1)]


def test_thread_candidates_never_run_both_pools_with_several_threads() -> None:
    """numba's workers spin between kernels, so BLAS threads beside them would fight them for the
    cores; one pool (numba's, BLAS on the calling thread) comes first, the default."""
    from farm.compiler.tuner.threads import thread_candidates

    for cores in (2, 4, 16):
        candidates = thread_candidates(cores)
        assert candidates[0] == (1, cores)
        assert set(candidates) == {(1, cores), (cores, 1), (1, 1)}
        assert all(min(blas, numba) == 1 for blas, numba in candidates)


def test_choose_thread_counts_ignores_the_first_run_after_a_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-threaded setting's first run after a switch pays for waking its pool; serving runs
    one setting run after run, so only the runs after it count (round-robin run by run picked the
    single-threaded setting on the 2-core host where (2, 1) was 26 % faster)."""
    from farm.compiler.tuner import threads as thread_tuner

    clock = {"now": 0.0}
    steady_ms = {(1, 1): 5.0, (2, 1): 4.0, (1, 2): 7.0}
    wake_ms = {(1, 1): 0.0, (2, 1): 3.0, (1, 2): 3.0}  # extra, first run after a switch
    last = {"setting": None}
    monkeypatch.setattr(thread_tuner.time, "perf_counter", lambda: clock["now"])

    def run(blas: int, numba: int) -> None:
        setting = (blas, numba)
        clock["now"] += (steady_ms[setting] + (wake_ms[setting] if last["setting"] != setting else 0.0)) / 1e3
        last["setting"] = setting

    best, medians = thread_tuner.choose_thread_counts(run, 2, rounds=3)[:2]
    assert best == (2, 1)
    assert medians == {thread_tuner.thread_label(b, n): pytest.approx(ms) for (b, n), ms in steady_ms.items()}


def test_the_builders_thread_choice_runs_each_setting_it_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-schedule thread choice must apply every (BLAS, numba) setting it times (it once
    ran all four on the context's setting fixed at creation, so the choice was noise)."""
    from farm.compiler import builder as builder_module
    from farm.compiler.engine import runtime as runtime_module

    applied: list[tuple[int | None, int | None]] = []
    real = runtime_module.configure_threads

    def spy(threads: int | None = None, numba_threads: int | None = None) -> int:
        applied.append((threads, numba_threads))
        return real(threads, numba_threads)

    monkeypatch.setattr(runtime_module, "configure_threads", spy)
    monkeypatch.setattr(builder_module, "available_cores", lambda: 2)
    engine = build(conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False))
    assert engine.report["threads"]["source"] == "timed"
    assert {(1, 1), (2, 1), (1, 2)} <= set(applied)
    assert (2, 2) not in applied
    assert (engine.threads, engine.numba_threads) in {(1, 1), (2, 1), (1, 2)}


def test_tactics_are_timed_on_contiguous_inputs_as_in_the_engine() -> None:
    """Every tensor in an engine's arena is C-contiguous, so the tuner must time tactics on
    C-contiguous inputs too, whatever layout the reference returns (a depthwise conv timed on the
    reference Conv's strided output took 15x its engine time, and the tuner picked im2col)."""
    from farm.compiler.tuner.autotune import _LazyValues, default_oracle

    graph = conv_mlp_graph()
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}

    def strided_oracle(node: Node, inputs: list, graph_: object) -> list[np.ndarray]:
        return [np.asfortranarray(out) for out in default_oracle(node, inputs, graph_)]

    values = _LazyValues(graph, feeds, strided_oracle)
    plain = _LazyValues(graph, feeds, default_oracle)
    for node in graph.nodes:
        for name in node.outputs:
            value = values.get(name)
            assert value.flags.c_contiguous, name
            assert value.shape == plain.get(name).shape  # a 0-d value stays 0-d
            np.testing.assert_array_equal(value, plain.get(name))

    def scalar_oracle(node: Node, inputs: list, graph_: object) -> list[np.ndarray]:
        return [np.asarray(np.float32(1.5)) for _ in node.outputs]

    assert _LazyValues(graph, feeds, scalar_oracle).get(graph.nodes[0].outputs[0]).shape == ()


def test_threads_are_chosen_on_the_tuned_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tactics are tuned once, under one pool (BLAS 1 thread, numba every core), and the thread
    setting is then chosen by timing that tuned schedule (choosing it first, on the heuristic
    schedule, picked BLAS's pool for MobileNet, whose tuned tactics then ran 1.5x slower)."""
    from farm.compiler.kernels import threads as thread_module

    events: list[str] = []
    real_tune, real_choose = builder.tune, builder.choose_thread_counts

    def tune_spy(graph, feeds, settings, **kwargs):  # type: ignore[no-untyped-def]
        events.append(f"tune level {settings.level} under {thread_module._requested}")
        return real_tune(graph, feeds, settings, **kwargs)

    def choose_spy(run, cores, **kwargs):  # type: ignore[no-untyped-def]
        events.append("choose threads")
        return real_choose(run, cores, **kwargs)

    monkeypatch.setattr(builder, "tune", tune_spy)
    monkeypatch.setattr(builder, "choose_thread_counts", choose_spy)
    monkeypatch.setattr(builder, "available_cores", lambda: 2)
    monkeypatch.setattr(thread_module, "available_cores", lambda: 2)
    engine = build(conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False))
    cores = thread_module.available_cores()
    assert events == [f"tune level 1 under {(1, cores)}", "choose threads"]
    assert engine.report["threads"]["source"] == "timed"


def test_choose_thread_counts_waits_out_blas_spinning_after_a_blas_pool_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenBLAS's idle workers spin for ~0.1 s after a setting with BLAS threads and slow down
    whatever runs next on their cores; the turn after such a setting settles before it times."""
    from farm.compiler.tuner import threads as thread_tuner

    clock = {"now": 0.0, "blas_until": -1.0}
    steady_ms = {(1, 2): 4.0, (2, 1): 6.5, (1, 1): 6.2}
    monkeypatch.setattr(thread_tuner.time, "perf_counter", lambda: clock["now"])

    def run(blas: int, numba: int) -> None:
        cost = steady_ms[(blas, numba)]
        if blas == 1 and clock["now"] < clock["blas_until"]:
            cost += 60.0  # a core shared with OpenBLAS's spinning worker
        clock["now"] += cost / 1e3
        if blas > 1:
            clock["blas_until"] = clock["now"] + 0.1

    best, medians = thread_tuner.choose_thread_counts(run, 2, rounds=3)[:2]
    assert best == (1, 2)
    assert medians == {thread_tuner.thread_label(b, n): pytest.approx(ms) for (b, n), ms in steady_ms.items()}


def test_choose_thread_counts_times_a_fast_schedule_for_a_whole_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.1 ms schedule's pools take several runs to settle after a switch; one timed run per
    turn then measured the settling, and the MLP at batch 8 was built for one thread (0.15 ms)
    where two ran it in 0.08 ms. Each turn now times runs for ``turn_ms``."""
    from farm.compiler.tuner import threads as thread_tuner

    clock = {"now": 0.0}
    steady_ms = {(1, 2): 0.08, (2, 1): 0.20, (1, 1): 0.15}
    settling = {"setting": None, "runs": 0}
    monkeypatch.setattr(thread_tuner.time, "perf_counter", lambda: clock["now"])

    def run(blas: int, numba: int) -> None:
        setting = (blas, numba)
        if settling["setting"] != setting:
            settling["setting"], settling["runs"] = setting, 0
        settling["runs"] += 1
        # a multi-threaded setting's first three runs after a switch wait for its pool
        slow = max(blas, numba) > 1 and settling["runs"] <= 3
        clock["now"] += (steady_ms[setting] + (0.3 if slow else 0.0)) / 1e3

    best, medians = thread_tuner.choose_thread_counts(run, 2, rounds=3, settle_ms=0.0)[:2]
    assert best == (1, 2)
    assert medians == {thread_tuner.thread_label(b, n): pytest.approx(ms) for (b, n), ms in steady_ms.items()}
    # the old way (one timed run per turn) picks the single thread: the test's premise holds
    assert thread_tuner.choose_thread_counts(run, 2, rounds=3, settle_ms=0.0, turn_ms=0.0)[0] == (1, 1)


class _FakeClock:
    """A ``time`` stand-in for the tuner: ``perf_counter`` reads a clock the tactics advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _ScriptedTactic(Tactic):
    """Takes the milliseconds its script gives for each successive call (the last one after that),
    on the fake clock."""

    op_types = ("Relu",)

    def __init__(self, name: str, script_ms: list[float], clock: _FakeClock) -> None:
        self.name = name
        self.script_ms = script_ms
        self.clock = clock
        self.calls = 0

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        self.clock.now += self.script_ms[min(self.calls, len(self.script_ms) - 1)] / 1e3
        self.calls += 1


def test_early_stop_survives_one_slow_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate whose first timed run hit a stall (a descheduled worker waking up) is not
    dropped for it; one slow in both of its first two runs is."""
    clock = _FakeClock()
    monkeypatch.setattr(autotune, "time", clock)
    node = Node("Relu", ["x"], ["y"], name="relu")
    # calls per candidate with no warm-up: untimed, timed, untimed, timed, ...
    stalled = _ScriptedTactic("stalled_once", [1.0, 30.0, 1.0], clock)
    steady = _ScriptedTactic("steady", [3.0], clock)
    slow = _ScriptedTactic("slow", [12.0], clock)
    candidates = [autotune._Candidate(t, Prepared(), [], []) for t in (stalled, steady, slow)]
    records = {r.tactic: r for r in autotune._time_candidates(node, candidates, 0, 5, None)}
    assert records["stalled_once"].runs == 5
    assert records["stalled_once"].median_ms == pytest.approx(1.0)
    assert records["steady"].runs == 5
    assert records["slow"].runs == 2  # stopped after its first two timed runs


def test_tuning_reports_progress_between_tactics_so_a_cancel_stops_within_one(
    bad_tactics: None,
) -> None:
    """A cancelled job's progress callback raises; the tuner calls it before each tactic it prepares
    and each timing round, so a cancel waits for one tactic, not for a whole node's tuning."""
    calls: dict[str, int] = {}

    def count(stage: str, done: int, total: int, name: str) -> None:
        if stage == "tune":
            calls[name] = calls.get(name, 0) + 1

    build(conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False), progress=count)
    relu = next(n for n in conv_mlp_graph().nodes if n.op_type == "Relu").name
    # the Relu has at least the two test tactics and the real one: one call before the node, one
    # before each tactic, one before each timing round
    assert calls[relu] >= 1 + 3

    class Cancelled(Exception):
        pass

    seen: list[str] = []

    def cancel_inside_the_relu(stage: str, done: int, total: int, name: str) -> None:
        if stage == "tune" and name == relu:
            seen.append(name)
            if len(seen) == 2:  # the node has started: the cancel arrives during its tuning
                raise Cancelled

    with pytest.raises(Cancelled):
        build(
            conv_mlp_graph(),
            config=BuilderConfig(tuning_level=1, optimize=False),
            progress=cancel_inside_the_relu,
        )
    assert len(seen) == 2


def test_choose_thread_counts_survives_a_core_taken_away_for_most_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hypervisor that takes the second vCPU away for a while slows every multi-threaded turn
    in that while; judged by its median over all turns the two-thread setting lost to one
    thread (MobileNet b1 built for one thread, 7.1 ms instead of 4.8). Its best turn still
    shows what it runs at."""
    from farm.compiler.tuner import threads as thread_tuner

    clock = {"now": 0.0}
    steady_ms = {(1, 2): 4.8, (2, 1): 6.9, (1, 1): 6.9}
    stolen_until = 0.45  # seconds of fake time during which a second thread gets no core
    monkeypatch.setattr(thread_tuner.time, "perf_counter", lambda: clock["now"])

    two_thread_ms: list[float] = []  # each timed run of (1, 2)
    last = {"setting": (0, 0)}

    def run(blas: int, numba: int) -> None:
        setting = (blas, numba)
        slow = max(blas, numba) > 1 and clock["now"] < stolen_until
        ms = steady_ms[setting] * (3.0 if slow else 1.0)
        if setting == (1, 2) and last["setting"] == setting:  # not the untimed switch run
            two_thread_ms.append(ms)
        last["setting"] = setting
        clock["now"] += ms / 1e3

    best, times = thread_tuner.choose_thread_counts(run, 2, rounds=5, settle_ms=0.0)[:2]
    assert best == (1, 2)
    assert times[thread_tuner.thread_label(1, 2)] == pytest.approx(4.8)
    # the premise: the median over all its runs says 14.4 ms, slower than one thread's 6.9
    assert statistics.median(two_thread_ms) > steady_ms[(1, 1)]


def _contended_machine(monkeypatch: pytest.MonkeyPatch, busy_until_s: float) -> tuple[Any, Any]:
    """A fake clock and machine whose second core is half taken until ``busy_until_s``: a
    two-thread run then takes 1.5x a one-thread run (4.4 against 6.6 ms, MobileNet b1 on the
    2-core EPYC while another guest held its second vCPU); after it, two threads take 2.8 ms.
    Returns ``(run, availability)`` for :func:`choose_thread_counts`."""
    from farm.compiler.tuner import threads as thread_tuner

    clock = {"now": 0.0}
    quiet_ms = {(1, 2): 2.8, (2, 1): 4.4, (1, 1): 4.4}
    busy_ms = {(1, 2): 6.6, (2, 1): 6.6, (1, 1): 4.4}
    monkeypatch.setattr(thread_tuner.time, "perf_counter", lambda: clock["now"])

    def busy() -> bool:
        return clock["now"] < busy_until_s

    def run(blas: int, numba: int) -> None:
        clock["now"] += (busy_ms if busy() else quiet_ms)[(blas, numba)] / 1e3

    def availability() -> float:
        clock["now"] += 0.004  # the probe's own time
        return 0.47 if busy() else 0.98

    return run, availability


def test_choose_thread_counts_keeps_the_default_while_a_core_is_busy_throughout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A core lent elsewhere through every round (and the extra wait) makes one thread look
    fastest; that is the machine's state, not the schedule's speed, so the choice is the default
    setting and says it is contended (the builder then caches nothing)."""
    from farm.compiler.tuner import threads as thread_tuner

    run, availability = _contended_machine(monkeypatch, busy_until_s=1e9)
    # the premise: without the probe, one thread wins
    assert thread_tuner.choose_thread_counts(run, 2, rounds=5, settle_ms=0.0)[0] == (1, 1)
    choice = thread_tuner.choose_thread_counts(run, 2, rounds=5, settle_ms=0.0, availability=availability)
    assert choice.setting == (1, 2)
    assert choice.contended and choice.clean_rounds == 0
    assert choice.rounds > 5  # it waited past the planned rounds for rounds that count
    assert choice.timings_ms[thread_tuner.thread_label(1, 1)] == pytest.approx(4.4)


def test_choose_thread_counts_times_again_once_the_core_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy stretch longer than the planned rounds but shorter than the extra wait: the rounds
    after it count, and they pick two threads at their quiet speed."""
    from farm.compiler.tuner import threads as thread_tuner

    run, availability = _contended_machine(monkeypatch, busy_until_s=0.5)
    choice = thread_tuner.choose_thread_counts(run, 2, rounds=3, settle_ms=0.0, availability=availability)
    assert not choice.contended
    assert choice.clean_rounds == thread_tuner.MIN_CLEAN_ROUNDS < choice.rounds
    assert choice.setting == (1, 2)
    assert choice.timings_ms == {
        thread_tuner.thread_label(1, 2): pytest.approx(2.8),
        thread_tuner.thread_label(2, 1): pytest.approx(4.4),
        thread_tuner.thread_label(1, 1): pytest.approx(4.4),
    }


def test_the_builder_caches_no_thread_choice_made_while_a_core_was_busy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A contended thread timing builds the default setting and leaves no record, so a rebuild
    with the same cache times the setting again."""
    from farm.compiler import builder as builder_module
    from farm.compiler.tuner import threads as thread_tuner

    monkeypatch.setattr(builder_module, "available_cores", lambda: 2)
    monkeypatch.setattr(builder_module, "_round_availability", lambda cores: lambda: 0.4)
    monkeypatch.setattr(thread_tuner, "EXTRA_WAIT_S", 0.0)
    cache_path = tmp_path / "cache.json"
    config = BuilderConfig(tuning_level=1, optimize=False, timing_cache=str(cache_path))
    engine = build(conv_mlp_graph(), config=config)
    threads = engine.report["threads"]
    assert threads["source"] == "default (cores busy while timing)"
    assert threads["rounds_with_every_core"] == 0
    assert (engine.threads, engine.numba_threads) == (1, 2)

    monkeypatch.setattr(builder_module, "_round_availability", lambda cores: lambda: 1.0)
    again = build(conv_mlp_graph(), config=config)
    assert again.report["threads"]["source"] == "timed"
    assert again.report["threads"]["rounds_with_every_core"] == again.report["threads"]["rounds"]


def test_core_availability_reads_a_free_machine_as_available() -> None:
    """The probe: one core gives 1.0 by definition; with every core it reads a share in (0, 1]."""
    from farm.compiler.kernels.cpu._core_probe import core_availability

    assert core_availability(1) == 1.0
    share = core_availability(2, steps=20_000)
    assert 0.0 < share <= 1.0


def test_other_load_counts_a_busy_process_beside_this_one() -> None:
    """``OtherLoad`` sees another process keep a core busy (the probe alone can miss it), and
    this process's own work is not counted as someone else's."""
    import subprocess
    import sys
    import time as clock

    from farm.compiler.kernels.cpu._core_probe import OtherLoad

    others = OtherLoad()
    started = clock.perf_counter()
    while clock.perf_counter() - started < 0.3:  # this process busy: not others' load
        pass
    assert others.since_last() < 0.5
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 2: pass"])
    try:
        clock.sleep(0.3)
        others.since_last()
        clock.sleep(0.6)
        assert others.since_last() > 0.6
    finally:
        busy.kill()
        busy.wait()
