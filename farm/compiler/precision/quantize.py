"""INT8 quantization arithmetic shared by the calibrator, the INT8 tactics and the tests.

Scheme: weights symmetric per output channel, ``q = round(w / s_c)`` in [-127, 127] with
``s_c = max|w_c| / 127``; activations per tensor, ``q = round(x / s) + zp`` saturated to the
activation type: from calibration uint8 (zero point 0 for a tensor never negative, else the zero
point of its calibrated ``[lo, hi]``), or TensorRT's symmetric int8 (``zp = 0``) with the
``symmetric`` calibrator option; the model's own scale and zero point for Q/DQ models. Rounding is
half to even, as ONNX QuantizeLinear.

An INT8 layer reads its FP32 input, quantizes it (fused into the kernel's packing step),
multiplies int8 x int8 into int32, and dequantizes in the epilogue:
``y = (acc - zp * sum_k w_q) * s_x * s_w[c] + bias``, then activation and residual. Activations
cross layer boundaries in FP32, so a chain of INT8 layers requantizes at every layer input.

The quantization parameters of a layer live in its node attributes (set by precision lowering):
``int8_input_scale`` (float), ``int8_input_zero_point`` (int), ``int8_input_dtype``
("int8"/"uint8"), and optionally ``int8_weight_scale`` (per-channel scales from a Q/DQ model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Graph, Node

INT8_MAX = 127
UINT8_MAX = 255
QUANT_OPS = ("FusedConv", "Conv", "FusedGemm", "MatMul")
ATTR_SCALE = "int8_input_scale"
ATTR_ZERO_POINT = "int8_input_zero_point"
ATTR_DTYPE = "int8_input_dtype"
ATTR_WEIGHT_SCALE = "int8_weight_scale"
ATTR_BIAS_CORRECTION = "int8_bias_correction"
INT8_ATTRS = (ATTR_SCALE, ATTR_ZERO_POINT, ATTR_DTYPE, ATTR_WEIGHT_SCALE, ATTR_BIAS_CORRECTION)


@dataclass(frozen=True)
class ActivationQuant:
    """Per-tensor quantization of a layer's input: scale, zero point and integer type."""

    scale: float
    zero_point: int = 0
    dtype: str = "int8"

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127

    @staticmethod
    def from_amax(amax: float) -> ActivationQuant:
        """Symmetric int8 scale for a calibrated absolute maximum."""
        return ActivationQuant(max(float(amax), 1e-12) / INT8_MAX)

    @staticmethod
    def from_range(lo: float, hi: float, symmetric: bool = False) -> ActivationQuant:
        """The quantization of a tensor calibrated to ``[lo, hi]``: symmetric int8 when asked;
        else uint8, with zero point 0 when ``lo >= 0`` (the whole code range for a tensor that
        is never negative), or the zero point that maps 0.0 exactly (``[lo, hi]`` widened to
        contain 0)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if symmetric:
            return ActivationQuant.from_amax(max(-lo, hi))
        scale = max(hi - lo, 1e-12) / UINT8_MAX
        zero_point = int(np.clip(np.rint(-lo / scale), 0, UINT8_MAX))
        return ActivationQuant(scale, zero_point, "uint8")


def activation_quant(node: Node) -> ActivationQuant | None:
    """The input quantization recorded on ``node``, or None when it has none."""
    scale = node.attr(ATTR_SCALE)
    if scale is None:
        return None
    return ActivationQuant(
        float(scale), int(node.attr(ATTR_ZERO_POINT, 0)), str(node.attr(ATTR_DTYPE, "int8"))
    )


def set_activation_quant(node: Node, quant: ActivationQuant, weight_scale: np.ndarray | None = None) -> None:
    """Record ``quant`` (and explicit per-channel weight scales) on ``node``."""
    node.attrs[ATTR_SCALE] = float(quant.scale)
    node.attrs[ATTR_ZERO_POINT] = int(quant.zero_point)
    node.attrs[ATTR_DTYPE] = quant.dtype
    if weight_scale is not None:
        node.attrs[ATTR_WEIGHT_SCALE] = np.asarray(weight_scale, dtype=np.float32).reshape(-1)


def set_bias_correction(node: Node, correction: np.ndarray) -> None:
    """Record the per-output-channel bias correction of an INT8 layer."""
    node.attrs[ATTR_BIAS_CORRECTION] = np.asarray(correction, dtype=np.float32).reshape(-1)


def layer_bias_correction(node: Node) -> np.ndarray | None:
    """The bias correction recorded on ``node`` (float32 [channels]), or None."""
    correction = node.attr(ATTR_BIAS_CORRECTION)
    return None if correction is None else np.asarray(correction, dtype=np.float32).reshape(-1)


def clear_quant(node: Node) -> None:
    """Remove every INT8 attribute from ``node``."""
    for key in INT8_ATTRS:
        node.attrs.pop(key, None)


def quantize_activation(x: np.ndarray, quant: ActivationQuant) -> np.ndarray:
    """``x`` quantized to ``quant.dtype`` (round half to even, saturating)."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(quant.scale)) + quant.zero_point
    return np.clip(q, quant.qmin, quant.qmax).astype(quant.dtype)


