"""Calibration schemes: uint8 activations (zero point 0 for tensors never negative, a zero point
for the others), TensorRT's symmetric int8 as an option, bias correction, and the calibrator spec
in the calibration cache. Oracles: the FP32 reference (the calibrated ranges, the error bias
correction removes) and the fake-quant emulation (the kernels with uint8 inputs and corrected
biases). Fresh random inputs, never zeros."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from farm import zoo
from farm.compiler import reference
from farm.compiler.accuracy import compare_arrays, compare_outputs
from farm.compiler.builder import BuilderConfig, BuildError, build
from farm.compiler.ir import Graph, Node
from farm.compiler.kernels import get_tactic
from farm.compiler.precision import PrecisionPolicy, fake_quantized_graph, plan_precisions
from farm.compiler.precision.calibration import CalibrationError, CalibratorSpec, read_cache
from farm.compiler.precision.quantize import (
    ActivationQuant,
    activation_quant,
    bias_correction,
    fake_quantize_weight,
    layer_bias_correction,
    set_activation_quant,
    set_bias_correction,
)

MLP = {"in_features": 48, "hidden": (64, 64), "num_classes": 10}


def _relu_then_layers(rng: np.random.Generator, k: int = 12) -> Graph:
    """x -> Relu -> FusedGemm (never-negative input) and x -> FusedGemm (signed input)."""
    g = Graph("two_layers")
    g.add_input("x", "float32", ("batch", k))
    g.add_const("w1", rng.standard_normal((k, 6)).astype(np.float32))
    g.add_const("b1", rng.standard_normal(6).astype(np.float32))
    g.add_const("w2", rng.standard_normal((k, 5)).astype(np.float32))
    g.add_const("b2", rng.standard_normal(5).astype(np.float32))
    g.add_node("Relu", ["x"], ["h"], {}, name="relu")
    g.add_value("h", "float32", ("batch", k))
    gemm = {"transB": 0, "activation": "", "alpha": 0.0, "beta": 0.0}
    g.add_node("FusedGemm", ["h", "w1", "b1"], ["y1"], dict(gemm), name="on_relu")
    g.add_node("FusedGemm", ["x", "w2", "b2"], ["y2"], dict(gemm), name="on_signed")
    g.add_value("y1", "float32", ("batch", 6))
    g.add_value("y2", "float32", ("batch", 5))
    g.outputs = ["y1", "y2"]
    return g


def _plan(g: Graph, calib: dict[str, np.ndarray], calibrator: str) -> dict[str, Node]:
    plan_precisions(g, PrecisionPolicy("int8", strict=True), calibration=calib, calibrator=calibrator)
    return {n.name: n for n in g.nodes}


def test_never_negative_input_gets_uint8_with_zero_point_0_and_signed_input_a_zero_point() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 12)) + 0.7).astype(np.float32)  # skewed: more positive than negative
    nodes = _plan(_relu_then_layers(rng), {"x": x}, "minmax")
    on_relu, on_signed = activation_quant(nodes["on_relu"]), activation_quant(nodes["on_signed"])
    assert on_relu is not None and on_signed is not None
    # after the ReLU: all 256 codes for [0, max], none wasted on a sign
    assert (on_relu.dtype, on_relu.zero_point) == ("uint8", 0)
    assert on_relu.scale == pytest.approx(float(np.maximum(x, 0).max()) / 255, rel=1e-6)
    # signed: [min, max] over 256 codes, 0.0 exactly representable by the zero point
    assert on_signed.dtype == "uint8"
    assert on_signed.scale == pytest.approx((float(x.max()) - float(x.min())) / 255, rel=1e-5)
    assert on_signed.zero_point == round(-float(x.min()) / on_signed.scale)
    assert 0 < on_signed.zero_point < 128  # the skewed tensor gets more codes for its positive side


def test_symmetric_option_is_tensorrts_int8() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 12)).astype(np.float32)
    nodes = _plan(_relu_then_layers(rng), {"x": x}, "minmax:symmetric")
    for name, amax in (("on_relu", np.maximum(x, 0).max()), ("on_signed", np.abs(x).max())):
        quant = activation_quant(nodes[name])
        assert quant is not None and (quant.dtype, quant.zero_point) == ("int8", 0)
        assert quant.scale == pytest.approx(float(amax) / 127, rel=1e-6)


def test_relu6_output_uses_the_whole_uint8_range_with_every_calibrator() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((256, 12)) * 3).astype(np.float32)
    for calibrator in ("minmax", "percentile", "entropy", "mse"):
        nodes = _plan(_relu_then_layers(rng), {"x": x}, calibrator)
        quant = activation_quant(nodes["on_relu"])
        assert quant is not None and quant.dtype == "uint8" and quant.zero_point == 0
        # the threshold stays inside the data and does not clip it to a fraction of its range
        assert 0.25 * x.max() / 255 < quant.scale <= x.max() / 255 * (1 + 1e-6), calibrator


def test_from_range_keeps_zero_exact_and_widens_to_contain_it() -> None:
    quant = ActivationQuant.from_range(0.5, 4.0)  # a range above 0 still starts at 0
    assert (quant.dtype, quant.zero_point, quant.scale) == ("uint8", 0, pytest.approx(4.0 / 255))
    quant = ActivationQuant.from_range(-1.0, 3.0)
    assert quant.zero_point == round(1.0 / (4.0 / 255))
    x = np.array([0.0, -1.0, 3.0, 0.7], np.float32)
    from farm.compiler.precision.quantize import fake_quantize_activation

    fq = fake_quantize_activation(x, quant)
    assert fq[0] == 0.0 and np.max(np.abs(fq - x)) <= quant.scale / 2 + 1e-7


def _bias_correction_graph(rng: np.random.Generator, op: str) -> tuple[Graph, Node, dict[str, np.ndarray]]:
    """A layer on a never-negative input with a small fan-in (large weight rounding error)."""
    g = Graph("corrected")
    if op == "MatMul":
        g.add_input("x", "float32", (4, 5, 6))
        g.add_const("w", rng.standard_normal((6, 7)).astype(np.float32))
        node = g.add_node("MatMul", ["x", "w"], ["y"], {}, name="layer")
        g.add_value("y", "float32", (4, 5, 7))
        x = np.abs(rng.standard_normal((4, 5, 6))).astype(np.float32) + 0.5
    else:
        g.add_input("x", "float32", (2, 3, 7, 7))
        g.add_const("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
        attrs = {"pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1], "group": 1, "kernel_shape": [3, 3],
                 "activation": "Relu", "alpha": 0.0, "beta": 0.0}  # fmt: skip
        node = g.add_node("FusedConv", ["x", "w"], ["y"], attrs, name="layer")  # no bias input at all
        g.add_value("y", "float32", (2, 8, 7, 7))
        x = np.abs(rng.standard_normal((2, 3, 7, 7))).astype(np.float32) + 0.5
    g.outputs = ["y"]
    return g, node, {"x": x}


@pytest.mark.parametrize("op", ["MatMul", "FusedConv"])
@pytest.mark.parametrize("zero_point", [0, 37])
def test_int8_kernels_on_uint8_inputs_with_bias_correction_equal_the_emulation(
    op: str, zero_point: int
) -> None:
    rng = np.random.default_rng(11 + zero_point)
    g, node, feeds = _bias_correction_graph(rng, op)
    set_activation_quant(node, ActivationQuant(4.0 / 255, zero_point, "uint8"))
    axis = 1 if op == "FusedConv" else -1
    mean = np.moveaxis(feeds["x"], axis, 0).reshape(feeds["x"].shape[axis], -1).mean(axis=1)
    correction = bias_correction(node, g.const("w"), mean)
    assert correction is not None and np.any(correction != 0)
    set_bias_correction(node, correction)
    want = reference.run(fake_quantized_graph(g), feeds)["y"]
    tactic = get_tactic("cpu.int8.gemm" if op == "MatMul" else "cpu.int8.conv_im2col")
    assert tactic.supports(node, g)
    prepared = tactic.prepare(node, g)
    got = np.full(want.shape, np.nan, np.float32)
    tactic.run(node, [feeds["x"], None, None], [got], prepared)
    step = 4.0 / 255 * float(np.max(np.abs(g.const("w"))))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    assert np.max(np.abs(got - want)) < 4 * step
    # the correction is really in both: without it the emulation moves by about its size
    node.attrs.pop("int8_bias_correction")
    plain = reference.run(fake_quantized_graph(g), feeds)["y"]
    assert np.max(np.abs(plain - want)) > 0.1 * np.max(np.abs(correction))


def test_bias_correction_is_the_expected_weight_error() -> None:
    rng = np.random.default_rng(2)
    g, node, feeds = _bias_correction_graph(rng, "MatMul")
    set_activation_quant(node, ActivationQuant(0.01, 0, "uint8"))
    x = feeds["x"].reshape(-1, 6).astype(np.float64)
    w = g.const("w").astype(np.float64)
    correction = bias_correction(node, g.const("w"), x.mean(axis=0))
    assert correction is not None
    expected = (x @ w).mean(axis=0) - (x @ fake_quantize_weight(node, g.const("w")).astype(np.float64)).mean(
        axis=0
    )
    np.testing.assert_allclose(correction, expected, rtol=1e-4, atol=1e-7)
    assert bias_correction(node, g.const("w"), np.ones(5)) is None  # wrong channel count: none


def test_bias_correction_reduces_the_error_of_a_small_model() -> None:
    # the zoo MLP: hidden layers read ReLU outputs (mean > 0), so weight rounding biases them
    model = zoo.build_model("mlp", **MLP).SerializeToString()
    calib = zoo.sample_inputs("mlp", 256, seed=21, options=MLP)
    val = zoo.sample_inputs("mlp", 256, seed=22, options=MLP)
    want = build(model, "cpu", BuilderConfig(batch_range=(1, 64, 256))).run(val)
    errors = {}
    for spec in ("minmax", "minmax:no-bias-correction"):
        config = BuilderConfig(batch_range=(1, 64, 256), precision="int8", strict=True, calibration=calib,
                               calibrator=spec)  # fmt: skip
        engine = build(model, "cpu", config)
        layers = [n for n in engine.graph.nodes if layer_bias_correction(n) is not None]
        assert bool(layers) == (spec == "minmax")
        assert engine.report["precision_layers"]["calibration"]["bias_corrected_layers"] == len(layers)
        got = engine.run(val)
        (name,) = got
        mean_error = np.abs((got[name] - want[name]).mean(axis=0))  # the bias it leaves per output
        (metric,) = compare_outputs(got, want)
        errors[spec] = (float(np.linalg.norm(mean_error)), metric.rel_l2)
    corrected, plain = errors["minmax"], errors["minmax:no-bias-correction"]
    assert corrected[0] < 0.7 * plain[0], errors
    assert corrected[1] < plain[1], errors


def test_calibrator_spec_parses_and_rejects_unknown_options() -> None:
    assert str(CalibratorSpec.parse("Entropy")) == "entropy"
    spec = CalibratorSpec.parse("mse: symmetric, no-bias-correction")
    assert (spec.name, spec.symmetric, spec.bias_correction) == ("mse", True, False)
    assert str(spec) == "mse:symmetric,no-bias-correction"
    with pytest.raises(CalibrationError, match="unknown calibrator option"):
        CalibratorSpec.parse("entropy:asym")
    with pytest.raises(CalibrationError, match="unknown calibrator"):
        CalibratorSpec.parse("kl")


def test_calibrator_options_round_trip_through_the_cache(tmp_path: Path) -> None:
    model = zoo.build_model("mlp", **MLP).SerializeToString()
    calib = zoo.sample_inputs("mlp", 64, seed=31, options=MLP)
    val = zoo.sample_inputs("mlp", 8, seed=32, options=MLP)
    cache = tmp_path / "calib.json"

    def config(spec: str, data: object) -> BuilderConfig:
        # tuning level 0: the heuristic tactic choice, the same in both builds (timed choices may
        # differ between INT8 GEMM tactics whose dequantization rounds one ulp apart)
        return BuilderConfig(batch_range=(1, 8, 8), precision="int8", strict=True, calibration=data,
                             calibrator=spec, calibration_cache=cache, tuning_level=0)  # fmt: skip

    first = build(model, "cpu", config("percentile:symmetric", calib))
    stored = json.loads(cache.read_text())
    assert stored["version"] == 3 and stored["calibrator"] == "percentile:symmetric"
    assert all(lo == -hi for lo, hi in stored["ranges"].values()) and stored["means"]
    again = build(model, "cpu", config("percentile:symmetric", None))  # from the cache alone
    info = again.report["precision_layers"]["calibration"]
    assert (
        info["from_cache"] and info["calibrator"] == "percentile:symmetric" and info["bias_corrected_layers"]
    )
    (name,) = first.run(val)
    np.testing.assert_array_equal(first.run(val)[name], again.run(val)[name])
    quants = {activation_quant(n) for n in again.graph.nodes if activation_quant(n) is not None}
    assert quants and all(q.dtype == "int8" and q.zero_point == 0 for q in quants)
    # another scheme does not reuse it: without data that is an error, with data it recalibrates
    with pytest.raises(BuildError, match="made with 'percentile:symmetric'"):
        build(model, "cpu", config("percentile", None))
    build(model, "cpu", config("percentile", calib))
    result = read_cache(cache)
    assert result is not None and result.calibrator == "percentile" and not result.spec.symmetric
    assert any(lo > -hi for lo, hi in result.ranges.values())  # ReLU outputs: [0, hi]


def test_version_1_caches_read_as_the_symmetric_scheme(tmp_path: Path) -> None:
    cache = tmp_path / "old.json"
    cache.write_text(json.dumps({"format": "farm-calibration", "version": 1, "calibrator": "entropy",
                                 "samples": 8, "signature": "x", "amax": {"t": 2.0}}))  # fmt: skip
    result = read_cache(cache)
    assert result is not None and result.calibrator == "entropy:symmetric,no-bias-correction"
    assert result.range_of("t") == (-2.0, 2.0) and result.mean_of("t") is None


def test_int8_gemm_int32_sums_are_exact_at_the_largest_codes_and_long_rows_are_declined() -> None:
    from farm.compiler.kernels.cpu.int8_gemm import MAX_K

    rng = np.random.default_rng(9)
    k = 8192  # 255 * 127 * 8192 ~ 2.7e8: large int32 sums, no overflow
    g = Graph("long")
    g.add_input("x", "float32", (3, k))
    g.add_const(
        "w", (np.sign(rng.standard_normal((k, 4))) * rng.uniform(0.9, 1.0, (k, 4))).astype(np.float32)
    )
    node = g.add_node("MatMul", ["x", "w"], ["y"], {}, name="layer")
    g.add_value("y", "float32", (3, 4))
    g.outputs = ["y"]
    set_activation_quant(node, ActivationQuant(1.0 / 255, 0, "uint8"))
    x = rng.uniform(0.97, 1.2, (3, k)).astype(np.float32)  # mostly saturating at code 255
    x[0] = np.abs(x[0])
    tactic = get_tactic("cpu.int8.gemm")
    assert tactic.supports(node, g)
    got = np.full((3, 4), np.nan, np.float32)
    tactic.run(node, [x, None], [got], tactic.prepare(node, g))
    want = reference.run(fake_quantized_graph(g), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    g.values["w"].const = rng.standard_normal((MAX_K + 1, 4)).astype(np.float32)
    g.values["x"].shape = (3, MAX_K + 1)
    assert not tactic.supports(node, g)


@pytest.mark.parametrize("op", ["MatMul", "FusedConv"])
def test_the_emulation_built_as_an_engine_counts_the_bias_correction_once(op: str) -> None:
    # the budget's sensitivity analysis runs fake_quantized_graph through an engine, whose Q/DQ
    # extraction turns the layer back into an explicit INT8 layer: the correction must not double
    from farm.compiler.precision.observe import GraphRunner

    rng = np.random.default_rng(17)
    g, node, feeds = _bias_correction_graph(rng, op)
    set_activation_quant(node, ActivationQuant(4.0 / 255, 0, "uint8"))
    axis = 1 if op == "FusedConv" else -1
    mean = np.moveaxis(feeds["x"], axis, 0).reshape(feeds["x"].shape[axis], -1).mean(axis=1)
    correction = bias_correction(node, g.const("w"), mean)
    assert correction is not None
    set_bias_correction(node, correction)
    emulated = fake_quantized_graph(g)
    assert layer_bias_correction(node) is not None  # the original keeps it
    want = reference.run(emulated, feeds)["y"]
    x = feeds["x"]
    got = GraphRunner(emulated, ["y"], max_batch=x.shape[0], example=feeds).run(feeds)["y"]
    step = 4.0 / 255 * float(np.max(np.abs(g.const("w"))))
    assert np.max(np.abs(got - want)) < 4 * step
    assert np.max(np.abs(got - want)) < 0.5 * np.max(np.abs(correction))


def test_each_side_is_calibrated_with_its_share_of_the_256_codes() -> None:
    from farm.compiler.precision.calibration import RangeStatistics, amax_entropy, amax_mse, tensor_range

    rng = np.random.default_rng(23)
    skewed = np.concatenate([-0.4 * rng.uniform(size=4000), rng.exponential(1.5, size=40000)]).astype(
        np.float32
    )
    one_sided = np.abs(skewed)
    for data in (skewed, one_sided):
        stats = RangeStatistics()
        for part in np.array_split(data, 4):
            stats.update(part)
        total = stats.positive.amax + stats.negative.amax
        pos_levels = max(2, round(256 * stats.positive.amax / total))
        lo, hi = tensor_range(stats, CalibratorSpec("entropy"))
        assert hi == pytest.approx(amax_entropy(stats.positive, pos_levels))
        _, hi_mse = tensor_range(stats, CalibratorSpec("mse"))
        assert hi_mse == pytest.approx(amax_mse(stats.positive, levels=pos_levels))
        if data is one_sided:
            assert lo == 0.0 and pos_levels == 256
        else:
            neg_levels = max(2, round(256 * stats.negative.amax / total))
            assert 2 <= neg_levels < 64 and lo == pytest.approx(-amax_entropy(stats.negative, neg_levels))


def test_int8_calibrates_a_model_whose_state_input_has_the_batch_on_axis_1(tmp_path: Path) -> None:
    """The streaming GRU carries h0 as [layers, batch, hidden]: calibration samples, the FP32
    observer engine and its batching follow each input's own batch axis, not axis 0."""
    from farm.compiler.precision.observe import batch_axes

    model = zoo.build_model("gru_stream").SerializeToString()
    calib = [zoo.sample_inputs("gru_stream", 4, seed=10 + i) for i in range(4)]
    samples = tmp_path / "calib.npz"
    np.savez(samples, chunk=np.concatenate([c["chunk"] for c in calib]), h0=np.concatenate([c["h0"] for c in calib], 1))
    shapes = {"chunk": ["batch", 16, 40]}
    config = BuilderConfig(
        tuning_level=0, batch_range=(1, 4, 8), input_shapes=shapes, precision="int8", strict=True,
        calibration=str(samples),
    )  # fmt: skip
    engine = build(model, "cpu", config)
    assert batch_axes(engine.graph, engine.graph.inputs) == {"chunk": 0, "h0": 1}
    report = engine.report["precision_layers"]
    assert report["counts"].get("int8", 0) >= 2 and report["calibration"]["samples"] == 16
    fp32 = build(model, "cpu", BuilderConfig(tuning_level=0, batch_range=(1, 4, 8), input_shapes=shapes))
    feeds = zoo.sample_inputs("gru_stream", 3, seed=99)
    for name, want in fp32.run(feeds).items():
        metrics = compare_arrays(name, engine.run(feeds)[name], want)
        assert metrics.cosine > 0.99, (name, metrics)
