"""Bound steps (``Tactic.bind``): a step whose arrays are the same every run calls the kernel
bound once per shape signature and thread setting. A bound call must read the arena as it is
at each run: a copy or a value taken while binding would go stale on the next run."""

from __future__ import annotations

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.frontend import infer_shapes
from farm.compiler.ir import Graph
from farm.compiler.kernels.registry import get_tactic


def _inverted_residual(seed: int = 0) -> Graph:
    """x [batch, 8, 12, 12] -> 1x1 conv 8->16 + Relu -> depthwise 3x3 + Clip -> 1x1 conv 16->8
    + x -> Relu -> GlobalAveragePool, and a Mul by a per-channel scale (MobileNet's blocks)."""
    rng = np.random.default_rng(seed)
    g = Graph("inverted_residual")
    g.add_input("x", "float32", ("batch", 8, 12, 12))

    def const(name: str, shape: tuple[int, ...]) -> None:
        g.add_const(name, rng.standard_normal(shape).astype(np.float32) * 0.3)

    const("w1", (16, 8, 1, 1))
    const("b1", (16,))
    const("w2", (16, 1, 3, 3))
    const("b2", (16,))
    const("w3", (8, 16, 1, 1))
    const("b3", (8,))
    const("scale", (1, 8, 1, 1))
    g.add_const("lo", np.array(0.0, np.float32))
    g.add_const("hi", np.array(6.0, np.float32))
    g.add_node("Conv", ["x", "w1", "b1"], ["e"], {"kernel_shape": [1, 1]})
    g.add_node("Relu", ["e"], ["er"])
    g.add_node("Conv", ["er", "w2", "b2"], ["d"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 16})
    g.add_node("Clip", ["d", "lo", "hi"], ["dc"])
    g.add_node("Conv", ["dc", "w3", "b3"], ["p"], {"kernel_shape": [1, 1]})
    g.add_node("Add", ["p", "x"], ["s"])
    g.add_node("Relu", ["s"], ["sr"])
    g.add_node("Mul", ["sr", "scale"], ["m"])
    g.add_node("GlobalAveragePool", ["m"], ["y"])
    g.outputs = ["y", "m"]
    infer_shapes(g, {"x": ("batch", 8, 12, 12)})
    return g


def test_bound_steps_read_each_runs_inputs() -> None:
    """Runs with new data, other batch sizes, back to an earlier one, and another thread
    setting all match the reference: no bound call keeps what an earlier run left."""
    graph = _inverted_residual()
    engine = build(graph, config=BuilderConfig(tuning_level=0, batch_range=(1, 2, 3)))
    context = engine.create_context()
    schedule = [(2, 0), (2, 1), (1, 2), (3, 3), (2, 0), (2, 4)]
    for batch, seed in schedule:
        x = np.random.default_rng(seed).standard_normal((batch, 8, 12, 12)).astype(np.float32)
        got, want = context.run({"x": x}), reference.run(graph, {"x": x})
        for name in ("y", "m"):
            np.testing.assert_allclose(
                got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{name} b{batch} s{seed}"
            )
    bound = [s for b in context._bound.values() for s in b.steps if s.call is not None]
    assert {s.kernel.tactic.name for s in bound} & {
        "cpu.conv.pointwise_tiles", "cpu.conv.pointwise_direct", "cpu.conv.depthwise_slide",
        "cpu.conv.depthwise_rows", "cpu.conv.depthwise_plane",
    }  # fmt: skip
    # another thread setting binds again (task plans depend on the thread count)
    keys = len(context._bound)
    context.threads = (1, 1) if context._thread_args != (1, 1) else (1, 2)
    x = np.random.default_rng(9).standard_normal((2, 8, 12, 12)).astype(np.float32)
    got, want = context.run({"x": x}), reference.run(graph, {"x": x})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-5)
    assert len(context._bound) == keys + 1