def fake_quantize_activation(x: np.ndarray, quant: ActivationQuant) -> np.ndarray:
    """Quantize then dequantize ``x``: the values an INT8 layer actually sees."""
    q = quantize_activation(x, quant).astype(np.float32)
    return ((q - quant.zero_point) * np.float32(quant.scale)).astype(np.float32)


def weight_output_axis(node: Node) -> int:
    """The axis of the weight that indexes output channels."""
    if node.op_type in ("FusedConv", "Conv"):
        return 0
    transposed = node.op_type == "FusedGemm" and int(node.attr("transB", 0))
    return 0 if transposed else 1


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric per-channel scales ``max|w_c| / 127`` along ``axis`` (1.0 for an all-zero channel)."""
    moved = np.moveaxis(np.asarray(w, dtype=np.float32), axis, 0).reshape(w.shape[axis], -1)
    amax = np.max(np.abs(moved), axis=1)
    return np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)


def quantize_weight(w: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """int8 weights ``round(w / s_c)`` in [-127, 127] with ``scales`` along ``axis``."""
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.rint(np.asarray(w, dtype=np.float32) / scales.reshape(shape))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)


def layer_weight_quant(node: Node, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, per-channel scales) of an INT8 layer: the model's own scales when it had
    Q/DQ, else symmetric per-channel scales of the FP32 weight."""
    axis = weight_output_axis(node)
    explicit = node.attr(ATTR_WEIGHT_SCALE)
    if explicit is not None and np.asarray(explicit).size in (1, w.shape[axis]):
        scales = np.broadcast_to(np.asarray(explicit, np.float32).reshape(-1), (w.shape[axis],)).copy()
    else:
        scales = weight_scales(w, axis)
    return quantize_weight(w, scales, axis), scales


def fake_quantize_weight(node: Node, w: np.ndarray) -> np.ndarray:
    """The FP32 weight an INT8 layer effectively uses: dequantize(quantize(w))."""
    q, scales = layer_weight_quant(node, w)
    shape = [1] * w.ndim
    shape[weight_output_axis(node)] = -1
    return (q.astype(np.float32) * scales.reshape(shape)).astype(np.float32)


def input_channel_axis(node: Node) -> int:
    """The axis of a layer's input that its weight contracts per channel (NCHW: 1; GEMM: last)."""
    return 1 if node.op_type in ("FusedConv", "Conv") else -1


def bias_correction(node: Node, w: np.ndarray, channel_mean: np.ndarray) -> np.ndarray | None:
    """Empirical bias correction, weight term (Nagel et al. 2019): per output channel,
    ``sum_k (W - W_q)[n, k] * E[x_k]`` with ``E[x]`` the calibration mean of each input channel
    (spread over a conv's taps and groups; the taps at the padded border are counted as the
    mean too, which they are not quite). Adding it to the bias makes the quantized layer's
    expected output equal the FP32 layer's on the calibration distribution. None when the
    channel count does not fit the weight."""
    w = np.asarray(w, dtype=np.float32)
    delta = w.astype(np.float64) - fake_quantize_weight(node, w).astype(np.float64)
    mean = np.asarray(channel_mean, dtype=np.float64).reshape(-1)
    if node.op_type in ("FusedConv", "Conv"):
        groups = int(node.attr("group", 1))
        out_ch, in_per_group = w.shape[0], w.shape[1]
        if mean.size != in_per_group * groups or out_ch % groups:
            return None
        per_channel = delta.reshape(out_ch, in_per_group, -1).sum(axis=2)  # [M, C/g]
        group_of = np.arange(out_ch) // (out_ch // groups)
        means = mean.reshape(groups, in_per_group)[group_of]  # [M, C/g]
        return np.sum(per_channel * means, axis=1).astype(np.float32)
    transposed = weight_output_axis(node) == 0
    if mean.size != w.shape[1 if transposed else 0]:
        return None
    return (delta @ mean if transposed else mean @ delta).astype(np.float32)


