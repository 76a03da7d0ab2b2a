"""Explicit quantization: models with QuantizeLinear/DequantizeLinear (QAT exports, ONNX
Runtime's QDQ format) are built with their own scales.

Rule, applied to the loaded graph before optimization::

    DequantizeLinear(W_int, s_w, zp_w)  (W constant)  =>  W_fp = (W_int - zp_w) * s_w, remember s_w for W_fp
    Conv/Gemm/MatMul(DequantizeLinear(QuantizeLinear(x, s, zp)), ...)
                                                       =>  Conv/...(x, ...), remember (s, zp) for x

so the quantizable layers read plain FP32 tensors again (and the optimizer fuses them as usual),
while :func:`annotate_explicit` later writes the remembered scales onto the fused layers, which
then run in INT8 with exactly the model's quantization. Q/DQ pairs in front of other ops (Add,
pooling, ...) stay in the graph and run as they are, so the engine rounds where the model rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.precision.quantize import QUANT_OPS, ActivationQuant, is_quantizable, set_activation_quant

_LAYER_OPS = (*QUANT_OPS, "Gemm")


@dataclass
class ExplicitQuantization:
    """Scales a Q/DQ model carries: per activation tensor, and per-channel per weight constant."""

    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    folded_weights: int = 0
    folded_activations: int = 0

    def __bool__(self) -> bool:
        return bool(self.activations or self.weights)

    def summary(self) -> dict[str, int]:
        return {"weights": self.folded_weights, "activations": self.folded_activations}


def _scalar(graph: Graph, name: str, default: float | int = 0) -> np.ndarray | None:
    if not name:
        return np.asarray(default)
    return graph.const(name)


def extract_qdq(graph: Graph) -> ExplicitQuantization:
    """Fold the model's Q/DQ into FP32 weights and remembered scales (see the module rule).
    Changes ``graph`` in place; returns what was found."""
    found = ExplicitQuantization()
    producers = graph.producers()
    consumers = graph.consumer_map()
    dropped: list[Node] = []
    for dq in list(graph.find("DequantizeLinear")):
        data = graph.values.get(dq.input(0))
        scale = graph.const(dq.input(1))
        zero = _scalar(graph, dq.input(2))
        if data is None or scale is None or zero is None or int(dq.attr("block_size", 0)):
            continue
        if data.const is not None:  # a quantized weight or bias
            axis = int(dq.attr("axis", 1)) % max(data.const.ndim, 1)
            shape = [1] * data.const.ndim
            if scale.size > 1:
                shape[axis] = -1
            values = (
                data.const.astype(np.float32)
                - zero.astype(np.float32).reshape(shape if zero.size > 1 else ())
            ) * scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
            new = graph.add_const(graph.fresh_name(f"{dq.outputs[0]}_fp32"), values.astype(np.float32))
            graph.replace_all_uses(dq.outputs[0], new.name)
            if data.const.dtype in (np.int8, np.uint8) and not np.any(zero):
                found.weights[new.name] = scale.astype(np.float32).reshape(-1)
                found.folded_weights += 1
            dropped.append(dq)
            continue
        q = producers.get(dq.input(0))
        if q is None or q.op_type != "QuantizeLinear" or scale.size != 1 or zero.size != 1:
            continue
        q_scale = graph.const(q.input(1))
        if q_scale is None or not np.allclose(q_scale, scale):
            continue
        dtype = str(data.dtype or "uint8")
        if dtype not in ("int8", "uint8"):
            continue
        x = q.input(0)
        layer_readers = [
            n
            for n in consumers.get(dq.outputs[0], [])
            if n.op_type in _LAYER_OPS and n.input(0) == dq.outputs[0]
        ]
        if not layer_readers:
            continue
        found.activations[x] = ActivationQuant(float(scale.reshape(())), int(zero.reshape(())), dtype)
        found.folded_activations += 1
        for reader in layer_readers:
            reader.inputs[0] = x
        if not [n for n in graph.nodes if dq.outputs[0] in n.inputs] and not graph.is_output(dq.outputs[0]):
            dropped.append(dq)
            if not [n for n in consumers.get(q.outputs[0], []) if n is not dq] and not graph.is_output(
                q.outputs[0]
            ):
                dropped.append(q)
    graph.remove_nodes(dropped)
    graph.prune()
    return found


def annotate_explicit(graph: Graph, explicit: ExplicitQuantization) -> list[str]:
    """Write the remembered scales onto the (optimized) layers that read a Q/DQ'd tensor; returns
    the names of the layers annotated. A layer whose weight was changed by optimization (e.g. a
    BatchNorm folded into it) keeps the activation scale and gets fresh per-channel weight scales."""
    annotated = []
    for node in graph.nodes:
        quant = explicit.activations.get(node.input(0))
        if quant is None or not is_quantizable(node, graph):
            continue
        set_activation_quant(node, quant, explicit.weights.get(node.input(1)))
        annotated.append(node.name)
    return annotated
