"""Per-node numpy oracles that emulate reduced precision (what the tuner validates against).

A reduced-precision tactic is checked against the FP32 reference run on the *numbers it is
supposed to compute with*: for INT8, the layer's input and weight quantized and dequantized with
the layer's scales (so a correct INT8 kernel matches to FP32 rounding, and a clipping calibrator
is not mistaken for a wrong kernel); for FP16/BF16, the weight rounded to the reduced type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.precision.quantize import activation_quant, fake_quantize_activation, fake_quantize_weight


def emulated_inputs(
    node: Node, inputs: Sequence[np.ndarray | None], precision: str
) -> list[np.ndarray | None]:
    """The inputs of ``node`` as a ``precision`` tactic effectively sees them."""
    out = list(inputs)
    if len(out) < 2 or out[1] is None or out[0] is None:
        return out
    if precision == "int8":
        quant = activation_quant(node)
        if quant is None:
            return out
        out[0] = fake_quantize_activation(out[0], quant)
        out[1] = fake_quantize_weight(node, out[1])
    elif precision in ("fp16", "bf16") and out[1].dtype == np.float32:
        from farm.compiler.kernels.cpu.reduced_float import round_float32

        out[1] = round_float32(out[1], precision)
    return out


def emulated_reference(
    node: Node, inputs: Sequence[np.ndarray | None], graph: Graph, precision: str
) -> list[np.ndarray]:
    """The reference outputs of ``node`` computed on :func:`emulated_inputs`."""
    from farm.compiler.kernels.cpu.generic import run_reference_node

    return run_reference_node(node, emulated_inputs(node, inputs, precision), graph)
