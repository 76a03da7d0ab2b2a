"""INT8 and FP16/BF16 tactics against a reference that emulates the reduced precision.

Oracle: ``farm.compiler.reference`` on a graph where the INT8 layer's input and weight went
through quantize -> dequantize with the layer's own scales (``fake_quantized_graph``), or whose
weight was rounded to FP16/BF16. Fresh random inputs, never zeros; tolerances per precision:
INT8 kernels must match the emulation to FP32 summation error (plus a rare one-step rounding
flip), FP16/BF16 twins to FP32 GEMM error.
"""

from __future__ import annotations

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.ir import Graph, Node
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu._vnni import VNNI
from farm.compiler.kernels.cpu.reduced_float import bf16_bits_to_float32, round_float32, round_to_bf16_bits
from farm.compiler.precision.quantize import (
    ActivationQuant,
    fake_quantized_graph,
    quantize_weight,
    set_activation_quant,
    weight_scales,
)


def _conv_graph(rng: np.random.Generator, x_shape: tuple[int, ...], m: int, k: int, stride: int, pad: int,
                activation: str, residual: bool, op: str = "FusedConv") -> tuple[Graph, Node]:  # fmt: skip
    spatial = len(x_shape) - 2
    g = Graph("conv")
    g.add_input("x", "float32", x_shape)
    g.add_const("w", rng.standard_normal((m, x_shape[1], *[k] * spatial)).astype(np.float32))
    g.add_const("b", rng.standard_normal(m).astype(np.float32))
    out_sp = [(d + 2 * pad - k) // stride + 1 for d in x_shape[2:]]
    out_shape = (x_shape[0], m, *out_sp)
    inputs = ["x", "w", "b"]
    attrs: dict = {"pads": [pad] * (2 * spatial), "strides": [stride] * spatial, "dilations": [1] * spatial,
                   "group": 1, "kernel_shape": [k] * spatial}  # fmt: skip
    if op == "FusedConv":
        attrs.update(activation=activation, alpha=-1.0 if activation == "Clip" else 0.0, beta=1.0 if activation == "Clip" else 0.0)
        if residual:
            g.add_input("r", "float32", out_shape)
            inputs.append("r")
            attrs["residual"] = "pre"
    node = g.add_node(op, inputs, ["y"], attrs, name="layer")
    g.add_value("y", "float32", out_shape)
    g.outputs = ["y"]
    return g, node


def _gemm_graph(rng: np.random.Generator, a_shape: tuple[int, ...], n: int, trans_b: int, activation: str) -> tuple[Graph, Node]:  # fmt: skip
    k = a_shape[-1]
    g = Graph("gemm")
    g.add_input("a", "float32", a_shape)
    w_shape = (n, k) if trans_b else (k, n)
    g.add_const("w", (rng.standard_normal(w_shape) / np.sqrt(k)).astype(np.float32))
    g.add_const("b", rng.standard_normal(n).astype(np.float32))
    attrs = {"transB": trans_b, "activation": activation, "alpha": 0.0, "beta": 0.0}
    node = g.add_node("FusedGemm", ["a", "w", "b"], ["y"], attrs, name="layer")
    g.add_value("y", "float32", (*a_shape[:-1], n))
    g.outputs = ["y"]
    return g, node


def _run_tactic(name: str, g: Graph, node: Node, feeds: dict[str, np.ndarray]) -> np.ndarray:
    tactic = get_tactic(name)
    assert tactic.supports(node, g), f"{name} does not support {node}"
    prepared = tactic.prepare(node, g)
    inputs = [None if i in prepared.replaces else (feeds.get(v) if v in feeds else g.const(v))
              for i, v in enumerate(node.inputs)]  # fmt: skip
    out = np.full(g.values["y"].shape, np.nan, np.float32)
    tactic.run(node, inputs, [out], prepared)
    return out


def _assert_matches_emulation(got: np.ndarray, want: np.ndarray, step: float) -> None:
    # FP32 summation order, plus an input element whose rounding flips at a .5 boundary (at most
    # one quantization step of one input times the largest weight row).
    assert np.all(np.isfinite(got))
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 1e-4, rel
    assert np.max(np.abs(got - want)) < 4 * step + 1e-4 * np.max(np.abs(want))


QUANTS = [ActivationQuant(4.0 / 127), ActivationQuant(8.0 / 255, 128, "uint8"), ActivationQuant(2.0 / 127)]
NEEDS_VNNI = pytest.mark.skipif(not VNNI, reason="this CPU has no AVX-512 VNNI")
CONV_TACTICS = ["cpu.int8.conv_im2col", *(pytest.param(t, marks=NEEDS_VNNI) for t in ("cpu.int8.conv_vnni", "cpu.int8.conv_tiles"))]
GEMM_TACTICS = ["cpu.int8.gemm", pytest.param("cpu.int8.gemm_vnni", marks=NEEDS_VNNI)]


@pytest.mark.parametrize("tactic", CONV_TACTICS)
@pytest.mark.parametrize("quant", QUANTS, ids=["int8", "uint8-zp", "int8-clipping"])
@pytest.mark.parametrize(
    ("x_shape", "m", "k", "stride", "pad", "activation", "residual", "op"),
    [
        ((2, 5, 11, 9), 7, 3, 1, 1, "Relu", False, "FusedConv"),
        ((1, 6, 10, 10), 12, 3, 2, 1, "", True, "FusedConv"),
        ((2, 8, 7, 7), 9, 1, 1, 0, "Clip", False, "FusedConv"),
        ((3, 4, 13), 6, 3, 1, 1, "Sigmoid", False, "FusedConv"),
        ((2, 6, 9, 21), 10, 3, 1, 1, "Silu", True, "FusedConv"),  # YOLO's conv + SiLU, in the stores
        ((2, 8, 8, 8), 16, 1, 2, 0, "", False, "Conv"),
        ((1, 13, 9, 7), 53, 3, 1, 1, "Relu", True, "FusedConv"),  # 3 panels, a 13-row tail, odd K
        ((2, 5, 9, 37), 14, 3, 1, 1, "Relu", False, "FusedConv"),  # rows of 16 + 16 + 5 pixels
        ((1, 3, 11, 37), 16, 3, 2, 1, "Clip", False, "FusedConv"),  # stride 2, a 3-channel stem
        ((1, 4, 12, 12), 8, 3, 3, 0, "", False, "FusedConv"),  # stride 3: element by element
    ],
)
def test_int8_conv_matches_fake_quant(tactic, quant, x_shape, m, k, stride, pad, activation, residual, op):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(hash((x_shape, m, k)) % 2**32)
    g, node = _conv_graph(rng, x_shape, m, k, stride, pad, activation, residual, op)
    set_activation_quant(node, quant)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32) * 1.5}
    if residual:
        feeds["r"] = rng.standard_normal(g.values["y"].shape).astype(np.float32)
    want = reference.run(fake_quantized_graph(g), feeds)["y"]
    got = _run_tactic(tactic, g, node, feeds)
    w_max = float(np.max(np.abs(g.const("w"))))
    _assert_matches_emulation(got, want, quant.scale * w_max)
    # and it really is INT8: the FP32 result differs by quantization noise
    fp32 = reference.run(g, feeds)["y"]
    assert np.linalg.norm(got - fp32) / np.linalg.norm(fp32) > 1e-4


