"""LayerNorm, Softmax, activations and broadcasting binary ops against float64 numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, activation_oracle, assert_close

from farm.compiler.kernels import get_tactic


@pytest.mark.parametrize(
    ("shape", "axis", "with_bias", "op_type"),
    [
        ((2, 7, 33), -1, True, "LayerNorm"),
        ((3, 4, 5, 6), 2, False, "LayerNorm"),
        ((8, 256), -1, True, "LayerNormalization"),
        ((4, 160, 96), -1, True, "LayerNorm"),
    ],
)
@pytest.mark.parametrize("const_params", [True, False])
def test_layernorm_matches_oracle(
    rng: np.random.Generator, shape: tuple, axis: int, with_bias: bool, op_type: str, const_params: bool
) -> None:
    """Constant scale and bias are broadcast once in ``prepare``; runtime ones on every run."""
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(np.float32)
    normalized = shape[axis % len(shape) :]
    scale = rng.standard_normal(normalized).astype(np.float32)
    bias = rng.standard_normal(normalized).astype(np.float32) if with_bias else None
    axes = tuple(range(axis % len(shape), len(shape)))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + 1e-5) * scale + (0 if bias is None else bias)
    one = (
        OneNode(op_type, {"axis": axis, "epsilon": 1e-5})
        .feed("x", x)
        .feed("scale", scale, const=const_params)
    )
    if bias is not None:
        one.feed("bias", bias, const=const_params)
    one.build(shape)
    assert_close(one.run_tactic("cpu.norm.layernorm"), one.expected(lambda *_: expected))
    prepared = get_tactic("cpu.norm.layernorm").prepare(one.node, one.graph)
    assert ("scale" in prepared.tensors) == const_params


def test_layernorm_broadcast_constant_scale(rng: np.random.Generator) -> None:
    """A scale and bias of a lower rank than the normalized axes broadcast to them (ONNX
    LayerNormalization allows it), also when prepared once."""
    x = rng.standard_normal((3, 4, 10)).astype(np.float32)
    scale = rng.standard_normal((10,)).astype(np.float32)
    bias = rng.standard_normal((1, 10)).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(1, 2), keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + 1e-5) * scale + bias
    one = OneNode("LayerNormalization", {"axis": 1, "epsilon": 1e-5}).feed("x", x)
    one.feed("scale", scale, const=True).feed("bias", bias, const=True)
    one.build(x.shape)
    assert_close(one.run_tactic("cpu.norm.layernorm"), one.expected(lambda *_: expected))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((3, 17), -1),
        ((2, 5, 7), 1),
        ((2, 3, 4, 5), 0),
        ((4, 4, 128, 128), -1),
        ((6, 300, 40), 1),
        ((5, 3), -1),  # rows shorter than one vector
        ((7, 32), -1),  # whole vectors, no tail
        ((3, 1000), -1),  # a classifier's logits
    ],
)
def test_softmax_any_axis(rng: np.random.Generator, shape: tuple, axis: int) -> None:
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    one = OneNode("Softmax", {"axis": axis}).feed("x", x)
    one.build(shape)
    assert_close(one.run_tactic("cpu.norm.softmax"), one.expected(lambda *_: _softmax(x, axis)))


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_into_a_strided_output(rng: np.random.Generator, axis: int) -> None:
    """``run`` into an output view that is not C-contiguous: the kernel writes a dense buffer
    that is copied into the view (a reshape of the view would have been a copy, and the result
    lost)."""
    x = (rng.standard_normal((3, 6, 40)) * 4).astype(np.float32)
    one = OneNode("Softmax", {"axis": axis}).feed("x", x)
    one.build(x.shape)
    tactic = get_tactic("cpu.norm.softmax")
    prepared = tactic.prepare(one.node, one.graph)
    wide = np.full((3, 6, 80), np.nan, np.float32)
    view = wide[:, :, ::2]
    tactic.run(one.node, [x], [view], prepared)
    assert_close(view, one.expected(lambda *_: _softmax(x, axis)))
    assert np.isnan(wide[:, :, 1::2]).all()


@pytest.mark.parametrize("length", [3, 16, 45])
def test_softmax_rows_with_masked_logits(rng: np.random.Generator, length: int) -> None:
    """Both row kernels (16-lane vectors on AVX-512 hosts, the row loops elsewhere) on logits
    masked with -inf and with -1e4 as exporters write them: masked entries get exactly 0, a
    row masked everywhere but one entry gets 1 there, and large logits do not overflow."""
    from farm.compiler.kernels.cpu.norm import softmax_rows, softmax_rows_vector

    x = (rng.standard_normal((9, length)) * 30).astype(np.float32)
    x[0, ::2] = -np.inf
    x[1, :] = -np.inf
    x[1, length // 2] = 5.0
    x[2, 1::2] = -10000.0
    x[3] += 80.0
    expected = _softmax(x, -1)
    for kernel in (softmax_rows_vector, softmax_rows):
        got = np.full_like(x, np.nan)
        kernel(x, got)
        assert_close(got, expected)
        assert np.all(got[0, ::2] == 0) and got[1, length // 2] == 1.0


def test_vector_softmax_keeps_nan_rows_nan(rng: np.random.Generator) -> None:
    """A NaN logit makes its whole row NaN, as in float64 (``vexp16`` passes NaN through rather
    than treating it as a masked value); the other rows are unaffected."""
    from farm.compiler.kernels.cpu.norm import softmax_rows_vector

    x = rng.standard_normal((3, 21)).astype(np.float32)
    x[1, 4] = np.nan
    x[2, 20] = np.nan  # in the masked tail
    got = np.zeros_like(x)
    softmax_rows_vector(x, got)
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
    assert_close(got[0], _softmax(x[:1], -1)[0])


def test_softmax_opset_11_flattens_from_axis(rng: np.random.Generator) -> None:
    """Softmax-11 coerces the input to 2-D [prod(shape[:axis]), prod(shape[axis:])]; checked
    against ONNX Runtime itself (the reference interpreter uses opset-13 semantics here)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
            "softmax11",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        ),
        opset_imports=[helper.make_opsetid("", 11)],
        ir_version=7,
    )
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    assert_close(expected, _softmax(x.reshape(2, 12), -1).reshape(x.shape))
    one = OneNode("Softmax", {"axis": 1}).feed("x", x)
    one.graph.opset, one.graph.opsets = 11, {"": 11}
    one.build(x.shape)
    assert_close(one.run_tactic("cpu.norm.softmax"), expected)


