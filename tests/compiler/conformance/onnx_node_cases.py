"""ONNX's backend node tests, generated into a cache outside the repo and run through
``load_onnx`` + ``reference.run``.

The onnx wheel ships the test-case generators but not their data, so the cases are produced with
``onnx.backend.test.case.node.collect_testcases(None)`` and serialized as
``onnx.backend.test.cmd_tools generate-data`` does (``model.onnx`` plus
``test_data_set_N/input_M.pb`` and ``output_M.pb``) into ``$FARM_ONNX_NODE_TESTS`` or
``~/.cache/engine-farm/onnx-node-tests/onnx-<version>`` (regenerated when missing).

Cases are exported at the newest opset of each op (up to 28 in onnx 1.23) and run at that opset
(7 at least): ``load_onnx`` upgrades opsets 7-10 with onnx's version converter, reads newer op
versions it has reviewed (``frontend/versions.py``) and expands function ops into their ONNX
function bodies. A case using any other op is "not applicable".

Run as a script for a summary::

    .venv/bin/python tests/compiler/conformance/onnx_node_cases.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

OLDEST_OPSET = 7  # farm.compiler.frontend.loader.OLDEST_OPSET
# random ops: not supported, and Bernoulli's function body is made of them
RANDOM_OPS = frozenset({"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"})
COMPLETE_MARKER = "complete.json"
EXPECTED_FAILURES_FILE = Path(__file__).with_name("expected_failures.json")


def cache_dir() -> Path:
    """Where the generated cases live (outside the repository)."""
    configured = os.environ.get("FARM_ONNX_NODE_TESTS")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "engine-farm" / "onnx-node-tests" / f"onnx-{onnx.__version__}"


def _write_tensor(path: Path, value: object, name: str) -> None:
    proto = value if isinstance(value, TensorProto) else numpy_helper.from_array(np.asarray(value), name)
    path.write_bytes(proto.SerializeToString())


def generate(target: Path) -> int:
    """Serialize every node test case with tensor-only inputs/outputs into ``target``."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A private folder renamed into place at the end, so concurrent runs never see half a cache.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    written = 0
    skipped: dict[str, str] = {}
    for case in cases:
        model = case.model
        assert model is not None and case.data_sets is not None
        tensor_only = all(
            v.type.HasField("tensor_type") for v in list(model.graph.input) + list(model.graph.output)
        )
        if not tensor_only:
            skipped[case.name] = "non-tensor (sequence/optional/map) inputs or outputs"
            continue
        folder = tmp / case.name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        (folder / "tolerance.json").write_text(json.dumps({"rtol": case.rtol, "atol": case.atol}))
        for index, (inputs, outputs) in enumerate(case.data_sets):
            data = folder / f"test_data_set_{index}"
            data.mkdir()
            for j, value in enumerate(inputs):
                _write_tensor(data / f"input_{j}.pb", value, model.graph.input[j].name)
            for j, value in enumerate(outputs):
                _write_tensor(data / f"output_{j}.pb", value, model.graph.output[j].name)
        written += 1
    (tmp / COMPLETE_MARKER).write_text(
        json.dumps({"onnx": onnx.__version__, "cases": written, "skipped": skipped})
    )
    if target.exists() and not (target / COMPLETE_MARKER).exists():
        shutil.rmtree(target, ignore_errors=True)  # an incomplete cache from an interrupted run
    try:
        tmp.rename(target)
    except OSError:  # another run finished first: keep its cache
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def ensure_generated() -> Path:
    """The cache folder, generated first when it is missing or incomplete."""
    target = cache_dir()
    if not (target / COMPLETE_MARKER).exists():
        generate(target)
    return target


def non_tensor_cases() -> dict[str, str]:
    """Cases left out of the cache because they use sequences/optionals/maps."""
    return json.loads((ensure_generated() / COMPLETE_MARKER).read_text())["skipped"]


@dataclass
class Case:
    """One generated node test and whether (and at which opset) the frontend can run it."""

    name: str
    folder: Path
    opset: int | None  # the opset to run at; None when not applicable
    reason: str  # why not applicable (empty when applicable)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _run_opset(model: ModelProto) -> tuple[int | None, str]:
    from farm.compiler.frontend import supported_op_types
    from farm.compiler.frontend.versions import has_function, runs_natively, schema

    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        return None, "no default-domain opset"
    if any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
        return None, "uses a non-default domain"
    original = versions[0]
    # each case runs at its own opset (7 at least): load_onnx upgrades 7-10 and reads newer ones
    target = max(original, OLDEST_OPSET)
    supported = supported_op_types()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            return None, f"op {node.domain}.{node.op_type} not supported"
        if node.op_type in RANDOM_OPS:
            return None, f"op {node.op_type} draws random numbers"
        if runs_natively(node.op_type, target, supported) or has_function(node.op_type, target):
            continue
        found = schema(node.op_type, target)
        version = f"-{found.since_version}" if found is not None else ""
        return None, f"op {node.op_type}{version} not supported"
    return target, ""