@pytest.mark.parametrize("tactic", GEMM_TACTICS)
@pytest.mark.parametrize("quant", QUANTS[:2], ids=["int8", "uint8-zp"])
@pytest.mark.parametrize(
    ("a_shape", "n", "trans_b", "activation"),
    [((5, 33), 19, 1, "Relu"), ((2, 7, 64), 48, 0, "Gelu"), ((1, 16), 10, 0, ""), ((3, 9, 70), 100, 1, "Relu")],
)
def test_int8_gemm_matches_fake_quant(tactic, quant, a_shape, n, trans_b, activation):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(n)
    g, node = _gemm_graph(rng, a_shape, n, trans_b, activation)
    set_activation_quant(node, quant)
    feeds = {"a": rng.standard_normal(a_shape).astype(np.float32)}
    want = reference.run(fake_quantized_graph(g), feeds)["y"]
    got = _run_tactic(tactic, g, node, feeds)
    _assert_matches_emulation(got, want, quant.scale * float(np.max(np.abs(g.const("w")))))


def test_vnni_weight_panels_put_four_k_values_of_sixteen_columns_in_each_vector() -> None:
    from farm.compiler.kernels.cpu.int8_vnni import pack_vnni_weight

    w = np.arange(-60, 60, dtype=np.int8).reshape(20, 6)  # N = 20 -> 2 panels, K = 6 -> 8
    packed = pack_vnni_weight(w).reshape(2, 2, 16, 4)  # [panel, K step, column, K value]
    assert packed[0, 0, 3].tolist() == w[3, 0:4].tolist()
    assert packed[1, 1, 2].tolist() == [*w[18, 4:6].tolist(), 0, 0]  # K padded with zeros
    assert not packed[1, :, 4:].any()  # columns past N are zeros