@pytest.mark.parametrize(
    ("op_type", "attrs", "oracle_args"),
    [
        ("Relu", {}, ("Relu", 0.0, 0.0)),
        ("LeakyRelu", {"alpha": 0.2}, ("LeakyRelu", 0.2, 0.0)),
        ("Sigmoid", {}, ("Sigmoid", 0.0, 0.0)),
        ("Tanh", {}, ("Tanh", 0.0, 0.0)),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, ("HardSigmoid", 0.3, 0.4)),
        ("HardSwish", {}, ("HardSwish", 0.0, 0.0)),
        ("Gelu", {}, ("Gelu", 0.0, 0.0)),
        ("Gelu", {"approximate": "tanh"}, ("GeluTanh", 0.0, 0.0)),
    ],
)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 64, 40, 13)])
def test_activation_ops(
    rng: np.random.Generator, op_type: str, attrs: dict, oracle_args: tuple, shape: tuple
) -> None:
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    one = OneNode(op_type, attrs).feed("x", x)
    one.build(shape)
    name, alpha, beta = oracle_args
    assert_close(
        one.run_tactic("cpu.elementwise.activation"),
        one.expected(lambda *_: activation_oracle(name, x, alpha, beta)),
    )


def test_clip_with_min_max_inputs(rng: np.random.Generator) -> None:
    x = (rng.standard_normal((4, 33)) * 5).astype(np.float32)
    one = (
        OneNode("Clip")
        .feed("x", x)
        .feed("lo", np.array(-1.5, np.float32), const=True)
        .feed("hi", np.array(2.0, np.float32), const=True)
    )
    one.build(x.shape)
    assert_close(one.run_tactic("cpu.elementwise.activation"), one.expected(lambda *_: np.clip(x, -1.5, 2.0)))