def _has_unsupported_dtype(model: ModelProto) -> str:
    from farm.compiler.ir.dtypes import ONNX_TO_NAME

    def check(elem: int) -> bool:
        return elem != 0 and elem not in ONNX_TO_NAME

    for v in list(model.graph.input) + list(model.graph.output):
        if check(v.type.tensor_type.elem_type):
            return TensorProto.DataType.Name(v.type.tensor_type.elem_type)
    for init in model.graph.initializer:
        if check(init.data_type):
            return TensorProto.DataType.Name(init.data_type)
    for node in _all_nodes(model.graph):
        for attr in node.attribute:
            if attr.HasField("t") and check(attr.t.data_type):
                return TensorProto.DataType.Name(attr.t.data_type)
            if (
                attr.name in ("to", "dtype", "output_dtype")
                and attr.type == onnx.AttributeProto.INT
                and check(attr.i)
            ):
                return (
                    TensorProto.DataType.Name(attr.i)
                    if attr.i in TensorProto.DataType.values()
                    else str(attr.i)
                )
    return ""


def collect_cases() -> list[Case]:
    """Every generated case, with the opset to run it at or the reason it is not applicable."""
    root = ensure_generated()
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        model = onnx.load_model(folder / "model.onnx", load_external_data=False)
        opset, reason = _run_opset(model)
        if opset is not None:
            dtype = _has_unsupported_dtype(model)
            if dtype:
                opset, reason = None, f"element type {dtype} not supported"
        cases.append(Case(folder.name, folder, opset, reason))
    return cases


def load_expected_failures() -> dict[str, str]:
    """Case name -> reason, for the cases known to fail."""
    return json.loads(EXPECTED_FAILURES_FILE.read_text())


def _read_tensor(path: Path) -> np.ndarray:
    proto = TensorProto()
    proto.ParseFromString(path.read_bytes())
    array = numpy_helper.to_array(proto)
    if array.dtype.kind in ("S", "U", "O"):
        array = np.array(
            [v.decode() if isinstance(v, bytes) else v for v in array.ravel()], dtype=object
        ).reshape(array.shape)
    return array


def shape_compatible(inferred: tuple | None, actual: tuple[int, ...]) -> bool:
    """Inference may leave data-dependent dims symbolic, but the rank and every integer dim it
    states must be right (an unknown rank is accepted only for data-dependent outputs)."""
    if inferred is None:
        return True
    return len(inferred) == len(actual) and all(
        not isinstance(d, int) or d == a for d, a in zip(inferred, actual, strict=True)
    )


def run_case(case: Case) -> None:
    """Load the case's model at its run opset and compare every output of every data set
    (dtype, shape and values with the case's rtol/atol), and every inferred shape and dtype with
    the values actually computed; raises AssertionError on mismatch."""
    from farm.compiler import load_onnx, reference
    from farm.compiler.frontend import infer_shapes

    assert case.opset is not None, case.reason
    model = onnx.load_model(case.folder / "model.onnx", load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = case.opset
    tolerance = json.loads((case.folder / "tolerance.json").read_text())
    graph = load_onnx(model)
    for data in sorted(case.folder.glob("test_data_set_*")):
        inputs = [
            _read_tensor(p) for p in sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        ]
        expected = [
            _read_tensor(p) for p in sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        ]
        feeds = dict(zip(graph.inputs, inputs, strict=False))
        infer_shapes(graph, {name: tuple(v.shape) for name, v in feeds.items()})
        produced = [o for node in graph.nodes for o in node.outputs if o]
        with np.errstate(all="ignore"):
            outputs = reference.run(graph, feeds, outputs=list(dict.fromkeys(produced + list(graph.outputs))))
        for name in produced:  # inference must agree with every intermediate value, too
            value, actual = graph.values[name], np.asarray(outputs[name])
            assert shape_compatible(value.shape, actual.shape), (
                f"{name}: inferred {value.shape}, actual {actual.shape}"
            )
            actual_dtype = "string" if actual.dtype == object else str(actual.dtype)
            assert value.dtype == actual_dtype, f"{name}: inferred {value.dtype}, actual {actual_dtype}"
        for name, want in zip(graph.outputs, expected, strict=True):
            got = np.asarray(outputs[name])
            assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
            assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
            inferred = graph.values[name].shape
            assert shape_compatible(inferred, want.shape), (
                f"{name}: inferred shape {inferred}, actual {want.shape}"
            )
            if want.dtype == object:
                assert got.tolist() == want.tolist(), name
            else:
                np.testing.assert_allclose(
                    got, want, rtol=tolerance["rtol"], atol=tolerance["atol"], err_msg=name
                )


def summary() -> dict[str, object]:
    """Run every applicable case; counts of passed / expected failures / unexpected results."""
    expected = load_expected_failures()
    counts: Counter[str] = Counter()
    unexpected: dict[str, str] = {}
    reasons: Counter[str] = Counter()
    cases = collect_cases()
    for case in cases:
        if case.opset is None:
            counts["not_applicable"] += 1
            reasons[
                case.reason.split(" not supported")[0] if "not supported" in case.reason else case.reason
            ] += 1
            continue
        counts["applicable"] += 1
        try:
            run_case(case)
        except Exception as exc:
            if case.name in expected:
                counts["expected_failure"] += 1
            else:
                counts["failed"] += 1
                unexpected[case.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            continue
        if case.name in expected:
            counts["unexpectedly_passed"] += 1
            unexpected[case.name] = "passes but is listed in expected_failures.json"
        else:
            counts["passed"] += 1
    return {
        "total_generated": len(cases),
        "non_tensor_cases": len(non_tensor_cases()),
        **counts,
        "unexpected": unexpected,
        "not_applicable_reasons": dict(reasons.most_common(15)),
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    result = summary()
    print(json.dumps(result, indent=2))
