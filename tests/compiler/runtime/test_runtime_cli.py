"""farm build / run / bench / inspect / compare through click's CliRunner on a small zoo MLP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farm import zoo
from farm.cli import main as farm_main
from farm.compiler.accuracy import onnxruntime_outputs

MLP_OPTIONS = {"in_features": 32, "hidden": (64, 32), "num_classes": 10}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    onnx_path = folder / "mlp.onnx"
    onnx_path.write_bytes(zoo.build_model("mlp", **MLP_OPTIONS).SerializeToString())
    engine_path = folder / "mlp.engine"
    cache = folder / "timing.json"
    result = CliRunner().invoke(
        farm_main,
        ["build", str(onnx_path), "--profile", "cpu", "--batch-range", "1:2:4", "--timing-cache", str(cache),
         "--tuning-level", "1", "-o", str(engine_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "engine written to" in result.output and "Memory plan" in result.output
    return {"folder": folder, "onnx": onnx_path, "engine": engine_path, "cache": cache}


def test_build_writes_engine_and_timing_cache_then_rebuilds_warm(built: dict[str, Path]) -> None:
    assert built["engine"].stat().st_size > 0
    records = json.loads(built["cache"].read_text())["records"]
    assert records
    again = built["folder"] / "again.engine"
    result = CliRunner().invoke(
        farm_main, ["build", str(built["onnx"]), "--batch-range", "1:2:4", "--timing-cache", str(built["cache"]),
                    "-o", str(again)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # every tactic timing and the whole-schedule thread choice come from the cache
    assert f"{len(records) - 1} hits, 0 misses" in result.output
    assert "(cache)" in result.output


def test_build_cache_state_cold_times_tactics_with_weights_out_of_cache(built: dict[str, Path]) -> None:
    """``--cache-state cold`` tunes cold (the report and the summary line say so) under its own
    timing-cache keys: the warm build's records answer none of its lookups."""
    cold = built["folder"] / "cold.engine"
    result = CliRunner().invoke(
        farm_main, ["build", str(built["onnx"]), "--batch-range", "1:2:4", "--timing-cache", str(built["cache"]),
                    "--cache-state", "cold", "-o", str(cold)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tactics timed cold" in result.output
    assert " 0 hits," in result.output
    from farm.compiler.engine.runtime import Engine

    assert Engine.load(cold).report["cache_state"]["state"] == "cold"


def test_run_writes_outputs_matching_onnxruntime(built: dict[str, Path]) -> None:
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    np.savez(built["folder"] / "in.npz", input=x)
    out = built["folder"] / "out.npz"
    result = CliRunner().invoke(
        farm_main, ["run", str(built["engine"]), "--inputs", str(built["folder"] / "in.npz"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    got = np.load(out)["output"]
    want = onnxruntime_outputs(built["onnx"], {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_run_with_bad_inputs_is_a_clear_error(built: dict[str, Path]) -> None:
    np.savez(built["folder"] / "bad.npz", input=np.zeros((9, 32), np.float32))
    result = CliRunner().invoke(
        farm_main, ["run", str(built["engine"]), "--inputs", str(built["folder"] / "bad.npz"), "-o",
                    str(built["folder"] / "x.npz")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "outside the engine's range" in result.output


def test_bench_json_has_latency_statistics_and_layers(built: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        farm_main, ["bench", str(built["engine"]), "--batch", "4", "--warmup-ms", "10", "--duration-s", "0.05",
                    "--iterations", "5", "--profile-layers", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    latency = data["latency"]
    assert latency["batch"] == 4 and latency["iterations"] >= 5
    assert (
        latency["min_ms"]
        <= latency["median_ms"]
        <= latency["p90_ms"]
        <= latency["p99_ms"]
        <= latency["max_ms"]
    )
    assert len(latency["samples_ms"]) == latency["iterations"]
    assert latency["throughput_per_s"] > 0
    assert {row["op_type"] for row in data["layers"]} == {"FusedGemm"}


def test_bench_table(built: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        farm_main,
        ["bench", str(built["engine"]), "--warmup-ms", "5", "--duration-s", "0.02", "--iterations", "3"],
    )
    assert result.exit_code == 0, result.output
    assert "median" in result.output and "throughput" in result.output


def test_inspect_shows_layers_tactics_and_memory(built: dict[str, Path]) -> None:
    result = CliRunner().invoke(farm_main, ["inspect", str(built["engine"])])
    assert result.exit_code == 0, result.output
    for text in ("Bindings", "Layers (3)", "FusedGemm", "Memory plan", "fp32", "tuning level 1"):
        assert text in result.output


def test_compare_json_against_onnxruntime(built: dict[str, Path]) -> None:
    result = CliRunner().invoke(farm_main, ["compare", str(built["onnx"]), str(built["engine"]), "--json"])
    assert result.exit_code == 0, result.output
    (metrics,) = json.loads(result.output)["outputs"]
    assert metrics["name"] == "output" and metrics["rel_l2"] <= 1e-5 and metrics["cosine"] > 0.99999
    assert metrics["top1"] == 1.0


def test_inspect_rejects_a_non_engine(built: dict[str, Path]) -> None:
    result = CliRunner().invoke(farm_main, ["inspect", str(built["onnx"])])
    assert result.exit_code != 0
    assert "not an engine file" in result.output


def test_build_disable_tactic_and_pass(built: dict[str, Path]) -> None:
    """``--disable-tactic GLOB`` keeps every matching tactic out of the engine; ``--disable-pass``
    skips a pass (the MLP's Gemm + Relu stay two steps); an unknown pass or a glob that leaves a
    node no tactic is a clear error, not a traceback."""
    from farm.compiler.engine.runtime import Engine

    out = built["folder"] / "no_gemm_tactics.engine"
    result = CliRunner().invoke(
        farm_main, ["build", str(built["onnx"]), "--tuning-level", "0", "--disable-tactic", "cpu.gemm.*",
                    "--disable-tactic", "cpu.elementwise.*", "--disable-pass", "epilogue_fusion", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    engine = Engine.load(out)
    tactics = {k.tactic.name for k in engine.kernels}
    assert tactics and not any(t.startswith(("cpu.gemm.", "cpu.elementwise.")) for t in tactics)
    assert "Relu" in {k.node.op_type for k in engine.kernels}  # not fused into the GEMM
    x = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    (want,) = onnxruntime_outputs(built["onnx"].read_bytes(), {"input": x}).values()
    (got,) = engine.run({"input": x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    for args, message in (
        (["--disable-pass", "no_such_pass"], "no_such_pass"),
        (["--disable-tactic", "*"], "is disabled by ['*']"),
    ):
        result = CliRunner().invoke(farm_main, ["build", str(built["onnx"]), *args, "-o", str(out)])
        assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
        assert message in result.output and "Traceback" not in result.output


def test_build_without_in_engine_tuning(built: dict[str, Path]) -> None:
    """``--no-in-engine-tuning`` skips the in-engine stage (the report says so); by default it runs
    and the report names what it did."""
    from farm.compiler.engine.runtime import Engine

    for flag, allowed in ((["--no-in-engine-tuning"], {"off"}), ([], {"none", "timed", "kept", "cache"})):
        out = built["folder"] / f"in_engine_{bool(flag)}.engine"
        result = CliRunner().invoke(farm_main, ["build", str(built["onnx"]), *flag, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert Engine.load(out).report["in_engine"]["source"] in allowed
