"""GPTQ weight rounding (farm.compiler.precision.gptq): a conv and a GEMM layer on fresh random
data, whose held-out output error GPTQ must lower against round-to-nearest on the same int8
grid; the im2col rows against the reference conv; the build with GPTQ against its fake-quant
emulation; the calibrator option and the calibration cache that keys on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from farm import zoo
from farm.compiler import reference
from farm.compiler.builder import BuilderConfig, BuildError, build
from farm.compiler.ir import Graph, Node
from farm.compiler.precision import fake_quantized_graph
from farm.compiler.precision.calibration import CalibrationError, CalibratorSpec, read_cache
from farm.compiler.precision.gptq import (
    LayerStatistics,
    gptq_round,
    layer_columns,
    layer_waves,
    solve_layer,
    weight_matrix,
)
from farm.compiler.precision.quantize import (
    ATTR_WEIGHT_SCALE,
    ActivationQuant,
    bias_correction,
    fake_quantize_activation,
    layer_weight_quant,
    weight_output_axis,
    weight_scales,
)

MLP = {"in_features": 48, "hidden": (64, 64), "num_classes": 10}
CONV_ATTRS = {
    "pads": [1, 1, 1, 1],
    "strides": [1, 1],
    "dilations": [1, 1],
    "group": 1,
    "kernel_shape": [3, 3],
}


def _correlated_inputs(
    rng: np.random.Generator, mix: np.ndarray, shape: tuple[int, ...], axis: int
) -> np.ndarray:
    """Never-negative inputs whose channels (along ``axis``) are correlated through ``mix``."""
    x = rng.standard_normal(shape)
    x = np.moveaxis(np.tensordot(np.moveaxis(x, axis, -1), mix, axes=1), -1, axis)
    return np.maximum(x + 0.3, 0.0).astype(np.float32)


def _layer(op: str, rng: np.random.Generator) -> tuple[Node, np.ndarray, int]:
    """(node, FP32 weight, channel axis of its input) of a small conv or GEMM layer."""
    if op == "FusedConv":
        w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
        return Node("FusedConv", ["x", "w"], ["y"], dict(CONV_ATTRS), "conv"), w, 1
    w = rng.standard_normal((40, 24)).astype(np.float32)  # [K, N]: transB 0
    return Node("FusedGemm", ["x", "w"], ["y"], {"transB": 0}, "gemm"), w, -1


def _output(node: Node, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return layer_columns(node, x, w.shape).astype(np.float64) @ weight_matrix(node, w).T


@pytest.mark.parametrize("op", ["FusedConv", "FusedGemm"])
def test_gptq_lowers_the_held_out_output_error_on_the_same_int8_grid(op: str) -> None:
    rng = np.random.default_rng(41 if op == "FusedConv" else 42)
    node, w, axis = _layer(op, rng)
    k_in = w.shape[1] if op == "FusedConv" else w.shape[0]
    mix = rng.standard_normal((k_in, k_in)) * np.linspace(1.0, 0.05, k_in) / np.sqrt(k_in)  # correlated
    shape = (24, k_in, 9, 9) if op == "FusedConv" else (3000, k_in)
    calib, held_out = (_correlated_inputs(rng, mix, shape, axis) for _ in range(2))
    quant = ActivationQuant.from_range(0.0, float(calib.max()))
    stats = LayerStatistics(weight_matrix(node, w).shape[1])
    cols = layer_columns(node, calib, w.shape)
    stats.update(cols, layer_columns(node, fake_quantize_activation(calib, quant), w.shape))
    q, scales, correction = solve_layer(node, w, stats)
    # the same grid: symmetric per-channel scales of the FP32 weight, int8 in [-127, 127]
    axis_w = weight_output_axis(node)
    np.testing.assert_array_equal(scales, weight_scales(w, axis_w))
    assert q.dtype == np.int8 and q.shape == w.shape and np.abs(q.astype(int)).max() <= 127
    rtn, rtn_scales = layer_weight_quant(node, w)
    np.testing.assert_array_equal(rtn_scales, scales)
    assert np.mean(q != rtn) > 0.05  # it really rounds differently
    assert np.mean(np.abs(q.astype(int) - rtn.astype(int))) < 1.0  # but stays close to the weight
    shape_s = [1] * w.ndim
    shape_s[axis_w] = -1

    def deq(codes: np.ndarray) -> np.ndarray:
        return (codes.astype(np.float32) * scales.reshape(shape_s)).astype(np.float32)

    want = _output(node, w, held_out)

    def centred(err: np.ndarray) -> float:  # the mean error is the bias correction's part
        return float(np.linalg.norm(err - err.mean(axis=0)))

    # weights alone (FP32 inputs): what the rounding choice controls
    err_w = {name: centred(_output(node, deq(c), held_out) - want) for name, c in (("gptq", q), ("rtn", rtn))}
    assert err_w["gptq"] < 0.85 * err_w["rtn"], err_w
    # the whole layer on quantized inputs, each rounding with its bias correction: lower too
    xq = fake_quantize_activation(held_out, quant)
    mean = np.moveaxis(calib, axis, 0).reshape(calib.shape[axis], -1).mean(axis=1)
    rtn_correction = bias_correction(node, w, mean)
    assert rtn_correction is not None
    err_gptq = np.linalg.norm(_output(node, deq(q), xq) + correction - want)
    err_rtn = np.linalg.norm(_output(node, deq(rtn), xq) + rtn_correction - want)
    assert err_gptq < err_rtn, (err_gptq, err_rtn)


def test_gptq_round_with_an_identity_hessian_is_round_to_nearest() -> None:
    rng = np.random.default_rng(43)
    w = rng.standard_normal((6, 20))
    scales = np.abs(w).max(axis=1) / 127
    q = gptq_round(w, np.eye(20), scales)
    np.testing.assert_array_equal(q, np.clip(np.rint(w / scales[:, None]), -127, 127))


@pytest.mark.parametrize(
    "attrs",
    [
        CONV_ATTRS,
        {"pads": [0, 1, 2, 0], "strides": [2, 1], "dilations": [1, 2], "group": 1, "kernel_shape": [3, 2]},
    ],
)
def test_layer_columns_times_the_weight_matrix_is_the_convolution(attrs: dict) -> None:
    rng = np.random.default_rng(44)
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 5, *attrs["kernel_shape"])).astype(np.float32)
    g = Graph("c")
    g.add_input("x", "float32", x.shape)
    g.add_const("w", w)
    node = g.add_node("Conv", ["x", "w"], ["y"], dict(attrs), name="conv")
    g.add_value("y", "float32", None)
    g.outputs = ["y"]
    want = reference.run(g, {"x": x})["y"]
    got = _output(node, w, x)  # [N * P, M]
    np.testing.assert_allclose(got.reshape(2, -1, 4).transpose(0, 2, 1).reshape(want.shape), want,
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_layer_waves_put_each_layer_after_its_int8_ancestors() -> None:
    g = Graph("w")
    g.add_input("x", "float32", (2, 4))
    for i in range(4):
        g.add_const(f"w{i}", np.ones((4, 4), np.float32))
    gemm = {"transB": 0}
    a = g.add_node("FusedGemm", ["x", "w0"], ["a"], dict(gemm), name="a")
    b = g.add_node("FusedGemm", ["x", "w1"], ["b"], dict(gemm), name="b")  # shares the input
    g.add_node("Add", ["a", "b"], ["s"], {}, name="add")
    c = g.add_node("FusedGemm", ["s", "w2"], ["c"], dict(gemm), name="c")
    d = g.add_node("FusedGemm", ["x", "w3"], ["d"], dict(gemm), name="d")
    waves = layer_waves(g, [a, b, c, d])
    assert [[n.name for n in wave] for wave in waves] == [["a", "b", "d"], ["c"]]


def _mlp(calibrator: str, calib: object, cache: Path | None = None) -> object:
    model = zoo.build_model("mlp", **MLP).SerializeToString()
    # tuning level 0: the same tactics in every build, so two builds from one calibration agree bit
    # for bit (timed choices may differ between INT8 tactics whose dequantization rounds apart)
    config = BuilderConfig(batch_range=(1, 64, 256), precision="int8", strict=True, calibration=calib,
                           calibrator=calibrator, calibration_cache=cache, tuning_level=0)  # fmt: skip
    return build(model, "cpu", config)


def test_the_gptq_build_matches_its_emulation() -> None:
    model = zoo.build_model("mlp", **MLP).SerializeToString()
    calib = zoo.sample_inputs("mlp", 512, seed=51, options=MLP)
    val = zoo.sample_inputs("mlp", 256, seed=52, options=MLP)
    want = build(model, "cpu", BuilderConfig(batch_range=(1, 64, 256))).run(val)
    (name,) = want
    errors = {}
    for spec in ("minmax:gptq", "minmax:no-gptq"):
        engine = _mlp(spec, calib)
        info = engine.report["precision_layers"]["calibration"]  # type: ignore[attr-defined]
        layers = [n for n in engine.graph.nodes if n.precision == "int8"]  # type: ignore[attr-defined]
        got = engine.run(val)[name]  # type: ignore[attr-defined]
        if spec == "minmax:gptq":
            assert info["gptq_layers"] == len(layers) == 3
            # the rounded weight lies on the grid of the explicit scales: quantize(q * s) = q
            for node in layers:
                assert node.attr(ATTR_WEIGHT_SCALE) is not None
                w = engine.graph.const(node.input(1))  # type: ignore[attr-defined]
                q, scales = layer_weight_quant(node, w)
                shape = [1] * w.ndim
                shape[weight_output_axis(node)] = -1
                np.testing.assert_array_equal(q.astype(np.float32) * scales.reshape(shape), w)
            emulated = reference.run(fake_quantized_graph(engine.graph), val)[name]  # type: ignore[attr-defined]
            # equal up to FP32 rounding; a value at a rounding boundary (x * (1/s) in the kernel,
            # x / s in QuantizeLinear) may take the neighbouring code in a few samples
            assert np.linalg.norm(got - emulated) / np.linalg.norm(emulated) < 1e-3
            off = np.abs(got - emulated) > 1e-4 * float(np.abs(emulated).max())
            assert np.mean(np.any(off, axis=1)) < 0.02
        else:
            assert "gptq_layers" not in info
        errors[spec] = float(np.linalg.norm(got - want[name]) / np.linalg.norm(want[name]))
    # the zoo MLP's inputs are near-white (random weights, Gaussian inputs): GPTQ has little to
    # exploit there and lands about where round-to-nearest does (the layer tests show the gain)
    assert errors["minmax:gptq"] < 1.1 * errors["minmax:no-gptq"], errors


def test_the_calibrator_spec_names_gptq_and_rejects_both() -> None:
    assert CalibratorSpec.parse("entropy").gptq is False  # off by default
    assert str(CalibratorSpec.parse("entropy:no-gptq")) == "entropy"
    spec = CalibratorSpec.parse("mse:gptq,symmetric")
    assert (spec.gptq, spec.symmetric, str(spec)) == (True, True, "mse:symmetric,gptq")
    with pytest.raises(CalibrationError, match="contradict"):
        CalibratorSpec.parse("entropy:gptq,no-gptq")


def test_the_calibration_cache_keeps_the_rounding_and_keys_on_gptq(tmp_path: Path) -> None:
    calib = zoo.sample_inputs("mlp", 128, seed=53, options=MLP)
    val = zoo.sample_inputs("mlp", 16, seed=54, options=MLP)
    cache = tmp_path / "calib.json"
    first = _mlp("minmax:gptq", calib, cache)
    stored = json.loads(cache.read_text())
    assert stored["version"] == 3 and stored["calibrator"] == "minmax:gptq" and len(stored["gptq"]) == 3
    again = _mlp("minmax:gptq", None, cache)  # from the cache alone: the same rounding, the same outputs
    info = again.report["precision_layers"]["calibration"]  # type: ignore[attr-defined]
    assert info["from_cache"] and info["gptq_layers"] == 3
    (name,) = first.run(val)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(first.run(val)[name], again.run(val)[name])  # type: ignore[attr-defined]
    # round-to-nearest is another key: without data it cannot reuse the GPTQ cache
    with pytest.raises(BuildError, match="made with 'minmax:gptq'"):
        _mlp("minmax", None, cache)
    # a cache whose rounding is of other weights is not used
    stored["gptq"] = {k: dict(v, digest="0" * 16) for k, v in stored["gptq"].items()}
    cache.write_text(json.dumps(stored))
    with pytest.raises(BuildError, match="no GPTQ rounding for these weights"):
        _mlp("minmax:gptq", None, cache)


def test_version_2_caches_read_as_round_to_nearest(tmp_path: Path) -> None:
    cache = tmp_path / "v2.json"
    cache.write_text(json.dumps({"format": "farm-calibration", "version": 2, "calibrator": "entropy",
                                 "samples": 8, "signature": "x", "amax": {"t": 2.0},
                                 "ranges": {"t": [0.0, 2.0]}, "means": {}}))  # fmt: skip
    result = read_cache(cache)
    assert result is not None and result.calibrator == "entropy" and not result.spec.gptq
