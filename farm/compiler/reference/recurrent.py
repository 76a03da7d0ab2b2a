"""LSTM, GRU and RNN (ONNX opset 14 semantics: layout, sequence_lens, peepholes, clip,
input_forget, linear_before_reset, per-direction activations)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.activations import sigmoid
from farm.compiler.reference.registry import Context, Inputs, op

Activation = Callable[[np.ndarray], np.ndarray]


def _activation(name: str, alpha: float | None, beta: float | None) -> Activation:
    key = name.lower()
    if key == "sigmoid":
        return sigmoid
    if key == "tanh":
        return np.tanh
    if key == "relu":
        return lambda x: np.maximum(x, 0)
    if key == "affine":
        return lambda x: (alpha if alpha is not None else 1.0) * x + (beta or 0.0)
    if key == "leakyrelu":
        a = alpha if alpha is not None else 0.01
        return lambda x: np.where(x >= 0, x, a * x)
    if key == "thresholdedrelu":
        a = alpha if alpha is not None else 1.0
        return lambda x: np.where(x > a, x, 0)
    if key == "scaledtanh":
        return lambda x: (alpha if alpha is not None else 1.0) * np.tanh((beta if beta is not None else 1.0) * x)
    if key == "hardsigmoid":
        a = alpha if alpha is not None else 0.2
        b = beta if beta is not None else 0.5
        return lambda x: np.clip(a * x + b, 0, 1)
    if key == "elu":
        a = alpha if alpha is not None else 1.0
        return lambda x: np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1))
    if key == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if key == "softplus":
        return lambda x: np.log1p(np.exp(x))
    raise ValueError(f"unknown recurrent activation {name!r}")


def _activations(node: Node, defaults: list[str], directions: int) -> list[list[Activation]]:
    """Per direction, the activation functions (f, g[, h]) with their alpha/beta."""
    names = list(node.attr("activations", None) or defaults * directions)
    alphas = list(node.attr("activation_alpha", None) or [])
    betas = list(node.attr("activation_beta", None) or [])
    fns = [
        _activation(name, alphas[i] if i < len(alphas) else None, betas[i] if i < len(betas) else None)
        for i, name in enumerate(names)
    ]
    per = len(defaults)
    return [fns[d * per : (d + 1) * per] for d in range(directions)]


class _Setup:
    """Inputs of a recurrent node normalized to layout 0: X [seq, batch, input]."""

    def __init__(self, node: Node, inputs: Inputs, gates: int) -> None:
        padded = list(inputs) + [None] * (8 - len(inputs))
        self.layout = int(node.attr("layout", 0))
        x = padded[0]
        self.x = np.swapaxes(x, 0, 1) if self.layout else x
        self.w, self.r = padded[1], padded[2]
        self.directions = self.w.shape[0]
        self.hidden = int(node.attr("hidden_size", self.r.shape[-1]))
        seq, batch = self.x.shape[:2]
        self.seq, self.batch = seq, batch
        b = padded[3]
        self.b = b if b is not None else np.zeros((self.directions, 2 * gates * self.hidden), x.dtype)
        lens = padded[4]
        self.lens = lens.astype(np.int64) if lens is not None else np.full(batch, seq, np.int64)
        h0 = padded[5]
        if h0 is not None and self.layout:
            h0 = np.swapaxes(h0, 0, 1)
        self.h0 = h0 if h0 is not None else np.zeros((self.directions, batch, self.hidden), x.dtype)
        self.extra = padded[6:]
        self.clip = node.attr("clip", None)
        direction = node.attr("direction", "forward")
        self.reverse = [direction == "reverse"] if direction != "bidirectional" else [False, True]

    def clipped(self, z: np.ndarray) -> np.ndarray:
        return np.clip(z, -self.clip, self.clip) if self.clip is not None else z

    def steps(self, reverse: bool, b: int) -> list[int]:
        length = int(self.lens[b])
        return list(range(length - 1, -1, -1)) if reverse else list(range(length))

    def finish(self, y: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        """y [seq, dirs, batch, H] and states [dirs, batch, H] back in the node's layout."""
        if self.layout:
            y = y.transpose(2, 0, 1, 3)
            states = [np.swapaxes(s, 0, 1) for s in states]
        return [y, *states]


