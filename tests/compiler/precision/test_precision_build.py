"""build() and `farm build` with --precision fp16/bf16/int8/best, --strict, --layer-precision,
calibration (every calibrator, reader forms, cache), and the report of each layer's precision."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farm import zoo
from farm.compiler import reference
from farm.compiler.accuracy import compare_outputs, onnxruntime_outputs
from farm.compiler.builder import BuilderConfig, BuildError, build
from farm.compiler.engine.format import engine_to_bytes
from farm.compiler.kernels.cpu._vnni import VNNI
from farm.compiler.precision import fake_quantized_graph

RESNET = {"image_size": 32, "width": 4}
MLP = {"in_features": 48, "hidden": (64, 64), "num_classes": 10}


@pytest.fixture(scope="module")
def resnet() -> tuple[bytes, dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = zoo.build_model("resnet", **RESNET).SerializeToString()
    calib = zoo.sample_inputs("resnet", 32, seed=11, options=RESNET)
    val = zoo.sample_inputs("resnet", 8, seed=12, options=RESNET)
    return model, calib, val


def _config(**kwargs: object) -> BuilderConfig:
    return BuilderConfig(batch_range=(1, 8, 8), tuning_level=kwargs.pop("tuning_level", 0), **kwargs)  # type: ignore[arg-type]


def _tensor_bytes(engine: object) -> int:
    """Bytes of the engine file's tensors (the JSON manifest, large next to a toy model's weights,
    excluded; the zoo benchmarks report whole files)."""
    data = engine_to_bytes(engine)  # type: ignore[arg-type]
    (header,) = struct.unpack("<Q", data[:8])
    return len(data) - 8 - header


def _layer_precisions(engine: object) -> dict[str, str]:
    return {e["node"]: e["precision"] for e in engine.report["precision_layers"]["layers"]}  # type: ignore[attr-defined]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_float_engine_is_smaller_and_close_to_onnxruntime(resnet, precision) -> None:  # type: ignore[no-untyped-def]
    model, _, val = resnet
    fp32 = build(model, "cpu", _config())
    # Winograd has no reduced-storage twin (its filters are transformed), so on these 4-channel
    # layers it competes with the twins on timer noise: fp32 Winograd 0.0162 ms against the
    # fastest fp16 twin's 0.0181 under load, and the layer went fp32. Without it, every weighted
    # layer's fastest family has a twin, which the permission picks.
    engine = build(model, "cpu", _config(precision=precision, tuning_level=1, disabled_tactics=["cpu.conv.winograd*"]))
    layers = _layer_precisions(engine)
    weighted = [n.name for n in engine.graph.nodes
                if n.op_type in ("FusedConv", "Conv", "FusedGemm") and engine.graph.values[n.input(1)].const.size >= 64]  # fmt: skip
    assert weighted and all(layers[n] == precision for n in weighted), layers
    want = onnxruntime_outputs(model, val)
    (acc,) = compare_outputs(engine.run(val), want)
    assert 0 < acc.rel_l2 <= (1e-3 if precision == "fp16" else 1e-2)
    assert _tensor_bytes(engine) < 0.55 * _tensor_bytes(fp32)
    notes = " ".join(engine.report["precision_layers"]["notes"])
    assert "no fast FP16 arithmetic" in notes


def test_strict_int8_engine_equals_the_fake_quant_emulation_of_the_whole_chain(resnet) -> None:  # type: ignore[no-untyped-def]
    model, calib, val = resnet
    engine = build(
        model, "cpu", _config(precision="int8", strict=True, calibration=calib, calibrator="minmax")
    )
    layers = _layer_precisions(engine)
    int8 = [n for n in engine.graph.nodes if layers[n.name] == "int8"]
    assert {n.op_type for n in int8} >= {"FusedConv", "FusedGemm"}
    convs = [n for n in engine.graph.nodes if n.op_type in ("FusedConv", "Conv")]
    assert all(layers[n.name] == "int8" for n in convs)
    pool = next(e for e in engine.report["precision_layers"]["layers"] if e["op_type"] == "MaxPool")
    assert pool["precision"] == "fp32" and "no int8 tactic for MaxPool" in pool["reason"]
    # requantization chain: every INT8 layer quantizes the previous layer's output again
    emulated = reference.run(fake_quantized_graph(engine.graph), val)
    got = engine.run(val)
    (chain,) = compare_outputs(got, emulated)
    assert chain.rel_l2 < 2e-3 and chain.cosine > 0.99999
    (vs_fp32,) = compare_outputs(got, onnxruntime_outputs(model, val))
    assert vs_fp32.rel_l2 > 1e-3  # really quantized
    assert vs_fp32.cosine > 0.99
    fp32 = build(model, "cpu", _config())
    assert _tensor_bytes(engine) <= 0.30 * _tensor_bytes(fp32)


def test_permission_lets_the_tuner_keep_fp32_and_says_why(resnet) -> None:  # type: ignore[no-untyped-def]
    model, calib, _ = resnet
    engine = build(model, "cpu", _config(precision="int8", calibration=calib, tuning_level=1))
    for entry in engine.report["precision_layers"]["layers"]:
        if entry["op_type"] in ("FusedConv", "FusedGemm"):
            assert "fastest of int8/fp32" in entry["reason"]
            assert "int8" in entry["reason"] and "ms" in entry["reason"]
    # the note on INT8 speed is the one for this CPU
    notes = " ".join(engine.report["precision_layers"]["notes"])
    assert ("AVX-512 VNNI register tiles" in notes) == VNNI
    assert ("has no AVX-512 VNNI" in notes) == (not VNNI)


def test_layer_precision_globs_pin_layers(resnet) -> None:  # type: ignore[no-untyped-def]
    model, calib, _ = resnet
    config = _config(
        precision="int8", strict=True, calibration=calib, layer_precision=["/layer1/*=fp32", "/fc*=fp16"]
    )
    engine = build(model, "cpu", config)
    for entry in engine.report["precision_layers"]["layers"]:
        if entry["node"].startswith("/layer1/") and entry["op_type"] in ("FusedConv", "Conv"):
            assert entry["precision"] == "fp32" and "--layer-precision /layer1/*=fp32" in entry["reason"]
        elif entry["node"].startswith("/fc"):
            assert entry["precision"] == "fp16"
        elif entry["op_type"] == "FusedConv":
            assert entry["precision"] == "int8" and entry["reason"] == "strict int8"


def test_int8_without_scales_is_a_clear_error(resnet) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = resnet
    with pytest.raises(BuildError, match="calibration data"):
        build(model, "cpu", _config(precision="int8", strict=True))
    with pytest.raises(BuildError, match="not supported"):
        build(model, "cpu", _config(precision="int4"))
    engine = build(model, "cpu", _config(precision="int8"))  # permission without data: FP32
    assert set(_layer_precisions(engine).values()) == {"fp32"}


@pytest.mark.parametrize("calibrator", ["minmax", "percentile", "entropy", "mse"])
def test_every_calibrator_and_reader_form_builds_and_caches(tmp_path: Path, calibrator: str) -> None:
    model = zoo.build_model("mlp", **MLP).SerializeToString()
    samples = zoo.sample_inputs("mlp", 64, seed=3, options=MLP)
    val = zoo.sample_inputs("mlp", 8, seed=4, options=MLP)
    npz = tmp_path / "calib.npz"
    np.savez(npz, **samples)
    cache = tmp_path / "calib.json"
    iterator = ({k: v[i : i + 16] for k, v in samples.items()} for i in range(0, 64, 16))
    engines = [
        build(
            model,
            "cpu",
            _config(
                precision="int8",
                strict=True,
                calibration=source,
                calibrator=calibrator,
                calibration_cache=cache_path,
            ),
        )  # fmt: skip
        for source, cache_path in ((npz, cache), (iterator, None), (None, cache))
    ]
    from_npz, from_iterator, from_cache = (e.report["precision_layers"]["calibration"] for e in engines)
    assert from_npz["samples"] == 64 and not from_npz["from_cache"] and cache.exists()
    assert from_iterator["samples"] == 64 and not from_iterator["from_cache"]
    assert from_cache["from_cache"] and from_cache["calibrator"] == calibrator
    outs = [e.run(val) for e in engines]
    (name,) = outs[0]
    np.testing.assert_array_equal(outs[0][name], outs[2][name])  # the cache gives the very same scales
    # the same samples in other batches: histogram ranges grow differently, so the thresholds of
    # the histogram calibrators may move a little
    (same_data,) = compare_outputs(outs[1], outs[0])
    assert same_data.cosine > 0.999
    (acc,) = compare_outputs(outs[0], onnxruntime_outputs(model, val))
    assert acc.cosine > 0.999
    assert set(_layer_precisions(engines[0]).values()) >= {"int8"}


def test_farm_build_cli_precision_flags_and_inspect(tmp_path: Path, resnet) -> None:  # type: ignore[no-untyped-def]
    from farm.cli import main

    model, calib, val = resnet
    onnx_path = tmp_path / "resnet.onnx"
    onnx_path.write_bytes(model)
    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / "resnet-int8.engine"
    runner = CliRunner(env={"COLUMNS": "250"})
    args = ["build", str(onnx_path), "--batch-range", "1:8:8", "--tuning-level", "0", "--precision", "int8",
            "--strict", "--calib", str(tmp_path / "calib.npz"), "--calibrator", "percentile",
            "--layer-precision", "/conv1/*=fp32", "-o", str(out)]  # fmt: skip
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (
        "Layer precisions" in result.output
        and "INT8 calibration: percentile over 32 samples" in result.output
    )
    inspected = runner.invoke(main, ["inspect", str(out)], catch_exceptions=False)
    assert inspected.exit_code == 0, inspected.output
    assert "strict int8" in inspected.output and "--layer-precision" in inspected.output
    assert "int8" in inspected.output and "precision: requested int8 (strict)" in inspected.output


def test_reduced_engines_survive_save_and_load(tmp_path: Path) -> None:
    from farm.compiler.engine import Engine

    model = zoo.build_model("mlp", **MLP).SerializeToString()
    calib = zoo.sample_inputs("mlp", 32, seed=5, options=MLP)
    val = zoo.sample_inputs("mlp", 8, seed=6, options=MLP)
    for precision in ("best", "bf16"):
        engine = build(model, "cpu", _config(precision=precision, calibration=calib, tuning_level=1))
        path = tmp_path / f"mlp-{precision}.engine"
        engine.save(path)
        loaded = Engine.load(path)
        (name,) = engine.outputs and [b.name for b in engine.outputs]
        np.testing.assert_array_equal(loaded.run(val)[name], engine.run(val)[name])
        precisions = {n.precision for n in loaded.graph.nodes if n.op_type == "FusedGemm"}
        assert precisions <= ({"int8", "fp16", "fp32"} if precision == "best" else {"bf16"})
        assert precisions != {"fp32"}


def test_int8_bert_with_a_symbolic_sequence_length() -> None:
    options = {"num_layers": 1, "vocab_size": 100}
    model = zoo.build_model("bert", **options).SerializeToString()
    calib = zoo.sample_inputs("bert", 16, seed=1, options=options, seq=16)
    val = zoo.sample_inputs("bert", 4, seed=2, options=options, seq=16)
    config = _config(precision="int8", strict=True, calibration=calib, input_shapes={k: [4, 16] for k in val})
    engine = build(model, "cpu", config)
    layers = {e["node"]: e for e in engine.report["precision_layers"]["layers"]}
    gemms = [e for e in layers.values() if e["op_type"] == "FusedGemm"]
    assert gemms and all(e["precision"] == "int8" for e in gemms)
    assert all(
        e["precision"] == "fp32" for e in layers.values() if e["op_type"] in ("Attention", "LayerNorm")
    )
    # embedding tables: weight-only INT8 (per-row scales)
    gathers = [
        k for k in engine.kernels if k.node.op_type == "Gather" and k.tactic.name == "cpu.int8w.gather"
    ]
    assert len(gathers) >= 2 and all(k.prepared.tensors["table"].dtype == np.int8 for k in gathers)
    accuracy = {a.name: a for a in compare_outputs(engine.run(val), onnxruntime_outputs(model, val))}
    assert accuracy["pooler_output"].cosine > 0.99


def test_farm_build_cli_takes_calibrator_options(tmp_path: Path) -> None:
    """``--calibrator NAME:OPTIONS`` reaches the calibration (the report names the scheme); an
    unknown option is a usage error naming the valid ones, before anything is built."""
    from farm.cli import main

    model = zoo.build_model("mlp", **MLP).SerializeToString()
    onnx_path = tmp_path / "mlp.onnx"
    onnx_path.write_bytes(model)
    np.savez(tmp_path / "calib.npz", **zoo.sample_inputs("mlp", 16, seed=5, options=MLP))
    runner = CliRunner(env={"COLUMNS": "250"})
    base = ["build", str(onnx_path), "--tuning-level", "0", "--precision", "int8", "--strict",
            "--calib", str(tmp_path / "calib.npz")]  # fmt: skip
    bad = runner.invoke(main, [*base, "--calibrator", "entropy:lopsided", "-o", str(tmp_path / "x.engine")])
    assert bad.exit_code == 2 and "lopsided" in bad.output and "symmetric" in bad.output, bad.output
    assert not (tmp_path / "x.engine").exists()
    out = tmp_path / "mlp-int8.engine"
    good = runner.invoke(
        main, [*base, "--calibrator", "MinMax:symmetric", "-o", str(out)], catch_exceptions=False
    )
    assert good.exit_code == 0, good.output
    assert "minmax:symmetric" in good.output and out.exists()


@pytest.mark.skipif(not VNNI, reason="this CPU has no AVX-512 VNNI")
def test_vnni_int8_engine_loads_only_on_a_cpu_with_vnni(tmp_path: Path, resnet, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The heuristic choice on a VNNI host is the VNNI tiles; an engine naming them is refused,
    override or not, where the CPU lacks the instruction (LLVM could not compile the kernel)."""
    from farm.compiler.engine import Engine
    from farm.compiler.engine.format import DeviceMismatchError
    from farm.compiler.kernels.cpu.int8_conv_tiles import Int8ConvTiles

    model, calib, val = resnet
    engine = build(model, "cpu", _config(precision="int8", strict=True, calibration=calib, calibrator="minmax"))
    tactics = {row["tactic"] for row in engine.describe_layers()}
    assert {"cpu.int8.conv_tiles", "cpu.int8.gemm_vnni"} <= tactics, tactics
    path = tmp_path / "resnet-int8.engine"
    engine.save(path)
    (name,) = [b.name for b in engine.outputs]
    np.testing.assert_array_equal(Engine.load(path).run(val)[name], engine.run(val)[name])
    monkeypatch.setattr(Int8ConvTiles, "host_ok", False)
    for override in (False, True):
        with pytest.raises(DeviceMismatchError, match="cpu.int8.conv_tiles, whose kernels use instructions"):
            Engine.load(path, allow_device_mismatch=override)
