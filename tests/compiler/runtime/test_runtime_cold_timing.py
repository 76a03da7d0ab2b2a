"""Cold-cache timing: a model whose weights exceed the last-level cache is tuned with each
candidate's weights out of the cache and its activations in it, as the engine will run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_testgraphs import conv_mlp_graph

from farm.compiler.builder import BuilderConfig, build
from farm.compiler.tuner import JsonTimingCache, autotune, cold_cache
from farm.compiler.tuner.cold_cache import ColdCache, constant_bytes, last_level_cache_bytes


class CountingColdCache(ColdCache):
    """A real ColdCache that also records what it was asked to keep hot."""

    def __init__(self, last_level_bytes: int) -> None:
        super().__init__(last_level_bytes)
        self.prepared: list[list[tuple[int, ...]]] = []

    def prepare_timed_run(self, hot_inputs: list[np.ndarray | None]) -> None:  # type: ignore[override]
        self.prepared.append([tuple(x.shape) for x in hot_inputs if x is not None])
        super().prepare_timed_run(hot_inputs)


def test_this_machine_reports_its_last_level_cache() -> None:
    size = last_level_cache_bytes()
    assert size is None or size >= 256 << 10


def test_automatic_mode_times_cold_exactly_when_the_weights_exceed_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = conv_mlp_graph()
    weights = constant_bytes(graph)
    assert weights > 0
    monkeypatch.setattr(cold_cache, "last_level_cache_bytes", lambda: weights - 1)
    assert isinstance(ColdCache.for_graph(graph, "cpu"), ColdCache)
    assert ColdCache.for_graph(graph, "cpu", False) is None
    assert ColdCache.for_graph(graph, "cuda") is None
    monkeypatch.setattr(cold_cache, "last_level_cache_bytes", lambda: weights + 1)
    assert ColdCache.for_graph(graph, "cpu") is None
    assert isinstance(ColdCache.for_graph(graph, "cpu", True), ColdCache)
    monkeypatch.setattr(cold_cache, "last_level_cache_bytes", lambda: None)
    assert ColdCache.for_graph(graph, "cpu") is None  # unknown cache: time warm
    assert ColdCache.for_graph(graph, "cpu", True) is not None


def test_cache_sizes_read_the_sysfs_levels() -> None:
    """The data/unified caches of cpu0 by level, the instruction cache left out; the last level
    is the highest level's size."""
    sizes = cold_cache.cache_sizes()
    if not sizes:
        pytest.skip("no /sys/devices/system/cpu/cpu0/cache on this host")
    assert all(size > 0 for size in sizes.values())
    assert 1 in sizes
    assert last_level_cache_bytes() == sizes[max(sizes)]


def test_eviction_and_warming_read_real_buffers() -> None:
    """``evict`` reads 1.5x the cache it was given; ``warm`` reads contiguous arrays of any dtype
    and skips strided ones, empty ones and omitted inputs."""
    cold = ColdCache(1 << 20)
    cold.evict()
    assert cold._buffer is not None and cold._buffer.nbytes == int(1.5 * (1 << 20))
    ints = np.arange(1000, dtype=np.int64)
    floats = np.random.default_rng(0).standard_normal((33, 17)).astype(np.float32)
    cold.warm([ints, floats, floats.T, np.empty((0, 3), np.float32), None, np.asarray(np.float32(2))])
    total = cold_cache._read_lines(ints.view(np.uint8), 1)
    assert total == int(ints.view(np.uint8).sum())


def test_a_cold_build_prepares_every_timed_run_and_keeps_its_own_cache_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every timed run is preceded by an eviction and a read of the node's non-constant inputs
    only; the report says the build was tuned cold; cold timings do not answer a warm build's
    lookups (nor warm ones a cold build's), and a cold rebuild with its cache times nothing."""
    made: list[CountingColdCache] = []

    def counting(
        cls: type, graph: object, backend: str, mode: bool | None = None
    ) -> CountingColdCache | None:
        if mode is False:
            return None
        made.append(CountingColdCache(1 << 20))
        return made[-1]

    monkeypatch.setattr(ColdCache, "for_graph", classmethod(counting))
    timed_runs = []
    real_run_timed = autotune._Candidate.run_timed

    def counting_run_timed(self: autotune._Candidate, node: object) -> None:
        timed_runs.append(self.tactic.name)
        real_run_timed(self, node)  # type: ignore[arg-type]

    monkeypatch.setattr(autotune._Candidate, "run_timed", counting_run_timed)
    cache_path = tmp_path / "timing.json"
    graph = conv_mlp_graph()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    engine = build(graph, config=BuilderConfig(tuning_level=1, optimize=False, timing_cache=cache_path))
    assert engine.report["cache_state"]["state"] == "cold"
    assert engine.report["cache_state"]["last_level_cache_bytes"] == 1 << 20
    (cold,) = made
    assert len(cold.prepared) == len(timed_runs) > 0
    constants = {tuple(v.const.shape) for v in graph.values.values() if v.const is not None}
    activations = {tuple(v.shape) for v in graph.values.values() if v.const is None and v.shape}
    for shapes in cold.prepared:
        assert shapes, "every node of this graph reads an activation"
        assert all(s in activations for s in shapes)
        assert not any(s in constants and s not in activations for s in shapes)
    expected = engine.run(feeds)

    records = len(JsonTimingCache(cache_path))
    warm = build(
        graph,
        config=BuilderConfig(tuning_level=1, optimize=False, timing_cache=cache_path, cold_timing=False),
    )
    assert warm.report["cache_state"] == {"state": "warm"}
    assert warm.report["timing_cache"]["hits"] == 0  # the cold records answer no warm lookup
    assert len(JsonTimingCache(cache_path)) > records

    again = build(graph, config=BuilderConfig(tuning_level=1, optimize=False, timing_cache=cache_path))
    assert again.report["timing_cache"]["misses"] == 0
    assert len(made) == 2 and made[1].prepared == []
    for name, value in again.run(feeds).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)
