"""Explicit quantization: a model quantized by ONNX Runtime's own quantizer (QDQ format, done
here) builds with the model's scales and matches ONNX Runtime's execution of the Q/DQ model
within one quantization step of the output.

The comparison runs ONNX Runtime with graph optimizations off, so it executes the model's
QuantizeLinear/DequantizeLinear as the ONNX spec defines them. With optimizations on, ORT fuses
the pairs into its own u8s8 kernels, whose result depends on the CPU: on AVX-512 VNNI hosts it
matched ours within a step, on an AVX2 host without VNNI (AMD EPYC, ORT 1.31) it differed from
its own unfused execution by 11 output steps (the int16 saturation of the AVX2 u8 x s8 path),
while ours matched the unfused execution exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from farm import zoo
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.frontend import load_onnx
from farm.compiler.precision import extract_qdq

RESNET = {"image_size": 32, "width": 4, "batchnorm": "fold"}


def _quantize_with_onnxruntime(tmp_path: Path, per_channel: bool, activation: str) -> tuple[Path, dict]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = zoo.sample_inputs("resnet", 16, seed=21, options=RESNET)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(16)])

        def get_next(self) -> dict | None:
            return next(self.rows, None)

    fp32_path = tmp_path / "resnet.onnx"
    onnx.save(zoo.build_model("resnet", **RESNET), fp32_path)
    qdq_path = tmp_path / f"resnet-qdq-{activation}-{per_channel}.onnx"
    quantize_static(
        str(fp32_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )  # fmt: skip
    return qdq_path, calib


def _qdq_reference_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs with graph optimizations off: the Q/DQ nodes as the spec defines them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the last Q/DQ before the graph output: one quantization step of the output."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    output = model.graph.output[0].name
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == output)
    return float(inits[dq.input[1]])


@pytest.mark.parametrize(("per_channel", "activation"), [(True, "uint8"), (False, "int8")])
def test_onnxruntime_qdq_model_matches_onnxruntime_int8(tmp_path: Path, per_channel: bool, activation: str) -> None:
    qdq_path, _ = _quantize_with_onnxruntime(tmp_path, per_channel, activation)
    model = onnx.load(qdq_path)
    val = zoo.sample_inputs("resnet", 8, seed=22, options=RESNET)
    want = _qdq_reference_outputs(qdq_path, val)
    engine = build(qdq_path, "cpu", BuilderConfig(batch_range=(1, 8, 8), tuning_level=0))
    section = engine.report["precision_layers"]
    convs = [e for e in section["layers"] if e["op_type"] in ("FusedConv", "Conv", "FusedGemm")]
    assert convs and all(e["precision"] == "int8" and e["reason"] == "explicit Q/DQ in the model" for e in convs)
    assert section["explicit_qdq"]["weights"] == len(convs)
    got = engine.run(val)
    (name,) = want
    step = _output_step(model)
    diff = np.abs(got[name] - want[name])
    assert np.max(diff) <= step * 1.01, (np.max(diff), step)
    assert np.mean(diff == 0) > 0.9  # almost everywhere the very same quantized value


def test_extract_qdq_folds_weights_and_remembers_scales(tmp_path: Path) -> None:
    qdq_path, _ = _quantize_with_onnxruntime(tmp_path, True, "uint8")
    graph = load_onnx(qdq_path)
    found = extract_qdq(graph)
    assert found.folded_weights == 21 and found.folded_activations >= 18
    convs = graph.find("Conv")
    assert all(graph.values[c.input(1)].const.dtype == np.float32 for c in convs)
    assert all(c.input(0) in found.activations for c in convs)
    assert all(q.dtype == "uint8" and 0 <= q.zero_point <= 255 for q in found.activations.values())
    w = graph.values[convs[0].input(1)].const
    scales = found.weights[convs[0].input(1)]
    assert scales.shape == (w.shape[0],)
    q = w / scales.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(q, np.rint(q), atol=1e-3)  # the weight lies on the model's int8 grid
