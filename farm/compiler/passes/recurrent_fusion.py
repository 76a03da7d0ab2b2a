"""Recurrent fusion: an LSTM cell written out as Gemm + Split + Sigmoid/Tanh + Mul/Add (what
exporters emit for ``torch.nn.LSTMCell`` and for LSTMs unrolled step by step) becomes one ONNX
LSTM node over one time step, which the recurrent tactics run fused.

Rule (torch gate order i, f, g, o in the Split)::

    gates = Gemm(x, W_ih, b_ih) + Gemm(h, W_hh, b_hh);  i, f, g, o = Split(gates, 4, axis=-1)
    c' = Sigmoid(f) * c + Sigmoid(i) * Tanh(g);  h' = Sigmoid(o) * Tanh(c')
      => _, h'', c'' = LSTM(x[None], W, R, B, "", h[None], c[None]);  h' = h''[0];  c' = c''[0]

with W, R, B the weights reordered to ONNX's i, o, f, c gate order. Guards: constant Gemm
weights (and biases, when present), alpha = beta = 1, no transA, every intermediate read only
inside the cell (h' and c' may be read anywhere), four equal Split parts along the last axis.
Since one step's gates are ``x W^T + h R^T``, which input is "x" does not matter; the one whose
width equals the hidden size is taken as h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass

# torch's gate blocks (i, f, g, o) -> ONNX's (i, o, f, c)
TORCH_TO_ONNX_GATES = (0, 3, 1, 2)


@dataclass
class LstmCellMatch:
    nodes: list[Node]
    x: str
    h: str
    c: str
    w: np.ndarray  # [4H, I] torch order
    r: np.ndarray  # [4H, H]
    bias: np.ndarray  # [8H]: input then recurrent bias, torch order each
    hidden: int
    h_out: str
    c_out: str


def _gemm_parts(gemm: Node, view: GraphView) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(input, weight [N, K], bias [N]) of a Gemm with constant weight and bias, alpha = beta = 1."""
    if gemm.op_type != "Gemm" or int(gemm.attr("transA", 0)) or float(gemm.attr("alpha", 1.0)) != 1.0:
        return None
    weight = view.const(gemm.input(1))
    if weight is None or weight.ndim != 2:
        return None
    weight = weight if int(gemm.attr("transB", 0)) else weight.T
    bias_name = gemm.input(2)
    if bias_name:
        bias = view.const(bias_name)
        if bias is None or float(gemm.attr("beta", 1.0)) != 1.0 or bias.size != weight.shape[0]:
            return None
        bias = bias.reshape(-1)
    else:
        bias = np.zeros(weight.shape[0], weight.dtype)
    return gemm.input(0), np.asarray(weight), np.asarray(bias)


def _split_by_gate(mul: Node, view: GraphView, gate: str) -> tuple[Node, str] | None:
    """For Mul(a, b): the input produced by an op of type ``gate`` (Sigmoid/Tanh) and the other."""
    for name in mul.inputs:
        node = view.producer_of(name, gate)
        other = view.other_input(mul, name)
        if node is not None and other is not None:
            return node, other
    return None


