"""Engine build -> save -> load -> run on hand-built graphs; file format errors; feed validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_testgraphs import branchy_graph, conv_mlp_graph

from farm.compiler import reference
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine import DeviceMismatchError, Engine, EngineFormatError, FeedError
from farm.compiler.engine import format as engine_format
from farm.compiler.ir import Graph
from farm.compiler.kernels import get_tactic
from farm.compiler.memory import check_no_overlap, plan_memory


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.fixture(scope="module")
def conv_engine() -> Engine:
    return build(conv_mlp_graph(), config=BuilderConfig(tuning_level=1, optimize=False))


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("make_graph", [conv_mlp_graph, branchy_graph])
def test_engine_matches_reference_after_save_and_load(tmp_path: Path, level: int, make_graph) -> None:
    graph = make_graph()
    engine = build(graph, config=BuilderConfig(tuning_level=level, optimize=False))
    path = tmp_path / "model.engine"
    engine.save(path)
    loaded = Engine.load(path)
    rng = np.random.default_rng(1)
    for _ in range(2):  # the second run reuses the arena and the cached shape binding
        feeds = {"x": rng.standard_normal(graph.values["x"].shape).astype(np.float32)}
        want = reference.run(graph, feeds)
        for eng in (engine, loaded):
            got = eng.run(feeds)
            assert sorted(got) == sorted(graph.outputs)
            for name in graph.outputs:
                assert got[name].shape == want[name].shape
                assert _rel_l2(got[name], want[name]) <= 1e-5


def test_outputs_are_fresh_arrays(conv_engine: Engine) -> None:
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    first = conv_engine.run({"x": x})["y"]
    kept = first.copy()
    conv_engine.run({"x": x * 2})
    np.testing.assert_array_equal(first, kept)


def test_branchy_plan_uses_views_inplace_and_concat_elision() -> None:
    graph = branchy_graph()
    # the generic tactics: all accept strided outputs and the elementwise ones work in place
    generic = {"MatMul": "cpu.numpy.gemm_blas"}
    steps = [(n, get_tactic(generic.get(n.op_type, f"cpu.numpy.{n.op_type}"))) for n in graph.nodes]
    plan = plan_memory(graph, steps)
    check_no_overlap(plan)
    concat = graph.find("Concat")[0]
    # "bt" (Tanh, read only by the Concat) is written into the concat buffer; "a" has two readers.
    assert plan.elided_concats == {concat.name: [1]}
    assert plan.values["bt"].kind == "slice" and plan.values["bt"].of == "cat"
    assert plan.values["a"].kind == "arena"
    # Add reads cat for the last time and may overwrite it; Sigmoid then reuses that buffer too
    assert plan.values["res"].buffer == plan.values["cat"].buffer == plan.values["s"].buffer
    assert plan.values["y"].kind == "output"  # a graph output never lives in the arena
    assert plan.lower_bound_bytes <= plan.arena_size <= plan.naive_bytes


def test_truncated_and_corrupted_files_are_clear_errors(tmp_path: Path, conv_engine: Engine) -> None:
    data = conv_engine.to_bytes()
    truncated = tmp_path / "truncated.engine"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineFormatError, match="truncated|corrupted"):
        Engine.load(truncated)
    corrupted = bytearray(data)
    corrupted[-5] ^= 0xFF  # flip bits in the tensor data
    bad = tmp_path / "corrupted.engine"
    bad.write_bytes(bytes(corrupted))
    with pytest.raises(EngineFormatError, match="corrupted"):
        Engine.load(bad)
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(EngineFormatError, match="not an engine file"):
        Engine.load(junk)
    tiny = tmp_path / "tiny.engine"
    tiny.write_bytes(b"abc")
    with pytest.raises(EngineFormatError):
        Engine.load(tiny)
    with pytest.raises(EngineFormatError, match="cannot read"):
        Engine.load(tmp_path / "missing.engine")


def test_fingerprint_mismatch_is_refused_unless_allowed(
    tmp_path: Path, conv_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.engine"
    conv_engine.save(path)
    other = dict(
        conv_engine.fingerprint, cpu_model="Some Other CPU", cores=conv_engine.fingerprint["cores"] + 64
    )
    monkeypatch.setattr(engine_format, "device_fingerprint", lambda backend="cpu": other)
    with pytest.raises(DeviceMismatchError, match="cpu_model.*Some Other CPU"):
        Engine.load(path)
    loaded = Engine.load(path, allow_device_mismatch=True)
    x = np.ones((2, 3, 8, 8), np.float32)
    np.testing.assert_allclose(loaded.run({"x": x})["y"], conv_engine.run({"x": x})["y"], rtol=1e-6)


def test_manifest_records_what_the_format_promises(conv_engine: Engine) -> None:
    manifest = engine_format.read_manifest(conv_engine.to_bytes())
    for key in (
        "format_version",
        "compiler_version",
        "profile",
        "fingerprint",
        "precision",
        "inputs",
        "outputs",
        "graph",
        "schedule",
        "memory_plan",
        "build_report",
        "tensors_sha256",
    ):
        assert key in manifest
    assert manifest["inputs"][0]["name"] == "x"
    assert {s["tactic"] for s in manifest["schedule"]} == {k.tactic.name for k in conv_engine.kernels}
    # weights a tactic repacked in prepare() are stored once, as the prepared tensor
    replaced = [s for s in manifest["schedule"] if s["replaces"]]
    stored = {v["name"] for v in manifest["graph"]["values"] if "const" in v}
    for entry in replaced:
        node = next(n for n in manifest["graph"]["nodes"] if n["name"] == entry["node"])
        for pos in entry["replaces"]:
            assert node["inputs"][pos] not in stored


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, "missing input"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32), "extra": np.zeros(1)}, "unknown input"),
        ({"x": np.zeros((2, 3, 8, 8), np.float64)}, "dtype float64"),
        ({"x": np.zeros((2, 3, 8), np.float32)}, "rank 3"),
        ({"x": np.zeros((5, 3, 8, 8), np.float32)}, "outside the engine's range"),
    ],
)
def test_wrong_feeds_are_clear_errors(conv_engine: Engine, feeds: dict, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        conv_engine.run(feeds)


def test_profiling_records_every_layer(conv_engine: Engine) -> None:
    context = conv_engine.create_context()
    context.run({"x": np.ones((2, 3, 8, 8), np.float32)}, profile=True)
    assert set(context.layer_times_ms) == {k.node.name for k in conv_engine.kernels}
    assert all(len(v) == 1 and v[0] >= 0 for v in context.layer_times_ms.values())


def test_data_dependent_shapes_run_through_the_dynamic_path() -> None:
    from farm.compiler.frontend import infer_shapes
    from farm.compiler.ir import Graph

    graph = Graph("dynamic")
    graph.add_input("x", "float32", ("batch", 6))
    graph.add_node("Relu", ["x"], ["r"])
    graph.add_node("NonZero", ["r"], ["nz"])  # output size depends on the data
    graph.add_node("Transpose", ["nz"], ["t"], {"perm": [1, 0]})
    graph.add_node("Sigmoid", ["x"], ["s"])
    graph.outputs = ["t", "s"]
    infer_shapes(graph, {"x": ("batch", 6)})
    engine = Engine.from_bytes(
        build(graph, config=BuilderConfig(tuning_level=1, optimize=False, batch_range=(1, 2, 4))).to_bytes()
    )
    assert engine.plan.values["nz"].kind == engine.plan.values["t"].kind == "dynamic"
    for batch in (1, 4, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32)
        got, want = engine.run({"x": x}), reference.run(graph, {"x": x})
        np.testing.assert_array_equal(got["t"], want["t"])
        np.testing.assert_allclose(got["s"], want["s"], rtol=1e-6)


def test_unresolved_symbolic_dims_and_bad_ranges_are_clear_build_errors() -> None:
    from farm.compiler.builder import BuildError
    from farm.compiler.ir import Graph

    graph = Graph("seq")
    graph.add_input("ids", "float32", ("batch", "seq"))
    graph.add_node("Relu", ["ids"], ["y"])
    graph.outputs = ["y"]
    with pytest.raises(BuildError, match=r"symbolic dim 'seq' at axis 1.*--shapes ids:1x<seq>"):
        build(graph, config=BuilderConfig(tuning_level=0, optimize=False))
    with pytest.raises(BuildError, match="unknown input"):
        build(graph, config=BuilderConfig(tuning_level=0, optimize=False, input_shapes={"nope": [1]}))
    with pytest.raises(BuildError, match="min <= opt <= max"):
        build(graph, config=BuilderConfig(tuning_level=0, optimize=False, batch_range=(4, 2, 8),
                                          input_shapes={"ids": [1, 16]}))  # fmt: skip


def test_shapes_that_contradict_the_models_fixed_dims_are_clear_build_errors() -> None:
    """--shapes may choose symbolic axes only; a fixed axis given another size is the user's
    mistake, named as such (it surfaced as numpy's gufunc error from deep in the tuner)."""
    from farm.compiler.builder import BuildError

    with pytest.raises(BuildError, match=r"'x' the shape 1x3x9x8.*axis 2 is 8, not 9"):
        build(conv_mlp_graph(), config=BuilderConfig(tuning_level=0, input_shapes={"x": [1, 3, 9, 8]}))
    engine = build(conv_mlp_graph(), config=BuilderConfig(tuning_level=0, input_shapes={"x": [2, 3, 8, 8]}))
    assert engine.inputs[0].opt_shape[0] == 2


def test_wrong_feeds_after_valid_runs_are_still_clear_errors(conv_engine: Engine) -> None:
    """The short check for feeds seen before must not let a bad feed through."""
    context = conv_engine.create_context()
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = context.run({"x": x})["y"]
    for _ in range(2):
        np.testing.assert_array_equal(context.run({"x": x})["y"], want)
    bad = [
        ({"x": x.astype(np.float64)}, "dtype float64"),
        ({"x": x[:1]}, None),  # batch 1 is outside the range this engine was built for (2..2)
        ({"x": x, "extra": x}, "unknown input"),
        ({"y": x}, "missing input"),
        ({"x": x.reshape(2, 3, 64)}, "rank 3"),
    ]
    for feeds, message in bad:
        with pytest.raises(FeedError, match=message or "outside the engine's range"):
            context.run(feeds)
    # a non-contiguous feed goes through the full check and gives the same result
    fortran = np.asfortranarray(x)
    np.testing.assert_array_equal(context.run({"x": fortran})["y"], want)
    np.testing.assert_array_equal(context.run({"x": x})["y"], want)


def test_context_thread_counts_are_resolved_when_set(
    conv_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farm.compiler.engine import runtime
    from farm.compiler.kernels.threads import available_cores

    applied: list[tuple] = []
    real = runtime.configure_threads
    monkeypatch.setattr(runtime, "configure_threads", lambda *args: applied.append(args) or real(*args))
    context = conv_engine.create_context(threads=(None, 1))
    x = np.ones((2, 3, 8, 8), np.float32)
    want = conv_engine.create_context(threads=(1, 1)).run({"x": x})["y"]
    np.testing.assert_allclose(context.run({"x": x})["y"], want, rtol=1e-6)
    assert applied[-1] == (1, 1)  # None BLAS threads: one pool, BLAS on the calling thread
    context.threads = (1, None)  # None numba threads: every available core
    assert context.threads == (1, None)
    np.testing.assert_allclose(context.run({"x": x})["y"], want, rtol=1e-6)
    assert applied[-1] == (1, available_cores())
    context.threads = (2, 1)  # as the builder's whole-schedule thread choice does
    np.testing.assert_allclose(context.run({"x": x})["y"], want, rtol=1e-6)
    assert applied[-1] == (2, 1)


def _mlp_graph(seed: int = 0, hidden: int = 96) -> Graph:
    """x [batch, 64] -> Gemm(transB) -> Relu -> MatMul -> Tanh -> Gemm (plain) -> y [batch, 5]."""
    from farm.compiler.frontend import infer_shapes

    rng = np.random.default_rng(seed)
    g = Graph("mlp")
    g.add_input("x", "float32", ("batch", 64))
    g.add_const("w1", rng.standard_normal((hidden, 64)).astype(np.float32) / 8)
    g.add_const("b1", rng.standard_normal(hidden).astype(np.float32))
    g.add_node("Gemm", ["x", "w1", "b1"], ["h1"], {"transB": 1})
    g.add_node("Relu", ["h1"], ["r1"])
    g.add_const("w2", rng.standard_normal((hidden, 33)).astype(np.float32) / 10)
    g.add_node("MatMul", ["r1", "w2"], ["h2"])
    g.add_node("Tanh", ["h2"], ["t2"])
    g.add_const("w3", rng.standard_normal((33, 5)).astype(np.float32))
    g.add_const("b3", rng.standard_normal((1, 5)).astype(np.float32))
    g.add_node("Gemm", ["t2", "w3", "b3"], ["y"], {"alpha": 0.5, "beta": 2.0})
    g.outputs = ["y"]
    infer_shapes(g, {"x": ("batch", 64)})
    return g


@pytest.mark.parametrize(("optimize", "hidden"), [(True, 96), (False, 96), (True, 300)])
def test_small_batch_mlp_runs_dot_rows_at_every_batch(optimize: bool, hidden: int) -> None:
    """Built for batch 1..32 at tuning level 0, the GEMMs get ``cpu.gemm.panel_rows`` on an
    AVX-512 host, else ``cpu.gemm.dot_rows`` (its column-split form where the output is wide
    enough), which serve batches up to 16 in their own kernels and larger ones through their
    tiles (panel_rows) or BLAS (dot_rows): every batch matches the reference."""
    from farm.compiler.kernels.cpu._simd16 import AVX512

    graph = _mlp_graph(hidden=hidden)
    engine = build(graph, config=BuilderConfig(tuning_level=0, optimize=optimize, batch_range=(1, 1, 32)))
    gemms = [k.tactic.name for k in engine.kernels if k.node.op_type in ("Gemm", "FusedGemm", "MatMul")]
    wide = {"cpu.gemm.dot_rows_split"} if hidden >= 128 else set()  # 300 columns: split in two
    assert gemms and set(gemms) == ({"cpu.gemm.panel_rows"} if AVX512 else {"cpu.gemm.dot_rows"} | wide)
    context = engine.create_context()
    for batch in (1, 3, 8, 16, 20, 32, 1):
        x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        got = context.run({"x": x})["y"]
        want = reference.run(graph, {"x": x})["y"]
        assert got.shape == (batch, 5)
        assert _rel_l2(got, want) <= 1e-5


def _shape_arithmetic_model() -> bytes:
    """x [N, 4]; y = Concat(Expand(token, Concat(Shape(x)[:1], [1, 4])), x[:, None]) along axis
    1: a ViT's class token broadcast to the batch through the shape arithmetic exporters write
    (torch's ``token.expand(x.shape[0], -1, -1)``)."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {
        "token": np.arange(4, dtype=np.float32).reshape(1, 1, 4),
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "axis1": np.array([1], np.int64),
        "rest": np.array([1, 4], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Expand", ["token", "target"], ["tokens"]),
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x3"]),
        helper.make_node("Concat", ["tokens", "x3"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_arithmetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def test_one_shape_per_input_folds_the_shape_arithmetic() -> None:
    """A batch range of one size pins the graph's symbolic dims before the passes, so the Shape ->
    Gather -> Concat chain folds into a constant and no Shape kernel runs; with a range the chain
    stays and follows the batch. Both match ONNX Runtime, and the build report names the pins."""
    import onnxruntime as ort

    model = _shape_arithmetic_model()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    fixed = build(model, config=BuilderConfig(tuning_level=0, batch_range=(3, 3, 3)))
    ranged = build(model, config=BuilderConfig(tuning_level=0, batch_range=(1, 3, 5)))
    assert "Shape" not in {k.node.op_type for k in fixed.kernels}
    assert "Shape" in {k.node.op_type for k in ranged.kernels}
    assert fixed.report["pinned_shapes"] == {"x": [3, 4]} and ranged.report["pinned_shapes"] == {}
    rng = np.random.default_rng(4)
    for engine, batches in ((fixed, [3]), (ranged, [1, 3, 5])):
        for batch in batches:
            x = rng.standard_normal((batch, 4)).astype(np.float32)
            assert np.array_equal(engine.run({"x": x})["y"], session.run(None, {"x": x})[0])
    with pytest.raises(FeedError):
        fixed.run({"x": np.ones((2, 4), np.float32)})


def test_calibrated_static_builds_keep_their_symbols() -> None:
    """INT8 calibration runs the optimized graph on batches of the calibration data, of any size,
    so a calibrated build does not pin the shapes (a pinned class-token Expand would not
    broadcast to a calibration batch of 5). The engine still runs its one shape."""
    proto = _model_with_head(_shape_arithmetic_model())
    rng = np.random.default_rng(5)
    calibration = {"x": rng.standard_normal((5, 4)).astype(np.float32)}
    engine = build(
        proto,
        config=BuilderConfig(
            tuning_level=0, batch_range=(3, 3, 3), precision="int8", calibration=calibration
        ),
    )
    assert engine.report["pinned_shapes"] == {}
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert engine.run({"x": x})["z"].shape == (3, 2, 8)


def _model_with_head(model: bytes) -> bytes:
    """``model`` with a MatMul [4, 8] after its output ``y`` (a layer INT8 calibration observes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(model)
    weight = np.random.default_rng(6).standard_normal((4, 8)).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(weight, "w"))
    proto.graph.node.append(helper.make_node("MatMul", ["y", "w"], ["z"]))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2, 8]))
    return proto.SerializeToString()
