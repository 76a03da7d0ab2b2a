"""The whole pass pipeline on every applicable ONNX backend node test (the conformance suite's
cases, with their input shapes made static so shape folding applies): the optimized graph must
compute what the unoptimized one computes, and verify after every pass."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

from farm.compiler import load_onnx, optimize, reference
from farm.compiler.frontend import infer_shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
from onnx_node_cases import _read_tensor, collect_cases, load_expected_failures  # noqa: E402


def _first_data_set(folder: Path) -> list[np.ndarray]:
    data = sorted(folder.glob("test_data_set_*"))[0]
    return [_read_tensor(p) for p in sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return bool(a.tolist() == b.tolist())
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True))


def test_optimize_preserves_every_onnx_node_case() -> None:
    known_failures = load_expected_failures()
    failures: list[str] = []
    ran = changed = 0
    for case in collect_cases():
        if case.opset is None or case.name in known_failures:
            continue
        model = onnx.load_model(case.folder / "model.onnx", load_external_data=False)
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = case.opset
        graph = load_onnx(model)
        feeds = dict(zip(graph.inputs, _first_data_set(case.folder), strict=False))
        infer_shapes(graph, {name: tuple(v.shape) for name, v in feeds.items()})
        with np.errstate(all="ignore"):
            want = reference.run(graph, feeds)
        try:
            optimized, _ = optimize(graph, verify_each=True)
            with np.errstate(all="ignore"):
                got = reference.run(optimized, feeds)
        except Exception as exc:  # collect every failing case, not just the first
            failures.append(f"{case.name}: {type(exc).__name__}: {exc}")
            continue
        ran += 1
        changed += optimized.op_histogram() != graph.op_histogram()
        for name in graph.outputs:
            if not _same(np.asarray(got[name]), np.asarray(want[name])):
                failures.append(f"{case.name}: output {name} differs after optimization")
    assert not failures, "\n".join(failures)
    assert ran >= 1200 and changed >= 200, (ran, changed)  # the pipeline really rewrote many of them