def is_quantizable(node: Node, graph: Graph) -> bool:
    """Whether ``node`` is a layer the INT8 tactics implement: a float32 conv (any groups count
    the tactic supports is decided by the tactic) or GEMM with a constant weight."""
    if node.op_type not in QUANT_OPS or len(node.inputs) < 2:
        return False
    w = graph.values.get(node.input(1))
    x = graph.values.get(node.input(0))
    if w is None or w.const is None or x is None or x.dtype not in (None, "float32"):
        return False
    if w.const.dtype != np.float32:
        return False
    if node.op_type in ("FusedConv", "Conv"):
        return w.const.ndim in (3, 4)
    return w.const.ndim == 2


def _const(graph: Graph, name: str) -> np.ndarray:
    data = graph.const(name)
    if data is None:
        raise ValueError(f"{name!r} is not a constant")
    return data


def fake_quantized_graph(graph: Graph, nodes: set[str] | None = None) -> Graph:
    """A copy of ``graph`` that emulates the INT8 layers in FP32 numpy.

    For every node with INT8 attributes (restricted to ``nodes`` when given), the weight becomes
    dequantize(quantize(W)) and the input goes through QuantizeLinear -> DequantizeLinear with
    the layer's scale and zero point, and a bias correction is added to the bias (a MatMul gets
    an ``Add``), so ``reference.run`` on the copy computes what the INT8 kernels compute (up to
    FP32 summation order). This is the oracle of the INT8 tests and the sensitivity analysis.
    """
    out = graph.copy()
    new_nodes: list[Node] = []
    for node in out.nodes:
        quant = activation_quant(node)
        if quant is None or (nodes is not None and node.name not in nodes) or not is_quantizable(node, out):
            new_nodes.append(node)
            continue
        w_name = node.input(1)
        fq_w = out.add_const(out.fresh_name(f"{w_name}_fq"), fake_quantize_weight(node, _const(out, w_name)))
        scale = out.add_const(out.fresh_name("fq_scale"), np.asarray(quant.scale, np.float32))
        zp = out.add_const(out.fresh_name("fq_zp"), np.asarray(quant.zero_point, np.dtype(quant.dtype)))
        x_name = node.input(0)
        q_out = out.fresh_name(f"{x_name}_q")
        dq_out = out.fresh_name(f"{x_name}_dq")
        q = Node("QuantizeLinear", [x_name, scale.name, zp.name], [q_out], {}, out.fresh_name("fq_quantize"))
        dq = Node(
            "DequantizeLinear", [q_out, scale.name, zp.name], [dq_out], {}, out.fresh_name("fq_dequantize")
        )
        x_value = out.values[x_name]
        out.add_value(q_out, quant.dtype, x_value.shape)
        out.add_value(dq_out, "float32", x_value.shape)
        node.inputs = [dq_out, fq_w.name, *node.inputs[2:]]
        new_nodes.extend([q, dq, node])
        correction = layer_bias_correction(node)
        if correction is not None:
            new_nodes.extend(_add_bias(out, node, correction))
            # now in the bias: an engine built from the copy (which takes the Q/DQ pair for an
            # explicit INT8 layer, keeping the node's attributes) must not add it a second time
            node.attrs.pop(ATTR_BIAS_CORRECTION)
    out.nodes = new_nodes
    return out


def _add_bias(graph: Graph, node: Node, correction: np.ndarray) -> list[Node]:
    """Add ``correction`` to the bias of ``node`` (a new bias input when it has none; an ``Add``
    after a MatMul); returns the nodes to insert after it."""
    if node.op_type == "MatMul":
        out_name = node.outputs[0]
        raw = graph.fresh_name(f"{out_name}_uncorrected")
        graph.add_value(raw, "float32", graph.values[out_name].shape)
        node.outputs = [raw, *node.outputs[1:]]
        corr = graph.add_const(graph.fresh_name("fq_bias_correction"), correction)
        return [Node("Add", [raw, corr.name], [out_name], {}, graph.fresh_name("fq_bias_add"))]
    bias_name = node.input(2) if len(node.inputs) > 2 else ""
    bias = graph.const(bias_name) if bias_name else None
    corrected = correction if bias is None else np.asarray(bias, np.float32) + correction
    new = graph.add_const(graph.fresh_name("fq_bias"), corrected.astype(np.float32))
    inputs = list(node.inputs) + [""] * max(0, 3 - len(node.inputs))
    inputs[2] = new.name
    node.inputs = inputs
    return []