@NEEDS_VNNI
@pytest.mark.parametrize(("m", "n", "k"), [(1, 10, 7), (13, 17, 33), (25, 64, 64), (40, 49, 150), (12, 16, 4)])
def test_vnni_gemm_is_exact_integer_arithmetic_and_stores_only_its_tile(m: int, n: int, k: int) -> None:
    """Against int64 numpy on extreme codes (255 x -127 in every product of some rows): the
    tile's integer sums are exact, the dequantization is one FMA, and the columns past ``n`` in
    a wider output row keep what they held."""
    from farm.compiler.kernels.cpu.int8_vnni import MR, pack_vnni_weight, vnni_gemm

    rng = np.random.default_rng(m * 1000 + n)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    a[0] = 255
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    w[0] = -127
    kq = -(-k // 4)
    a_pad = np.full((-(-m // MR) * MR, 4 * kq), 77, np.uint8)  # padding is never read into a result
    a_pad[:m, :k] = a
    length = -(-n // 32) * 32
    zp = 9
    zw, scale, bias = np.zeros(length, np.int32), np.zeros(length, np.float32), np.zeros(length, np.float32)
    zw[:n] = zp * w.astype(np.int32).sum(axis=1)
    scale[:n] = rng.uniform(1e-4, 1e-2, n)
    bias[:n] = rng.standard_normal(n)
    acc = (a.astype(np.int64) - zp) @ w.astype(np.int64).T
    want = acc.astype(np.float64) * scale[:n] + bias[:n]
    # the rows as rows (a GEMM's input) and as the conv gather's quads [K/4, rows, 4]
    quads = np.ascontiguousarray(a_pad.reshape(a_pad.shape[0], kq, 4).transpose(1, 0, 2))
    for flat, rs, qs in ((a_pad.reshape(-1), 4 * kq, 4), (quads.reshape(-1), 4, 4 * a_pad.shape[0])):
        out = np.full((m, n + 5), np.nan, np.float32)
        vnni_gemm(flat, m, rs, qs, pack_vnni_weight(w), kq, n, zw, scale, bias, out.reshape(-1), n + 5)
        np.testing.assert_allclose(out[:, :n], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        assert np.isnan(out[:, n:]).all()


def test_int8_tactics_decline_layers_without_scales_or_groups() -> None:
    rng = np.random.default_rng(0)
    g, node = _conv_graph(rng, (1, 4, 6, 6), 4, 3, 1, 1, "", False)
    assert not get_tactic("cpu.int8.conv_im2col").supports(node, g)  # no scale recorded
    set_activation_quant(node, ActivationQuant(0.1))
    node.attrs["group"] = 2
    assert not get_tactic("cpu.int8.conv_im2col").supports(node, g)


def test_int8_weights_are_stored_as_int8_with_per_channel_scales() -> None:
    rng = np.random.default_rng(1)
    g, node = _gemm_graph(rng, (4, 32), 8, 1, "")
    g.const("w")[3] *= 100.0  # one channel with a much larger range keeps its own scale
    set_activation_quant(node, ActivationQuant(0.05))
    prepared = get_tactic("cpu.int8.gemm").prepare(node, g)
    assert prepared.tensors["weight"].dtype == np.int8
    assert prepared.replaces >= {1, 2}
    scales = prepared.tensors["weight_scale"]
    np.testing.assert_allclose(scales, np.max(np.abs(g.const("w")), axis=1) / 127, rtol=1e-6)
    assert np.max(np.abs(prepared.tensors["weight"][0])) == 127


def test_weight_quantization_is_symmetric_round_half_even() -> None:
    w = np.array([[1.0, -1.0, 0.5 / 127, 1.5 / 127]], np.float32)
    scales = weight_scales(w, 0)
    np.testing.assert_allclose(scales, [1.0 / 127])
    np.testing.assert_array_equal(quantize_weight(w, scales, 0), [[127, -127, 0, 2]])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("base", ["conv.im2col_gemm", "conv.pointwise_gemm", "gemm.blas", "gemm.small_rows"])
def test_reduced_weight_twins_match_rounded_weight_reference(precision: str, base: str) -> None:
    rng = np.random.default_rng(7)
    if base.startswith("conv"):
        k = 1 if "pointwise" in base else 3
        g, node = _conv_graph(rng, (2, 8, 9, 9), 16, k, 1, k // 2, "Relu", False)
        feeds = {"x": rng.standard_normal((2, 8, 9, 9)).astype(np.float32)}
    else:
        g, node = _gemm_graph(rng, (4, 96), 40, 1, "")
        feeds = {"a": rng.standard_normal((4, 96)).astype(np.float32)}
    name = f"cpu.{precision}w.{base}"
    tactic = get_tactic(name)
    prepared = tactic.prepare(node, g)
    stored = [t for t in prepared.tensors.values() if t.size >= 64]
    assert stored and all(t.dtype == (np.float16 if precision == "fp16" else np.uint16) for t in stored)
    got = _run_tactic(name, g, node, feeds)
    rounded = g.copy()
    rounded.values["w"].const = round_float32(g.const("w"), precision)
    want = reference.run(rounded, feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))
    fp32 = reference.run(g, feeds)["y"]
    rel = np.linalg.norm(got - fp32) / np.linalg.norm(fp32)
    assert 0 < rel < (2e-3 if precision == "fp16" else 1.5e-2)


def test_bf16_rounding_is_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.0e38], np.float32)
    back = bf16_bits_to_float32(round_to_bf16_bits(x))
    np.testing.assert_array_equal(back, np.array([1.0, 1.0, 1.0 + 2**-6, -2.5, back[-1]], np.float32))
    assert abs(back[-1] - 3.0e38) / 3.0e38 < 2**-8