class RecurrentFusion(RewritePass[LstmCellMatch]):
    """Gemm(x) + Gemm(h) -> Split(4) -> Sigmoid/Tanh gates -> c' = f*c + i*g, h' = o*tanh(c')
    => one-step LSTM (see the module docstring for the exact rule and guards)."""

    name = "recurrent_fusion"
    anchor_ops = ("Mul",)

    def match(self, node: Node, view: GraphView) -> LstmCellMatch | None:  # noqa: C901 (one guard per step)
        out = _split_by_gate(node, view, "Sigmoid")
        if out is None:
            return None
        o_gate, tanh_c_name = out
        tanh_c = view.producer_of(tanh_c_name, "Tanh")
        if tanh_c is None or view.only_consumer(tanh_c_name) is not node:
            return None
        c_add = view.producer_of(tanh_c.inputs[0], "Add")
        if c_add is None:
            return None
        muls = [view.producer_of(name, "Mul") for name in c_add.inputs]
        if any(m is None for m in muls) or len(muls) != 2:
            return None
        input_side = forget_side = None
        for mul in muls:
            assert mul is not None
            with_tanh = _split_by_gate(mul, view, "Tanh")
            if with_tanh is not None and view.producer_of(with_tanh[1], "Sigmoid") is not None:
                input_side = (view.producer_of(with_tanh[1], "Sigmoid"), with_tanh[0], mul)
            else:
                forget_side = (_split_by_gate(mul, view, "Sigmoid"), mul)
        if input_side is None or forget_side is None or forget_side[0] is None:
            return None
        i_gate, g_tanh, i_mul = input_side
        forget, f_mul = forget_side
        assert i_gate is not None and forget is not None
        f_gate, c_prev = forget
        gate_nodes = [i_gate, f_gate, g_tanh, o_gate]
        split = view.producer_of(i_gate.inputs[0], "Split")
        if split is None or len(split.outputs) != 4:
            return None
        if [g.inputs[0] for g in gate_nodes] != split.outputs:
            return None
        for gate in gate_nodes:
            if view.only_consumer(gate.inputs[0]) is not gate or view.only_consumer(gate.outputs[0]) is None:
                return None
        for mul in (i_mul, f_mul):
            if view.only_consumer(mul.outputs[0]) is not c_add:
                return None
        shape = view.shape(split.inputs[0])
        if shape is None or len(shape) != 2 or not isinstance(shape[1], int) or shape[1] % 4:
            return None
        hidden = shape[1] // 4
        axis = int(split.attr("axis", 0))
        sizes = view.ints(split.input(1)) if split.input(1) else [hidden] * 4
        if axis % 2 != 1 or sizes != [hidden] * 4:
            return None
        gates_add = view.producer_of(split.inputs[0], "Add")
        if gates_add is None or view.only_consumer(gates_add.outputs[0]) is not split:
            return None
        gemms = [g for g in (view.producer(name) for name in gates_add.inputs) if g is not None]
        if len(gemms) != 2 or any(view.only_consumer(g.outputs[0]) is not gates_add for g in gemms):
            return None
        parts = [_gemm_parts(g, view) for g in gemms]
        if len(parts) != 2 or parts[0] is None or parts[1] is None:
            return None
        if any(p[1].shape[0] != 4 * hidden for p in parts):  # type: ignore[index]
            return None
        # The part whose weight is [4H, H] plays h (either one when both are).
        h_part, x_part = (parts[1], parts[0]) if parts[1][1].shape[1] == hidden else (parts[0], parts[1])
        if h_part[1].shape[1] != hidden or not view.is_float(x_part[0]):
            return None
        c_shape, h_shape = view.shape(c_prev), view.shape(h_part[0])
        if c_shape is None or h_shape is None or len(c_shape) != 2 or len(h_shape) != 2:
            return None
        nodes = [*gemms, gates_add, split, *gate_nodes, i_mul, f_mul, c_add, tanh_c, node]
        return LstmCellMatch(
            nodes, x_part[0], h_part[0], c_prev, x_part[1], h_part[1],
            np.concatenate([x_part[2], h_part[2]]), hidden, node.outputs[0], c_add.outputs[0],
        )  # fmt: skip

    def rewrite(self, found: LstmCellMatch, view: GraphView, edit: GraphEdit) -> str:
        hidden = found.hidden
        order = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in TORCH_TO_ONNX_GATES])
        dtype = found.w.dtype
        w = edit.new_const("lstm_W", found.w[order][None].astype(dtype))
        r = edit.new_const("lstm_R", found.r[order][None].astype(dtype))
        bias = np.concatenate([found.bias[: 4 * hidden][order], found.bias[4 * hidden :][order]])
        b = edit.new_const("lstm_B", bias[None].astype(dtype))
        axes = edit.new_const("axes0", np.array([0], np.int64))
        anchor = found.nodes[0]
        lifted = []
        for name in (found.x, found.h, found.c):
            shape = view.shape(name)
            new = edit.new_value(f"{name}_step", view.dtype(name), (1, *shape) if shape is not None else None)
            edit.new_node("Unsqueeze", [name, axes], [new], before=anchor)
            lifted.append(new)
        last = found.nodes[-1]
        state_shape = (1, *(view.shape(found.h_out) or ()))
        h3 = edit.new_value("lstm_Y_h", view.dtype(found.h_out), state_shape)
        c3 = edit.new_value("lstm_Y_c", view.dtype(found.c_out), state_shape)
        edit.new_node(
            "LSTM", [lifted[0], w, r, b, "", lifted[1], lifted[2]], ["", h3, c3], {"hidden_size": hidden},
            before=last,
        )  # fmt: skip
        edit.new_node("Squeeze", [h3, axes], [found.h_out], before=last)
        edit.new_node("Squeeze", [c3, axes], [found.c_out], before=last)
        edit.remove(found.nodes)
        return "fused LSTM cell"
