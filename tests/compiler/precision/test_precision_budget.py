"""Accuracy-budget search: the builder keeps the fewest, most sensitive layers in FP32 so that a
budget the pure-INT8 engine misses is met."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farm import zoo
from farm.compiler.accuracy import compare_outputs, onnxruntime_outputs
from farm.compiler.builder import BuilderConfig, BuildError, build
from farm.compiler.precision import calibration as calibration_module
from farm.compiler.precision.budget import AccuracyBudget, BudgetError

RESNET = {"image_size": 32, "width": 4}


def test_budget_parsing() -> None:
    assert AccuracyBudget.parse("cosine>=0.999") == AccuracyBudget("cosine", ">=", 0.999)
    assert AccuracyBudget.parse(" rel_l2 <= 1e-2 ").met(0.005)
    assert not AccuracyBudget.parse("top1>=0.99").met(0.98)
    for bad in ("cosine<=0.9", "accuracy>=1", "cosine=0.9"):
        with pytest.raises(BudgetError):
            AccuracyBudget.parse(bad)


def test_budget_search_finds_a_mixed_engine_the_pure_int8_engine_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = zoo.build_model("resnet", **RESNET).SerializeToString()
    calib = zoo.sample_inputs("resnet", 32, seed=31, options=RESNET)
    val = zoo.sample_inputs("resnet", 8, seed=32, options=RESNET)
    base = {"batch_range": (1, 8, 8), "tuning_level": 0, "precision": "int8", "strict": True,
            "calibration": calib, "calibrator": "minmax"}  # fmt: skip
    pure = build(model, "cpu", BuilderConfig(**base))  # type: ignore[arg-type]
    want = onnxruntime_outputs(model, val)
    (pure_acc,) = compare_outputs(pure.run(val), want)
    # a budget four times tighter (in 1 - cosine) than what pure INT8 reaches
    threshold = 1.0 - (1.0 - pure_acc.cosine) / 4
    collected = []
    real_collect = calibration_module.collect_statistics

    def counting_collect(*args: object, **kwargs: object) -> object:
        collected.append(1)
        return real_collect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(calibration_module, "collect_statistics", counting_collect)
    engine = build(model, "cpu", BuilderConfig(**base, accuracy_budget=f"cosine>={threshold!r}", validation=val))  # type: ignore[arg-type]
    section = engine.report["accuracy_budget"]
    assert section["first_engine"] == pytest.approx(pure_acc.cosine, abs=1e-6)  # numpy reference vs ORT
    assert section["met"] and section["final"] >= threshold
    (acc,) = compare_outputs(engine.run(val), want)
    assert acc.cosine >= threshold
    layers = {e["node"]: e["precision"] for e in engine.report["precision_layers"]["layers"]}
    kept = section["kept_fp32"]
    int8_left = [n for n, p in layers.items() if p == "int8"]
    assert kept and int8_left, "mixed precision: some layers kept in FP32, the rest still INT8"
    assert all(layers[n] == "fp32" for n in kept)
    # sensitivity table: every INT8 layer of the first engine, most sensitive (lowest cosine) first
    table = section["sensitivity"]
    assert len(table) == len(kept) + len(int8_left)
    cosines = [row["cosine"] for row in table]
    assert cosines == sorted(cosines)
    assert kept == [row["node"] for row in table[: len(kept)]]
    # fewest: one layer fewer in FP32 missed the budget (a probe recorded it)
    probes = {p["kept_fp32"]: p["met"] for p in section["probes"]}
    assert probes.get(len(kept) - 1, False) is False or len(kept) - 1 == 0
    # the probes and the final build reuse the first build's calibration: the data ran once, and
    # the report says the engine was calibrated on its samples, not read from a user's cache
    assert len(section["probes"]) >= 2 and len(collected) == 1, (len(section["probes"]), len(collected))
    calibration = engine.report["precision_layers"]["calibration"]
    assert calibration["from_cache"] is False and calibration["samples"] == 32
    # tuning level 0 runs no in-engine tuning: the winning probe is the engine
    assert section["final_build"] == "probe"


def test_budget_needs_validation_data_and_cli_accepts_it(tmp_path: Path) -> None:
    model = zoo.build_model("mlp", in_features=32, hidden=(32,), num_classes=4).SerializeToString()
    with pytest.raises((BudgetError, BuildError), match="validation data"):
        build(model, "cpu", BuilderConfig(precision="fp16", accuracy_budget="cosine>=0.9", tuning_level=0))
    from farm.cli import main

    path = tmp_path / "mlp.onnx"
    path.write_bytes(model)
    feeds = zoo.sample_inputs("mlp", 8, seed=1, options={"in_features": 32})
    np.savez(tmp_path / "val.npz", **feeds)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        main,
        ["build", str(path), "--precision", "fp16", "--tuning-level", "0", "--accuracy-budget", "rel_l2<=0.01",
         "--val", str(tmp_path / "val.npz"), "-o", str(tmp_path / "mlp.engine")],  # fmt: skip
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "accuracy budget rel_l2<=0.01: first engine" in result.output


def test_task_accuracy_and_top5_with_labels() -> None:
    from farm.compiler.accuracy import compare_outputs, task_accuracy

    rng = np.random.default_rng(5)
    want = rng.standard_normal((50, 12)).astype(np.float32)
    got = want + 0.3 * rng.standard_normal((50, 12)).astype(np.float32)
    labels = np.argmax(want, axis=1)
    labels[:10] = (labels[:10] + 1) % 12  # 10 rows whose label the model gets wrong
    assert task_accuracy(want, labels) == pytest.approx(0.8)
    assert task_accuracy(want, labels, k=12) == 1.0
    (acc,) = compare_outputs({"y": got}, {"y": want}, labels={"y": labels})
    expected_top1 = float(np.mean(np.argmax(got, axis=1) == labels))
    assert acc.task_top1 == pytest.approx(expected_top1) and acc.task_top5 >= acc.task_top1
    assert acc.top5 >= acc.top1 and acc.to_json()["task_top1"] == acc.task_top1


def test_probes_skip_in_engine_tuning_and_the_winner_is_rebuilt_with_it() -> None:
    """Probe builds run without the in-engine stage; when the first build ran it, the winning
    layer set is built once more with it and that engine is returned (if it meets the budget)."""
    from farm.compiler.precision.budget import build_with_budget

    model = zoo.build_model("mlp", in_features=32, hidden=(32, 32), num_classes=4).SerializeToString()
    val = zoo.sample_inputs("mlp", 16, seed=3, options={"in_features": 32})
    config = BuilderConfig(precision="fp16", strict=True, tuning_level=0, accuracy_budget="rel_l2<=1e-5", validation=val)
    calls: list[tuple[bool, object]] = []

    def recording_build(model: bytes, profile: str, cfg: BuilderConfig, progress: object = None) -> object:
        engine = build(model, profile, cfg, progress=progress)
        if not calls:  # as if the first build's in-engine stage had run and found contests
            engine.report["in_engine"] = dict(engine.report["in_engine"], source="timed")
        calls.append((cfg.in_engine_tuning, engine))
        return engine

    engine = build_with_budget(model, "cpu", config, recording_build)
    section = engine.report["accuracy_budget"]
    assert section["first_engine"] > 1e-5 and section["met"], section  # FP16 alone misses rel_l2 <= 1e-5
    flags = [flag for flag, _ in calls]
    assert flags[0] is True and flags[-1] is True, flags
    assert flags[1:-1] and not any(flags[1:-1]), flags  # every probe without the stage
    assert len(section["probes"]) == len(flags) - 2
    assert section["final_build"] == "rebuilt with in-engine tuning"
    assert engine is calls[-1][1]


def test_a_first_engine_that_meets_the_budget_is_the_engine() -> None:
    model = zoo.build_model("mlp", in_features=32, hidden=(32,), num_classes=4).SerializeToString()
    val = zoo.sample_inputs("mlp", 8, seed=4, options={"in_features": 32})
    engine = build(
        model, "cpu", BuilderConfig(precision="fp16", tuning_level=0, accuracy_budget="rel_l2<=0.05", validation=val)
    )
    section = engine.report["accuracy_budget"]
    assert section["met"] and section["first_engine"] <= 0.05
    assert section["probes"] == [] and section["kept_fp32"] == [] and section["final_build"] == "first engine"