BINARY_SHAPES = [
    ((2, 3, 4, 5), (2, 3, 4, 5)),  # same shape
    ((2, 16, 9, 9), (2, 16, 1, 1)),  # squeeze-and-excitation gate
    ((3, 7, 33), (33,)),  # bias over the last axis
    ((5, 6), ()),  # scalar
    ((1,), (4, 5)),  # scalar first (reversed operands)
    ((16, 1, 9), (1, 8, 9)),  # both broadcast: numpy fallback
    ((4, 64, 256), (4, 64, 256)),  # parallel path
]


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize(("a_shape", "b_shape"), BINARY_SHAPES)
def test_binary_broadcasting(rng: np.random.Generator, op_type: str, a_shape: tuple, b_shape: tuple) -> None:
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    if op_type == "Div":
        b = np.where(np.abs(b) < 0.1, 0.5, b).astype(np.float32)
        a = np.where(np.abs(a) < 0.1, 0.5, a).astype(np.float32)
    ufunc = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op_type]
    expected = ufunc(a.astype(np.float64), b.astype(np.float64))
    one = OneNode(op_type).feed("a", a).feed("b", b)
    one.build(expected.shape)
    assert_close(one.run_tactic("cpu.elementwise.binary"), one.expected(lambda *_: expected))


def test_elementwise_declines_other_dtypes() -> None:
    one = OneNode("Add").feed("a", np.arange(6, dtype=np.int64)).feed("b", np.arange(6, dtype=np.int64))
    one.build((6,), "int64")
    assert not get_tactic("cpu.elementwise.binary").supports(one.node, one.graph)


def test_softmax_masked_entries_are_zero_not_subnormal(rng: np.random.Generator) -> None:
    """Scores 10000 below the row max (a padding mask) give exactly 0, as exp does in float64;
    the clamped exp used to leave ~1e-39 subnormals, which slow down whatever reads them."""
    x = (rng.standard_normal((5, 3, 40)) * 3).astype(np.float32)
    x[..., 30:] -= 10000.0
    one = OneNode("Softmax", {"axis": -1}).feed("x", x)
    one.build(x.shape)
    got = one.run_tactic("cpu.norm.softmax")
    assert_close(got, one.expected(lambda *_: _softmax(x, -1)))
    tiny = np.finfo(np.float32).tiny
    assert not np.any((got != 0) & (np.abs(got) < tiny))
    assert np.all(got[..., 30:] == 0)


@pytest.mark.parametrize(
    ("op_type", "tactic_name"),
    [
        ("Relu", "cpu.elementwise.activation"),
        ("Add", "cpu.elementwise.binary"),
        ("LayerNormalization", "cpu.norm.layernorm"),
        ("GlobalAveragePool", "cpu.pool.global_average"),
    ],
)
def test_run_copies_strided_inputs(rng: np.random.Generator, op_type: str, tactic_name: str) -> None:
    """``run`` (bind with copies) reads a transposed, non-contiguous input correctly, where the
    runtime's binding (no copies) declines it."""
    base = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    x = base.transpose(0, 3, 2, 1)  # (2, 3, 5, 6), strided
    assert not x.flags.c_contiguous
    one = OneNode(op_type, {"axis": -1} if op_type == "LayerNormalization" else {}).feed(
        "x", np.ascontiguousarray(x)
    )
    other = rng.standard_normal((6,)).astype(np.float32)
    if op_type == "Add":
        one.feed("b", other)
    elif op_type == "LayerNormalization":
        one.feed("scale", other, const=True)
    out_shape = (2, 3, 1, 1) if op_type == "GlobalAveragePool" else x.shape
    one.build(out_shape)
    tactic = get_tactic(tactic_name)
    prepared = tactic.prepare(one.node, one.graph)
    inputs = [None if i in prepared.replaces else a for i, a in enumerate(one.arrays())]
    inputs[0] = x
    out = np.full(out_shape, np.nan, np.float32)
    tactic.run(one.node, inputs, [out], prepared)
    contiguous = np.full(out_shape, np.nan, np.float32)
    tactic.run(one.node, [np.ascontiguousarray(x), *inputs[1:]], [contiguous], prepared)
    np.testing.assert_array_equal(out, contiguous)
    assert_close(out, one.expected(lambda *_: _reference(op_type, x, other)))
    assert tactic.bind(one.node, inputs, [out], prepared) is None


def _reference(op_type: str, x: np.ndarray, other: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    if op_type == "Relu":
        return np.maximum(x64, 0.0)
    if op_type == "Add":
        return x64 + other
    if op_type == "GlobalAveragePool":
        return x64.mean(axis=(2, 3), keepdims=True)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + 1e-5) * other