@pytest.mark.parametrize(
    "tactic",
    [
        "cpu.conv.pointwise_tiles",
        "cpu.conv.pointwise_direct",
        "cpu.conv.depthwise_slide",
        "cpu.conv.depthwise_rows",
        "cpu.elementwise.binary",
        "cpu.elementwise.activation",
        "cpu.pool.global_average",
        "cpu.conv.tiled_gemm",
        "cpu.conv.pointwise16",
        "cpu.conv.packed16",
        "cpu.conv.channel_lanes",
        "cpu.conv.im2col_tiles",
        "cpu.pool.window",
        "cpu.pool.separable",
        "cpu.pool.rows",
        "cpu.norm.softmax",
        "cpu.conv_transpose.tiles",
        "cpu.conv_transpose.bands",
    ],
)
def test_bind_declines_what_it_would_have_to_copy(tactic: str) -> None:
    """Given a non-contiguous input, ``bind`` returns None (the runtime then calls ``run``,
    which copies every run) instead of binding a copy made once."""
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((1, 8, 12, 24)).astype(np.float32)
    x = wide[:, :, :, ::2]  # strided view: [1, 8, 12, 12]
    assert not x.flags.c_contiguous
    out = np.empty((1, 8, 12, 12), np.float32)
    graph = Graph("one")
    graph.add_input("x", "float32", (1, 8, 12, 12))
    if tactic.startswith("cpu.conv_transpose"):
        graph.add_const("w", rng.standard_normal((8, 4, 2, 2)).astype(np.float32))
        graph.add_node("ConvTranspose", ["x", "w"], ["y"], {"strides": [2, 2]})
        out = np.empty((1, 4, 24, 24), np.float32)
    elif tactic.startswith("cpu.conv.depthwise"):
        graph.add_const("w", rng.standard_normal((8, 1, 3, 3)).astype(np.float32))
        graph.add_node("Conv", ["x", "w"], ["y"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 8})
    elif tactic in ("cpu.conv.packed16", "cpu.conv.channel_lanes", "cpu.conv.im2col_tiles"):
        graph.add_const("w", rng.standard_normal((32, 8, 3, 3)).astype(np.float32))
        graph.add_node("Conv", ["x", "w"], ["y"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
        out = np.empty((1, 32, 12, 12), np.float32)
    elif tactic.startswith("cpu.conv"):
        graph.add_const("w", rng.standard_normal((8, 8, 1, 1)).astype(np.float32))
        graph.add_node("Conv", ["x", "w"], ["y"], {"kernel_shape": [1, 1]})
    elif tactic == "cpu.elementwise.binary":
        graph.add_node("Add", ["x", "x"], ["y"])
    elif tactic == "cpu.elementwise.activation":
        graph.add_node("Relu", ["x"], ["y"])
    elif tactic == "cpu.norm.softmax":
        graph.add_node("Softmax", ["x"], ["y"], {"axis": -1})
    elif tactic.startswith("cpu.pool.") and tactic != "cpu.pool.global_average":
        graph.add_node("MaxPool", ["x"], ["y"], {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]})
    else:
        graph.add_node("GlobalAveragePool", ["x"], ["y"])
        out = np.empty((1, 8, 1, 1), np.float32)
    graph.outputs = ["y"]
    infer_shapes(graph, {"x": (1, 8, 12, 12)})
    node = graph.nodes[0]
    chosen = get_tactic(tactic)
    if not chosen.supports(node, graph):  # channel_lanes needs AVX-512, tiled_gemm BLAS from numba
        pytest.skip(f"{tactic} is not offered on this host")
    prepared = chosen.prepare(node, graph)
    inputs = [
        None if i in prepared.replaces else (x if name == "x" else graph.const(name))
        for i, name in enumerate(node.inputs)
    ]
    assert chosen.bind(node, inputs, [out], prepared) is None
    dense = [np.ascontiguousarray(v) if v is not None else None for v in inputs]
    call = chosen.bind(node, dense, [out], prepared)
    assert call is not None
    call()
    want = reference.run(graph, {"x": np.ascontiguousarray(x)})["y"]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    # ``run`` still serves the strided input (it copies)
    out2 = np.empty_like(out)
    chosen.run(node, inputs, [out2], prepared)
    np.testing.assert_allclose(out2, want, rtol=1e-4, atol=1e-5)


def test_a_subclass_that_wraps_run_is_not_bypassed_by_an_inherited_bind() -> None:
    """``SingleThreadBlas`` wraps its parent's ``run``; had the parent a ``bind``, the runtime
    must still call the wrapper."""
    from farm.compiler.kernels.cpu._threads import SingleThreadBlas
    from farm.compiler.kernels.registry import Tactic, binds

    class Parent(Tactic):
        def run(self, node, inputs, outputs, prepared):  # type: ignore[no-untyped-def]
            pass

        def bind(self, node, inputs, outputs, prepared):  # type: ignore[no-untyped-def]
            return lambda: None

    class Wrapped(SingleThreadBlas, Parent):
        pass

    class Plain(Parent):
        pass

    assert binds(Parent()) and binds(Plain())
    assert not binds(Wrapped())
    assert not binds(Tactic())


def test_small_feeds_and_outputs_are_staged_so_every_step_binds() -> None:
    """A feed and an output under ``STAGE_BYTES`` get buffers of the binding (copied in and out),
    so the first and last layers bind too; each run still returns fresh arrays of its own
    values, and a strided feed is read correctly."""
    from runtime_testgraphs import conv_mlp_graph

    from farm.compiler.engine.runtime import STAGE_BYTES

    graph = conv_mlp_graph(batch=2)
    engine = build(graph, config=BuilderConfig(tuning_level=0, optimize=False))
    context = engine.create_context()
    results = []
    for seed in (0, 1):
        wide = np.random.default_rng(seed).standard_normal((2, 3, 8, 16)).astype(np.float32)
        x = wide[:, :, :, ::2]  # a strided feed
        got = context.run({"x": x})
        np.testing.assert_allclose(
            got["y"], reference.run(graph, {"x": np.ascontiguousarray(x)})["y"], rtol=1e-4, atol=1e-5
        )
        results.append(got["y"])
    assert not np.array_equal(results[0], results[1])  # the first result was not overwritten
    (bound,) = context._bound.values()
    assert bound.staged == ["x"] and STAGE_BYTES >= 2 * 3 * 8 * 8 * 4
    kernels = [s for s in bound.steps if s.mode == "kernel"]
    assert all(not s.in_patch and not s.out_patch for s in kernels)
    results[1][:] = 0.0  # a returned array is the caller's: the next run is unaffected
    again = context.run({"x": np.ascontiguousarray(x)})["y"]
    assert np.abs(again).sum() > 0 and again is not results[1]


def test_bound_steps_are_the_runs_steps_and_replay_alone() -> None:
    """``bound_steps(feeds)`` lists the run's kernels in schedule order, bound to the context's
    arena (asking before any run binds the signature once, and the run reuses it); replayed
    one by one after a run, as ``layer_cache_state.py`` does, the steps leave every buffer as
    the run left it."""
    graph = _inverted_residual()
    engine = build(graph, config=BuilderConfig(tuning_level=0, batch_range=(1, 2, 3)))
    context = engine.create_context()
    x = np.random.default_rng(5).standard_normal((2, 8, 12, 12)).astype(np.float32)
    steps = context.bound_steps({"x": x})
    assert [s.kernel.node.name for s in steps] == [k.node.name for k in engine.kernels]
    context.run({"x": x})
    assert len(context._bound) == 1 and context.bound_steps({"x": x})[0] is steps[0]
    kernels = [s for s in steps if s.mode == "kernel"]
    assert kernels and all(not s.in_patch and not s.out_patch for s in kernels)  # all staged
    outs = [o for s in kernels for o in s.outs if o is not None]
    after_run = [o.copy() for o in outs]
    for o in outs:
        o[...] = np.nan
    for s in kernels:
        if s.call is not None:
            s.call()
        else:
            s.kernel.tactic.run(s.kernel.node, s.ins, s.outs, s.prepared)
    for o, want in zip(outs, after_run, strict=True):
        np.testing.assert_array_equal(o, want)


def _light_ops_and_lstm() -> Graph:
    """A streaming audio model's light ops around one LSTM (Silero VAD's shape of graph):
    Pow, Sqrt, Gather of the state, LSTM with initial states, Concat of the new state,
    ReduceMean, Greater/Where, Cast, Split and Transpose."""
    rng = np.random.default_rng(3)
    g = Graph("light_ops_lstm", opset=18)
    g.add_input("x", "float32", (5, 2, 8))
    g.add_input("state", "float32", (2, 1, 2, 16))
    g.add_const("two", np.array(2.0, np.float32))
    g.add_const("zero", np.array(0.0, np.float32))
    g.add_const("first", np.array(0, np.int64))
    g.add_const("second", np.array(1, np.int64))
    g.add_const("W", (rng.standard_normal((1, 64, 8)) * 0.3).astype(np.float32))
    g.add_const("R", (rng.standard_normal((1, 64, 16)) * 0.3).astype(np.float32))
    g.add_const("B", (rng.standard_normal((1, 128)) * 0.1).astype(np.float32))
    g.add_node("Pow", ["x", "two"], ["p"])
    g.add_node("Sqrt", ["p"], ["q"])
    g.add_node("Gather", ["state", "first"], ["h0"], {"axis": 0})
    g.add_node("Gather", ["state", "second"], ["c0"], {"axis": 0})
    g.add_node("LSTM", ["q", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], {"hidden_size": 16})
    g.add_node("Concat", ["yh", "yc"], ["new_state"], {"axis": 0})
    g.add_node("ReduceMean", ["y"], ["mean"], {"axes": [0], "keepdims": 0})
    g.add_node("Greater", ["mean", "zero"], ["positive"])
    g.add_node("Neg", ["mean"], ["negative"])
    g.add_node("Where", ["positive", "mean", "negative"], ["magnitude"])
    g.add_node("Cast", ["magnitude"], ["wide"], {"to": 11})
    g.add_node("Split", ["yh"], ["left", "right"], {"axis": 2, "num_outputs": 2})
    g.add_node("Transpose", ["left"], ["left_t"], {"perm": [2, 1, 0]})
    g.outputs = ["new_state", "wide", "left_t", "right"]
    infer_shapes(g, {"x": (5, 2, 8), "state": (2, 1, 2, 16)})
    return g


def test_light_ops_and_recurrent_layers_bind_and_read_each_runs_data() -> None:
    """The numpy tactics of the light ops and the fused LSTM bind (a streaming model's run is
    mostly such steps, ~1-15 us of Python each when unbound), and bound they compute each
    run's data: several runs with new feeds match the reference."""
    graph = _light_ops_and_lstm()
    engine = build(graph, config=BuilderConfig(tuning_level=0))
    context = engine.create_context()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        feeds = {
            "x": rng.standard_normal((5, 2, 8)).astype(np.float32),
            "state": rng.standard_normal((2, 1, 2, 16)).astype(np.float32),
        }
        got, want = context.run(feeds), reference.run(graph, feeds)
        for name in graph.outputs:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=f"{name} s{seed}")
    (bound,) = context._bound.values()
    steps = {s.kernel.tactic.name: s for s in bound.steps if s.mode == "kernel"}
    light = {"cpu.numpy.unary", "cpu.numpy.binary", "cpu.numpy.copy", "cpu.numpy.where", "cpu.numpy.reduce"}
    assert light | {"cpu.recurrent.fused"} <= set(steps)
    assert all(
        s.call is not None for s in bound.steps if s.kernel.tactic.name in light | {"cpu.recurrent.fused"}
    )
