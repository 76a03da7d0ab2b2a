"""Pipeline step modules on their own: verdict statistics, validation data, timing cache, budgets."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from farm.compiler.tuner import TimingRecord
from farm.db import Database
from farm.worker.accuracy import budgets_for, embedding_table_sizes, generate_feeds
from farm.worker.bench import BenchmarkSettings
from farm.worker.regress import compare_latency, judge_accuracy, overall_outcome, undecided
from farm.worker.timing_cache import DatabaseTimingCache


def noisy(rng: np.random.Generator, median_ms: float, count: int) -> np.ndarray:
    """Latencies with multiplicative noise and occasional large stalls, like a shared host."""
    samples = median_ms * rng.lognormal(0.0, 0.1, count)
    stalls = rng.random(count) < 0.1
    samples[stalls] += rng.exponential(5 * median_ms, stalls.sum())
    return samples


@pytest.mark.parametrize("seed", range(20))
def test_identical_engines_are_never_judged_changed(seed: int) -> None:
    rng = np.random.default_rng(seed)
    verdict = compare_latency(list(noisy(rng, 1.0, 200)), list(noisy(rng, 1.0, 200)))
    assert verdict.outcome == "unchanged", verdict


def test_a_clear_slowdown_is_a_regression_and_a_speedup_an_improvement() -> None:
    rng = np.random.default_rng(1)
    base = noisy(rng, 1.0, 200)
    slower = compare_latency(list(base * 1.3), list(base))
    assert slower.outcome == "regressed" and slower.ci_low > 1 and 25 < slower.change_pct < 35
    faster = compare_latency(list(base * 0.7), list(base))
    assert faster.outcome == "improved" and faster.ci_high < 1


def test_a_change_below_the_threshold_is_unchanged_even_when_significant() -> None:
    base = np.random.default_rng(2).lognormal(0, 0.01, 300)
    verdict = compare_latency(list(base * 1.03), list(base), threshold_pct=5)
    assert verdict.ci_low > 1 and verdict.outcome == "unchanged" and not undecided(verdict)


def test_too_few_pairs_is_an_error() -> None:
    with pytest.raises(ValueError, match="paired samples"):
        compare_latency([1.0, 1.0], [1.0, 1.0])


def test_accuracy_judgement_and_overall_outcome() -> None:
    assert (
        judge_accuracy(passed_budget=False, failures=["x"], cosine=0.5, baseline_cosine=1.0).outcome
        == "failed"
    )
    assert (
        judge_accuracy(passed_budget=True, failures=[], cosine=0.99, baseline_cosine=0.9999).outcome
        == "regressed"
    )
    assert (
        judge_accuracy(passed_budget=True, failures=[], cosine=1.0, baseline_cosine=None).outcome
        == "no_baseline"
    )
    assert overall_outcome("improved", "unchanged") == "improved"
    assert overall_outcome("regressed", "improved") == "regressed"
    assert overall_outcome("unchanged", "failed") == "failed"
    assert overall_outcome(None, "no_baseline") == "no_baseline"


def test_generated_inputs_respect_embedding_tables_and_masks() -> None:
    table = numpy_helper.from_array(np.zeros((37, 4), np.float32), "embeddings")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.INT64),
            helper.make_node("Gather", ["embeddings", "ids"], ["embedded"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
            helper.make_node("Mul", ["embedded", "mask3"], ["out"]),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", 16]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 16]),
            helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 16, 4])],
        [table, numpy_helper.from_array(np.array([-1], np.int64), "axes")],
    )
    model = helper.make_model(graph)
    assert embedding_table_sizes(model) == {"input_ids": 37}
    feeds = generate_feeds(
        model,
        {"input_ids": [64, 16], "attention_mask": [64, 16], "pixels": [64, 3]},
        {"input_ids": "int32", "attention_mask": "int64", "pixels": "float32"},
        seed=0,
    )
    ids, mask, pixels = feeds["input_ids"], feeds["attention_mask"], feeds["pixels"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 37 and len(np.unique(ids)) > 20
    assert set(np.unique(mask)) == {0, 1} and (mask[:, 0] == 1).all()
    assert pixels.dtype == np.float32 and abs(pixels.mean()) < 0.3 and 0.7 < pixels.std() < 1.3


def test_budgets_default_per_precision_and_overridable() -> None:
    assert [str(b) for b in budgets_for("fp16")] == ["cosine>=0.999", "rel_l2<=0.05"]
    assert [str(b) for b in budgets_for("int8", {"int8": "cosine>=0.995"})] == ["cosine>=0.995"]
    with pytest.raises(ValueError):
        BenchmarkSettings.from_options({"warmup": 1})
    assert BenchmarkSettings.from_options({"min_iterations": "5"}).min_iterations == 5


def test_submission_options_reach_the_builder_config(db: Database) -> None:
    from farm.worker.build import builder_config

    options = {"tuning_level": 2, "disabled_passes": ["pad_fusion"], "disabled_tactics": ["cpu.conv.winograd*"]}
    config = builder_config(precision="fp32", batch=4, options=options, timing_cache=DatabaseTimingCache(db, "cpu"))
    assert config.tuning_level == 2 and config.batch_range == (1, 4, 4)
    assert tuple(config.disabled_passes) == ("pad_fusion",)
    assert tuple(config.disabled_tactics) == ("cpu.conv.winograd*",)
    assert config.in_engine_tuning  # on unless a submission turns it off
    for value, expected in ((None, True), (True, True), (False, False)):
        config = builder_config(
            precision="fp32", batch=1, options={"in_engine_tuning": value}, timing_cache=DatabaseTimingCache(db, "cpu")
        )
        assert config.in_engine_tuning is expected


def test_database_timing_cache_is_shared_per_profile(db: Database) -> None:
    first = DatabaseTimingCache(db, "cpu")
    assert first.get("k1") is None
    first.put("k1", TimingRecord("cpu.gemm", 0.5, True, runs=3))
    first.flush()
    other_worker = DatabaseTimingCache(db, "cpu")
    other_worker.put("k1", TimingRecord("cpu.gemm", 9.9, True))  # a racing worker: the first row stays
    other_worker.flush()
    record = DatabaseTimingCache(db, "cpu").get("k1")
    assert record is not None and record.median_ms == 0.5 and record.runs == 3
    assert DatabaseTimingCache(db, "cpu-avx2").get("k1") is None
    assert (first.hits, first.misses) == (0, 1)