def _run_cells(setup: _Setup, cell, states0: list[np.ndarray]) -> list[np.ndarray]:
    """Run ``cell(direction, x_t, states) -> states`` over time for every batch entry, honouring
    sequence_lens (outputs past the end are 0; final states are the last valid ones)."""
    dtype = setup.x.dtype
    y = np.zeros((setup.seq, setup.directions, setup.batch, setup.hidden), dtype)
    finals = [np.zeros_like(s) for s in states0]
    for d, reverse in enumerate(setup.reverse):
        for b in range(setup.batch):
            states = [s[d, b : b + 1].astype(np.float64) for s in states0]
            for t in setup.steps(reverse, b):
                states = cell(d, setup.x[t, b : b + 1].astype(np.float64), states)
                y[t, d, b] = states[0][0]
            for final, s in zip(finals, states, strict=True):
                final[d, b] = s[0]
    return setup.finish(y, finals)


@op("LSTM")
def lstm(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    s = _Setup(node, inputs, 4)
    hidden = s.hidden
    c0, peephole = s.extra[0], s.extra[1]
    if c0 is not None and s.layout:
        c0 = np.swapaxes(c0, 0, 1)
    c0 = c0 if c0 is not None else np.zeros_like(s.h0)
    peephole = peephole if peephole is not None else np.zeros((s.directions, 3 * hidden), s.x.dtype)
    acts = _activations(node, ["Sigmoid", "Tanh", "Tanh"], s.directions)
    input_forget = bool(node.attr("input_forget", 0))

    def cell(d: int, x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        h, c = states
        f, g, hh = acts[d]
        z = x @ s.w[d].T + h @ s.r[d].T + s.b[d, : 4 * hidden] + s.b[d, 4 * hidden :]
        zi, zo, zf, zc = np.split(z, 4, axis=-1)
        pi, po, pf = np.split(peephole[d].astype(np.float64), 3)
        i = f(s.clipped(zi + pi * c))
        forget = 1 - i if input_forget else f(s.clipped(zf + pf * c))
        candidate = g(s.clipped(zc))
        c_new = forget * c + i * candidate
        o = f(s.clipped(zo + po * c_new))
        return [o * hh(c_new), c_new]

    y, h_final, c_final = _run_cells(s, cell, [s.h0, c0])
    return [y, h_final, c_final]


@op("GRU")
def gru(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    s = _Setup(node, inputs, 3)
    hidden = s.hidden
    acts = _activations(node, ["Sigmoid", "Tanh"], s.directions)
    linear_before_reset = bool(node.attr("linear_before_reset", 0))

    def cell(d: int, x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        (h,) = states
        f, g = acts[d]
        wz, wr, wh = np.split(s.w[d], 3)
        rz, rr, rh = np.split(s.r[d], 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(s.b[d], 6)
        z = f(s.clipped(x @ wz.T + h @ rz.T + wbz + rbz))
        r = f(s.clipped(x @ wr.T + h @ rr.T + wbr + rbr))
        if linear_before_reset:
            candidate = g(s.clipped(x @ wh.T + r * (h @ rh.T + rbh) + wbh))
        else:
            candidate = g(s.clipped(x @ wh.T + (r * h) @ rh.T + rbh + wbh))
        return [(1 - z) * candidate + z * h]

    y, h_final = _run_cells(s, cell, [s.h0])
    del hidden
    return [y, h_final]


@op("RNN")
def rnn(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    s = _Setup(node, inputs, 1)
    hidden = s.hidden
    acts = _activations(node, ["Tanh"], s.directions)

    def cell(d: int, x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        (h,) = states
        (f,) = acts[d]
        return [f(s.clipped(x @ s.w[d].T + h @ s.r[d].T + s.b[d, :hidden] + s.b[d, hidden:]))]

    y, h_final = _run_cells(s, cell, [s.h0])
    return [y, h_final]
