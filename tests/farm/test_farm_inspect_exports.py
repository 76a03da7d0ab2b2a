"""The upload check and the inspect step on real PyTorch exports (tests/fixtures/torch).

ONNX Runtime is the independent oracle for the inputs and outputs; every real export must pass the
upload check (a false 400 would lock users out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from farm.api.commands import check_onnx_file
from farm.worker.inspect import inspect_model_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "torch"
EXPORTS = sorted(FIXTURES.glob("*.onnx"))

ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _ort_dim(dim: object) -> object:
    return dim if isinstance(dim, int | str) else None


@pytest.mark.skipif(not EXPORTS, reason="no exported fixtures in tests/fixtures/torch")
@pytest.mark.parametrize("path", EXPORTS, ids=[p.stem for p in EXPORTS])
def test_real_export_passes_the_upload_check_and_matches_onnxruntime(path: Path) -> None:
    check_onnx_file(path)
    facts = inspect_model_file(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(v["name"], v["dtype"]) for v in facts["inputs"]] == [
        (arg.name, ORT_TYPES[arg.type]) for arg in session.get_inputs()
    ]
    assert [v["shape"] for v in facts["inputs"]] == [
        [_ort_dim(d) for d in arg.shape] for arg in session.get_inputs()
    ]
    assert [v["name"] for v in facts["outputs"]] == [arg.name for arg in session.get_outputs()]
    model = onnx.load(str(path))
    assert facts["node_count"] >= len(model.graph.node)
    assert sum(facts["op_histogram"].values()) == facts["node_count"]
    initializer_elements = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    assert facts["parameter_count"] >= initializer_elements
    compute = facts["compute"]
    heavy = sum(facts["op_histogram"].get(op, 0) for op in ("Conv", "Gemm", "MatMul", "ConvTranspose"))
    if heavy:
        assert compute["macs"] > 0
        assert compute["flops"] == 2 * compute["macs"]
