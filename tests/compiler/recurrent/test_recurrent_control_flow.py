"""If, Loop and Scan through the engine on models where the bodies read values of the enclosing
scopes (outer graph values computed at run time, constants, a Loop body's own values read by an
If nested in it), compared with ONNX Runtime on fresh random inputs; the engine file round trip
rebuilds the nested schedules; a constant If condition is folded."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from farm.compiler import BuilderConfig, Engine, build
from farm.compiler.accuracy import onnxruntime_session

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def nested_control_flow_model() -> onnx.ModelProto:
    """Loop (trip count n) whose body adds the outer value ``y = Relu(x) @ W`` to its carried
    sum and, through an If on ``iter % 2``, either scales it by the outer ``x``-derived ``s`` or
    subtracts the body's own ``step``; a Scan then runs a cumulative sum over the rows of
    ``y`` with an outer bias."""
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["step", "s"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", F, [2, 4])],
    )  # fmt: skip
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["y", "step"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", F, [2, 4])],
    )  # fmt: skip
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["i_f"], to=F),
            helper.make_node("Mul", ["y", "i_f"], ["step"]),
            helper.make_node("Mod", ["i", "two"], ["parity"]),
            helper.make_node("Equal", ["parity", "zero"], ["even"]),
            helper.make_node("If", ["even"], ["branch"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Add", ["acc_in", "branch"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("ReduceSum", ["branch"], ["total"], keepdims=0),
        ],
        "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", B, []),
         helper.make_tensor_value_info("acc_in", F, [2, 4])],
        [helper.make_tensor_value_info("cond_out", B, []), helper.make_tensor_value_info("acc_out", F, [2, 4]),
         helper.make_tensor_value_info("total", F, [])],
        initializer=[helper.make_tensor("two", I64, [], [2]), helper.make_tensor("zero", I64, [], [0])],
    )  # fmt: skip
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["run_in", "row"], ["sum"]), helper.make_node("Add", ["sum", "bias"], ["run_out"]),
         helper.make_node("Identity", ["run_out"], ["row_out"])],
        "scan_body",
        [helper.make_tensor_value_info("run_in", F, [4]), helper.make_tensor_value_info("row", F, [4])],
        [helper.make_tensor_value_info("run_out", F, [4]), helper.make_tensor_value_info("row_out", F, [4])],
    )  # fmt: skip
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["rx"]),
            helper.make_node("MatMul", ["rx", "W"], ["y"]),
            helper.make_node("ReduceMean", ["x"], ["s"], keepdims=0),
            helper.make_node("Loop", ["n", "", "acc0"], ["acc", "totals"], body=body),
            helper.make_node("Scan", ["run0", "y"], ["run", "rows"], body=scan_body, num_scan_inputs=1),
        ],
        "nested",
        [helper.make_tensor_value_info("x", F, [2, 3]), helper.make_tensor_value_info("n", I64, []),
         helper.make_tensor_value_info("acc0", F, [2, 4]), helper.make_tensor_value_info("run0", F, [4])],
        [helper.make_tensor_value_info("acc", F, [2, 4]), helper.make_tensor_value_info("totals", F, [None]),
         helper.make_tensor_value_info("run", F, [4]), helper.make_tensor_value_info("rows", F, [2, 4])],
        initializer=[helper.make_tensor("W", F, [3, 4], rng.standard_normal(12).astype(np.float32)),
                     helper.make_tensor("bias", F, [4], rng.standard_normal(4).astype(np.float32))],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(seed: int, trips: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((2, 3)).astype(np.float32),
        "n": np.array(trips, np.int64),
        "acc0": rng.standard_normal((2, 4)).astype(np.float32),
        "run0": rng.standard_normal(4).astype(np.float32),
    }


def _check(engine: Engine, session, seed: int, trips: int) -> None:  # type: ignore[no-untyped-def]
    feeds = _feeds(seed, trips)
    got = engine.run(feeds)
    names = [o.name for o in session.get_outputs()]
    for name, want in zip(names, session.run(names, feeds), strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_nested_control_flow_reads_enclosing_scopes() -> None:
    model = nested_control_flow_model()
    engine = build(model, "cpu", BuilderConfig(tuning_level=0, input_shapes={"n": []}))
    tactics = {k.node.op_type: k.tactic.name for k in engine.kernels}
    assert tactics["Loop"] == "cpu.control_flow.loop" and tactics["Scan"] == "cpu.control_flow.scan"
    session = onnxruntime_session(model.SerializeToString(), threads=1)
    for seed, trips in ((1, 5), (2, 0), (3, 1)):
        _check(engine, session, seed, trips)
    # The engine file keeps the bodies and each body node's tactic; a loaded engine rebuilds them.
    loaded = Engine.from_bytes(engine.to_bytes())
    _check(loaded, session, 4, 4)


def test_tuned_build_validates_the_control_flow_tactics() -> None:
    model = nested_control_flow_model()
    engine = build(model, "cpu", BuilderConfig(tuning_level=1, input_shapes={"n": []}))
    rejected = [r for r in engine.report["rejected"] if "control_flow" in r["tactic"]]
    assert not rejected, rejected
    _check(engine, onnxruntime_session(model.SerializeToString(), threads=1), 6, 3)


def test_constant_if_condition_builds_only_the_taken_branch() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F, [3])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F, [3])]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=then_branch, else_branch=else_branch)],
        "const_if",
        [helper.make_tensor_value_info("x", F, [3])],
        [helper.make_tensor_value_info("out", F, [3])],
        initializer=[helper.make_tensor("c", B, [], [False])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    engine = build(model, "cpu", BuilderConfig(tuning_level=0, optimize=False))
    (kernel,) = [k for k in engine.kernels if k.node.op_type == "If"]
    assert kernel.tactic.name == "cpu.control_flow.if"
    assert list(kernel.prepared.params["tactics"]) == ["else_branch"] and 0 in kernel.prepared.replaces
    x = np.random.default_rng(0).standard_normal(3).astype(np.float32)
    np.testing.assert_array_equal(engine.run({"x": x})["out"], -x)


def test_bodies_fold_what_enclosing_constants_and_fixed_shapes_decide() -> None:
    """A Loop body written the way exporters write recurrent cells: the step's weight sliced
    out of an enclosing constant at every iteration, and a shape guard (an If on
    ``Size(Shape(x)) == 0``, x an enclosing value of fixed shape). The body is simplified once
    when prepared: the slices become one constant, the guard is decided and inlined; a loaded
    engine simplifies its stored body the same way."""
    guard_then = helper.make_graph(
        [helper.make_node("Neg", ["h_in"], ["g_then"])], "guard_then", [],
        [helper.make_tensor_value_info("g_then", F, [2, 4])],
    )  # fmt: skip
    guard_else = helper.make_graph(
        [helper.make_node("Tanh", ["h_in"], ["g_else"])], "guard_else", [],
        [helper.make_tensor_value_info("g_else", F, [2, 4])],
    )  # fmt: skip
    body = helper.make_graph(
        [
            helper.make_node("Slice", ["W", "s0", "s1", "axis1"], ["w_a"]),
            helper.make_node("Slice", ["W", "s1", "s2", "axis1"], ["w_b"]),
            helper.make_node("Concat", ["w_b", "w_a"], ["w"], axis=1),
            helper.make_node("Shape", ["x"], ["x_shape"]),
            helper.make_node("Size", ["x_shape"], ["x_rank"]),
            helper.make_node("Equal", ["x_rank", "zero"], ["empty"]),
            helper.make_node("If", ["empty"], ["h_act"], then_branch=guard_then, else_branch=guard_else),
            helper.make_node("MatMul", ["h_act", "w"], ["h_lin"]),
            helper.make_node("Add", ["h_lin", "x"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", B, []),
         helper.make_tensor_value_info("h_in", F, [2, 4])],
        [helper.make_tensor_value_info("cond_out", B, []), helper.make_tensor_value_info("h_out", F, [2, 4])],
        initializer=[helper.make_tensor("s0", I64, [1], [0]), helper.make_tensor("s1", I64, [1], [2]),
                     helper.make_tensor("s2", I64, [1], [4]), helper.make_tensor("axis1", I64, [1], [1]),
                     helper.make_tensor("zero", I64, [], [0])],
    )  # fmt: skip
    rng = np.random.default_rng(11)
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "h0"], ["h"], body=body)],
        "cell_loop",
        [helper.make_tensor_value_info("x", F, [2, 4]), helper.make_tensor_value_info("n", I64, []),
         helper.make_tensor_value_info("h0", F, [2, 4])],
        [helper.make_tensor_value_info("h", F, [2, 4])],
        initializer=[helper.make_tensor("W", F, [4, 4], (0.5 * rng.standard_normal(16)).astype(np.float32))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    engine = build(model, "cpu", BuilderConfig(tuning_level=0, input_shapes={"n": []}))
    session = onnxruntime_session(model.SerializeToString(), threads=1)
    names = [o.name for o in session.get_outputs()]

    def check(runner: Engine, seed: int) -> list[str]:
        feeds = {
            "x": rng.standard_normal((2, 4)).astype(np.float32),
            "n": np.array(3 + seed, np.int64),
            "h0": rng.standard_normal((2, 4)).astype(np.float32),
        }
        context = runner.create_context()
        got = context.run(feeds)
        for name, want in zip(names, session.run(names, feeds), strict=True):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
        (loop,) = [k for k in runner.kernels if k.node.op_type == "Loop"]
        schedule = context.prepared[loop.node.name].scratch["schedules"]["body"]
        return [step.node.op_type for step in schedule.steps]

    steps = check(engine, 0)
    assert steps == ["Tanh", "MatMul", "Add", "Identity"], steps
    loaded = Engine.from_bytes(engine.to_bytes())
    assert check(loaded, 1) == steps


def test_stored_body_tactics_that_do_not_fit_the_body_are_picked_again() -> None:
    """An engine whose stored body tactics no longer fit the simplified body (another compiler
    simplified it differently: other node count, or another op at a position) rebuilds the
    schedule by picking each node's tactic instead of running a wrong one."""
    from farm.compiler.kernels.cpu.control_flow import NestedSchedule

    model = nested_control_flow_model()
    engine = build(model, "cpu", BuilderConfig(tuning_level=0, input_shapes={"n": []}))
    (loop,) = [k for k in engine.kernels if k.node.op_type == "Loop"]
    params = loop.prepared.params
    scope = {k: (v[0], v[1]) for k, v in params["scope"].items()}
    right = params["tactics"]["body"]
    for wrong in (right[:-1], ["cpu.control_flow.scan"] * len(right)):
        schedule = NestedSchedule(loop.node.attrs["body"], scope, wrong)
        assert [s.tactic.name for s in schedule.steps] == right
