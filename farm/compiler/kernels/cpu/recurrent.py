"""LSTM, GRU and RNN tactics, FP32, every ONNX attribute (directions, layout 0/1, sequence_lens,
initial states, LSTM peepholes and input_forget, GRU linear_before_reset, activations with
alpha/beta, clip).

* ``cpu.recurrent.fused`` ("temporal fusion", what TensorRT does for its RNN layers):
  1. the input projection of every time step and both directions is ONE BLAS GEMM before the
     loop: ``X[seq*batch, I] @ W^T[I, dirs*G*H]`` plus every bias that is additive there
     (both of LSTM/RNN's biases; GRU's input biases and the recurrent biases of z, r and, unless
     ``linear_before_reset``, of the candidate);
  2. the recurrence runs inside one numba kernel per direction: for each step, the hidden
     projection ``h @ R^T`` (R^T streamed row by row, the accumulator and the state stay in L1),
     the gate activations and the cell update, with no allocation and no Python per step;
  3. the two directions of a bidirectional layer run concurrently (``prange`` over directions)
     when a direction has enough work to pay for waking the second thread.
  Pools: BLAS for the projection, then numba's; never both at once.
* ``cpu.recurrent.stepwise``: the step-by-step form an unfused engine runs: per time step and
  direction, two BLAS GEMMs (``x_t @ W^T`` and ``h @ R^T``) and numpy elementwise gates. Kept as a
  tuner candidate and as the baseline that measures the fusion factor
  (``benchmarks/recurrent.py``).

Shapes follow ONNX: W [dirs, G*H, I], R [dirs, G*H, H], B [dirs, 2*G*H], P [dirs, 3*H]; gate
order LSTM i, o, f, c; GRU z, r, h. Outputs past a sequence's length are 0 and the final states
are the last valid ones (the reference's semantics, ``farm/compiler/reference/recurrent.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import ACT_SIGMOID, ACT_TANH, activate_row
from farm.compiler.kernels.cpu._operands import RunsBound, in_order
from farm.compiler.kernels.cpu._rowgemm import add_row_products
from farm.compiler.kernels.cpu._threads import blas_single_thread, blas_single_thread_call
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
KIND = {"RNN": 0, "GRU": 1, "LSTM": 2}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# Activation name (lower case) -> (code in the numba kernel, default alpha, default beta).
ACTIVATIONS: dict[str, tuple[int, float, float]] = {
    "sigmoid": (0, 0.0, 0.0),
    "tanh": (1, 0.0, 0.0),
    "relu": (2, 0.0, 0.0),
    "affine": (3, 1.0, 0.0),
    "leakyrelu": (4, 0.01, 0.0),
    "thresholdedrelu": (5, 1.0, 0.0),
    "scaledtanh": (6, 1.0, 1.0),
    "hardsigmoid": (7, 0.2, 0.5),
    "elu": (8, 1.0, 0.0),
    "softsign": (9, 0.0, 0.0),
    "softplus": (10, 0.0, 0.0),
}
# A direction runs on its own thread when it has at least this many multiply-adds
# (seq * batch * H * G*H): about 100 us of work, well above the 3-60 us a thread wake-up costs.
CONCURRENT_DIRECTIONS_MIN_MACS = 1 << 20
# Below this many multiply-adds (about 0.5 ms on one core) the input projection GEMM runs on one
# BLAS thread: waking OpenBLAS's second thread right after the numba kernel costs more than it
# saves on a shared 2-core machine (measured 0.2 ms on one thread, 45 ms on two under load for a
# 128x128x384 projection).
SINGLE_THREAD_PROJECTION_MACS = 1 << 25


# --------------------------------------------------------------------------- attributes
@dataclass
class RecurrentSpec:
    """A recurrent node's attributes, normalized."""

    op_type: str
    hidden: int
    directions: int
    reverse: tuple[bool, ...]
    layout: int
    clip: float  # inf when the node has none
    input_forget: bool
    linear_before_reset: bool
    codes: np.ndarray  # [dirs, 3] int64 activation codes (unused slots 0)
    alphas: np.ndarray  # [dirs, 3] float32
    betas: np.ndarray  # [dirs, 3] float32

    @property
    def gates(self) -> int:
        return GATES[self.op_type]


def recurrent_spec(node: Node, graph: Graph | None = None) -> RecurrentSpec:
    """Read and check a recurrent node's attributes. Raises ValueError for what ONNX forbids or
    what this backend does not know (an unknown activation name)."""
    direction = str(node.attr("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"unknown direction {direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    reverse = (False, True) if directions == 2 else (direction == "reverse",)
    layout = int(node.attr("layout", 0))
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {layout}")
    hidden = node.attr("hidden_size", None)
    if hidden is None and graph is not None:
        r_shape = graph.values[node.inputs[2]].shape
        hidden = r_shape[-1] if r_shape else None
    if not isinstance(hidden, int | np.integer):
        raise ValueError("hidden_size is unknown")
    defaults = DEFAULT_ACTIVATIONS[node.op_type]
    names = [str(n) for n in (node.attr("activations", None) or list(defaults) * directions)]
    if len(names) != len(defaults) * directions:
        raise ValueError(f"{len(names)} activations given, expected {len(defaults) * directions}")
    alphas_in = list(node.attr("activation_alpha", None) or [])
    betas_in = list(node.attr("activation_beta", None) or [])
    codes = np.zeros((directions, 3), np.int64)
    alphas = np.zeros((directions, 3), np.float32)
    betas = np.zeros((directions, 3), np.float32)
    for i, name in enumerate(names):
        try:
            code, alpha, beta = ACTIVATIONS[name.lower()]
        except KeyError:
            raise ValueError(f"unknown recurrent activation {name!r}") from None
        d, k = divmod(i, len(defaults))
        codes[d, k] = code
        # Same reading as the reference: the i-th alpha/beta belongs to the i-th activation.
        alphas[d, k] = alphas_in[i] if i < len(alphas_in) else alpha
        betas[d, k] = betas_in[i] if i < len(betas_in) else beta
    clip = node.attr("clip", None)
    return RecurrentSpec(
        op_type=node.op_type,
        hidden=int(hidden),
        directions=directions,
        reverse=reverse,
        layout=layout,
        clip=float(clip) if clip is not None else math.inf,
        input_forget=bool(node.attr("input_forget", 0)),
        linear_before_reset=bool(node.attr("linear_before_reset", 0)),
        codes=codes,
        alphas=alphas,
        betas=betas,
    )


def default_activations(spec: RecurrentSpec, d: int) -> bool:
    """Whether direction ``d`` uses activations the vectorized gate path covers (the ONNX
    defaults; RNN also Sigmoid)."""
    f_code, g_code, h_code = (int(v) for v in spec.codes[d])
    if spec.op_type == "LSTM":
        return (f_code, g_code, h_code) == (0, 1, 1)
    if spec.op_type == "GRU":
        return (f_code, g_code) == (0, 1)
    return f_code <= 1


@dataclass
class RecurrentWeights:
    """Weights rearranged for the fused kernel."""

    w_t: np.ndarray  # [I, dirs*G*H]: the input projection of every direction in one GEMM
    input_bias: np.ndarray  # [dirs*G*H]: every bias that can be added after that GEMM
    r_t: np.ndarray  # [dirs, H, G*H]
    candidate_bias: np.ndarray  # [dirs, H]: GRU linear_before_reset's R bias of the candidate, else 0
    peepholes: np.ndarray  # [dirs, 3*H]


def arrange_weights(
    spec: RecurrentSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, p: np.ndarray | None
) -> RecurrentWeights:
    """W, R, B, P in ONNX layout -> the fused kernel's layout (float32, contiguous)."""
    dirs, hidden, gh = spec.directions, spec.hidden, spec.gates * spec.hidden
    w = np.asarray(w, np.float32)
    w_t = np.ascontiguousarray(w.transpose(2, 0, 1).reshape(w.shape[2], dirs * gh))
    r_t = np.ascontiguousarray(np.asarray(r, np.float32).transpose(0, 2, 1))
    bias = np.zeros((dirs, 2 * gh), np.float32) if b is None else np.asarray(b, np.float32)
    input_bias = bias[:, :gh].copy()
    recurrent_bias = bias[:, gh:]
    candidate_bias = np.zeros((dirs, hidden), np.float32)
    if spec.op_type == "GRU" and spec.linear_before_reset:
        input_bias[:, : 2 * hidden] += recurrent_bias[:, : 2 * hidden]
        candidate_bias[:] = recurrent_bias[:, 2 * hidden :]
    else:
        input_bias += recurrent_bias
    peepholes = np.zeros((dirs, 3 * hidden), np.float32) if p is None else np.asarray(p, np.float32)
    return RecurrentWeights(
        w_t,
        np.ascontiguousarray(input_bias.reshape(-1)),
        r_t,
        candidate_bias,
        np.ascontiguousarray(peepholes),
    )


# --------------------------------------------------------------------------- numba kernel
@njit(cache=True, nogil=True, inline="always")
def _activate(code, x, alpha, beta):
    if code == 0:
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))
    if code == 1:
        return np.tanh(x)
    if code == 2:
        return x if x > 0 else np.float32(0.0)
    if code == 3:
        return alpha * x + beta
    if code == 4:
        return x if x >= 0 else alpha * x
    if code == 5:
        return x if x > alpha else np.float32(0.0)
    if code == 6:
        return alpha * np.tanh(beta * x)
    if code == 7:
        return min(max(alpha * x + beta, np.float32(0.0)), np.float32(1.0))
    if code == 8:
        return x if x > 0 else alpha * (np.exp(x) - np.float32(1.0))
    if code == 9:
        return x / (np.float32(1.0) + abs(x))
    return np.log1p(np.exp(x))


@njit(cache=True, nogil=True, inline="always")
def _clip(x, limit):
    return min(max(x, -limit), limit)


@njit(cache=True, nogil=True, error_model="numpy")
def _activate_into(x, out, act):
    """out = act(x) for a gate's sigmoid or tanh written to another buffer (in place, the gate
    code calls ``_epilogue.activate_row`` itself)."""
    for i in range(x.shape[0]):
        out[i] = x[i]
    activate_row(out, act, 0.0, 0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _fast_gates_row(kind, lbr, input_forget, f_code, d, acc_b, extra_b, h_b, c_b, peep, clip, g1, g2, g3, g4):
    """The gate math of one batch row with the default activations (LSTM sigmoid/tanh/tanh, GRU
    sigmoid/tanh, RNN sigmoid or tanh), in passes over whole vectors so that every loop
    vectorizes (libm's scalar expf/tanhf would not). GRU without linear_before_reset: ``acc_b``
    already holds the candidate's (r*h) @ R_h^T."""
    hidden = h_b.shape[0]
    one = np.float32(1.0)
    if kind == 2:
        for j in range(hidden):
            cj = c_b[j]
            g1[j] = min(max(acc_b[j] + peep[d, j] * cj, -clip), clip)
            g2[j] = min(max(acc_b[2 * hidden + j] + peep[d, 2 * hidden + j] * cj, -clip), clip)
            g3[j] = min(max(acc_b[3 * hidden + j], -clip), clip)
        activate_row(g1, ACT_SIGMOID, 0.0, 0.0)
        if input_forget:
            for j in range(hidden):
                g2[j] = one - g1[j]
        else:
            activate_row(g2, ACT_SIGMOID, 0.0, 0.0)
        activate_row(g3, ACT_TANH, 0.0, 0.0)
        for j in range(hidden):
            c_new = g2[j] * c_b[j] + g1[j] * g3[j]
            c_b[j] = c_new
            g4[j] = min(max(acc_b[hidden + j] + peep[d, hidden + j] * c_new, -clip), clip)
        activate_row(g4, ACT_SIGMOID, 0.0, 0.0)
        _activate_into(c_b, g1, ACT_TANH)
        for j in range(hidden):
            h_b[j] = g4[j] * g1[j]
    elif kind == 1:
        for j in range(hidden):
            g1[j] = min(max(acc_b[j], -clip), clip)
        activate_row(g1, ACT_SIGMOID, 0.0, 0.0)
        if lbr:
            for j in range(hidden):
                g2[j] = min(max(acc_b[hidden + j], -clip), clip)
            activate_row(g2, ACT_SIGMOID, 0.0, 0.0)
            for j in range(hidden):
                g3[j] = min(max(acc_b[2 * hidden + j] + g2[j] * extra_b[j], -clip), clip)
        else:
            for j in range(hidden):
                g3[j] = min(max(acc_b[2 * hidden + j], -clip), clip)
        activate_row(g3, ACT_TANH, 0.0, 0.0)
        for j in range(hidden):
            h_b[j] = (one - g1[j]) * g3[j] + g1[j] * h_b[j]
    else:
        for j in range(hidden):
            g1[j] = min(max(acc_b[j], -clip), clip)
        if f_code == 0:
            _activate_into(g1, h_b, ACT_SIGMOID)
        else:
            _activate_into(g1, h_b, ACT_TANH)


@njit(cache=True, nogil=True, error_model="numpy")
def _fast_reset_row(acc_b, h_b, clip, g1, extra_b):
    """GRU without linear_before_reset: extra = sigmoid(r) * h for one row (vectorized)."""
    hidden = h_b.shape[0]
    for j in range(hidden):
        g1[j] = min(max(acc_b[hidden + j], -clip), clip)
    activate_row(g1, ACT_SIGMOID, 0.0, 0.0)
    for j in range(hidden):
        extra_b[j] = g1[j] * h_b[j]


@njit(cache=True, nogil=True)
def _run_direction(
    kind, d, reverse, proj, r_t, candidate_bias, peep, h0, c0, lens, codes, alphas, betas, clip,
    input_forget, linear_before_reset, y, h_out, c_out,
):  # fmt: skip
    seq, batch = proj.shape[0], proj.shape[1]
    hidden = h0.shape[2]
    gh = r_t.shape[2]
    off = d * gh
    h = h0[d].copy()
    c = c0[d].copy()
    acc = np.empty((batch, gh), np.float32)
    extra = np.empty((batch, hidden), np.float32)  # GRU: h @ R_h^T (lbr) or r * h (not lbr)
    active = np.zeros(batch, np.bool_)
    t_of = np.zeros(batch, np.int64)
    f_code, g_code, h_code = codes[d, 0], codes[d, 1], codes[d, 2]
    fa, ga, ha = alphas[d, 0], alphas[d, 1], alphas[d, 2]
    fb, gb, hb = betas[d, 0], betas[d, 1], betas[d, 2]
    # Default activations take the vectorized gate path.
    fast = (
        (kind == 2 and f_code == 0 and g_code == 1 and h_code == 1)
        or (kind == 1 and f_code == 0 and g_code == 1)
        or (kind == 0 and f_code <= 1)
    )
    g1 = np.empty(hidden, np.float32)
    g2 = np.empty(hidden, np.float32)
    g3 = np.empty(hidden, np.float32)
    g4 = np.empty(hidden, np.float32)
    for s in range(seq):
        for b in range(batch):
            active[b] = s < lens[b]
            if not active[b]:
                y[s, d, b, :] = 0.0
                continue
            t = lens[b] - 1 - s if reverse else s
            t_of[b] = t
            acc[b, :] = proj[t, b, off : off + gh]
        if kind == 1 and not linear_before_reset:
            # GRU (default): z and r first; the candidate needs (r * h) @ R_h^T.
            add_row_products(acc, h, r_t[d], active, 0, 2 * hidden, 0)
            for b in range(batch):
                if active[b] and fast:
                    _fast_reset_row(acc[b], h[b], clip, g1, extra[b])
                elif active[b]:
                    for j in range(hidden):
                        r = _activate(f_code, _clip(acc[b, hidden + j], clip), fa, fb)
                        extra[b, j] = r * h[b, j]
            add_row_products(acc, extra, r_t[d], active, 2 * hidden, 3 * hidden, 0)
            for b in range(batch):
                if active[b] and fast:
                    _fast_gates_row(kind, False, input_forget, f_code, d, acc[b], extra[b], h[b], c[b], peep, clip,
                                    g1, g2, g3, g4)  # fmt: skip
                elif active[b]:
                    for j in range(hidden):
                        z = _activate(f_code, _clip(acc[b, j], clip), fa, fb)
                        cand = _activate(g_code, _clip(acc[b, 2 * hidden + j], clip), ga, gb)
                        h[b, j] = (np.float32(1.0) - z) * cand + z * h[b, j]
        elif kind == 1:
            # GRU linear_before_reset: candidate = g(x W_h + Wb_h + r * (h R_h^T + Rb_h)).
            for b in range(batch):
                extra[b, :] = candidate_bias[d]
            add_row_products(acc, h, r_t[d], active, 0, 2 * hidden, 0)
            add_row_products(extra, h, r_t[d], active, 2 * hidden, 3 * hidden, 2 * hidden)
            for b in range(batch):
                if active[b] and fast:
                    _fast_gates_row(kind, True, input_forget, f_code, d, acc[b], extra[b], h[b], c[b], peep, clip,
                                    g1, g2, g3, g4)  # fmt: skip
                elif active[b]:
                    for j in range(hidden):
                        z = _activate(f_code, _clip(acc[b, j], clip), fa, fb)
                        r = _activate(f_code, _clip(acc[b, hidden + j], clip), fa, fb)
                        pre = acc[b, 2 * hidden + j] + r * extra[b, j]
                        cand = _activate(g_code, _clip(pre, clip), ga, gb)
                        h[b, j] = (np.float32(1.0) - z) * cand + z * h[b, j]
        elif kind == 2:
            add_row_products(acc, h, r_t[d], active, 0, gh, 0)
            for b in range(batch):
                if active[b] and fast:
                    _fast_gates_row(kind, False, input_forget, f_code, d, acc[b], extra[b], h[b], c[b], peep, clip,
                                    g1, g2, g3, g4)  # fmt: skip
                elif active[b]:
                    for j in range(hidden):
                        cj = c[b, j]
                        i_gate = _activate(f_code, _clip(acc[b, j] + peep[d, j] * cj, clip), fa, fb)
                        if input_forget:
                            f_gate = np.float32(1.0) - i_gate
                        else:
                            pre_f = acc[b, 2 * hidden + j] + peep[d, 2 * hidden + j] * cj
                            f_gate = _activate(f_code, _clip(pre_f, clip), fa, fb)
                        cand = _activate(g_code, _clip(acc[b, 3 * hidden + j], clip), ga, gb)
                        c_new = f_gate * cj + i_gate * cand
                        pre_o = acc[b, hidden + j] + peep[d, hidden + j] * c_new
                        o_gate = _activate(f_code, _clip(pre_o, clip), fa, fb)
                        c[b, j] = c_new
                        h[b, j] = o_gate * _activate(h_code, c_new, ha, hb)
        else:
            add_row_products(acc, h, r_t[d], active, 0, gh, 0)
            for b in range(batch):
                if active[b] and fast:
                    _fast_gates_row(kind, False, input_forget, f_code, d, acc[b], extra[b], h[b], c[b], peep, clip,
                                    g1, g2, g3, g4)  # fmt: skip
                elif active[b]:
                    for j in range(hidden):
                        h[b, j] = _activate(f_code, _clip(acc[b, j], clip), fa, fb)
        for b in range(batch):
            if active[b]:
                y[t_of[b], d, b, :] = h[b]
    h_out[d] = h
    c_out[d] = c


@njit(parallel=True, cache=True, nogil=True)
def recurrence(
    kind, reverse, proj, r_t, candidate_bias, peep, h0, c0, lens, codes, alphas, betas, clip,
    input_forget, linear_before_reset, y, h_out, c_out,
):  # fmt: skip
    """Run every direction of a recurrent layer over the whole sequence (directions in parallel).

    ``proj`` [seq, batch, dirs*G*H] is the input projection with its biases; ``y``
    [seq, dirs, batch, H] and ``h_out``/``c_out`` [dirs, batch, H] are written completely.
    """
    for d in prange(r_t.shape[0]):
        _run_direction(
            kind, d, reverse[d], proj, r_t, candidate_bias, peep, h0, c0, lens, codes, alphas, betas,
            clip, input_forget, linear_before_reset, y, h_out, c_out,
        )  # fmt: skip


# --------------------------------------------------------------------------- tactics
def _float32_node(node: Node, graph: Graph) -> bool:
    names = [node.input(0), node.input(1), node.input(2)] + [o for o in node.outputs if o]
    return all(graph.values[n].dtype == "float32" for n in names if n and n in graph.values)


def _input(inputs: Sequence[np.ndarray | None], i: int) -> np.ndarray | None:
    return inputs[i] if i < len(inputs) else None


class _RecurrentTactic(Tactic):
    """What the recurrent tactics share: support checks, weights, state and output layout."""

    op_types = RECURRENT_OPS
    accepts_strided_output = False

    def supports(self, node: Node, graph: Graph) -> bool:
        """FP32 X/W/R and outputs; attributes this backend knows (see :func:`recurrent_spec`)."""
        if not _float32_node(node, graph):
            return False
        try:
            recurrent_spec(node, graph)
        except ValueError:
            return False
        return True

    @staticmethod
    def weight_positions(node: Node) -> tuple[int, ...]:
        """Input positions of W, R, B (and LSTM's P)."""
        return (1, 2, 3, 7) if node.op_type == "LSTM" else (1, 2, 3)

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Rearrange constant weights once (W^T of both directions side by side, R^T, folded
        biases); non-constant weights are rearranged at every run."""
        prepared = Prepared(params={})
        positions = [p for p in self.weight_positions(node) if node.input(p)]
        if not all(graph.const(node.input(p)) is not None for p in positions):
            return prepared
        spec = recurrent_spec(node, graph)
        p_name = node.input(7) if node.op_type == "LSTM" else ""
        weights = arrange_weights(
            spec,
            graph.const(node.input(1)),  # type: ignore[arg-type]
            graph.const(node.input(2)),  # type: ignore[arg-type]
            graph.const(node.input(3)) if node.input(3) else None,
            graph.const(p_name) if p_name else None,
        )
        prepared.tensors = dict(weights.__dict__)
        prepared.replaces = frozenset(positions)
        return prepared

    @staticmethod
    def spec_and_weights(
        node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> tuple[RecurrentSpec, RecurrentWeights]:
        """The node's spec and its arranged weights (prepared, or from the run's inputs)."""
        spec = prepared.scratch.get("spec")
        if spec is None:
            spec = recurrent_spec(node)
            prepared.scratch["spec"] = spec
        if prepared.tensors:
            return spec, RecurrentWeights(**prepared.tensors)
        w, r = inputs[1], inputs[2]
        assert w is not None and r is not None
        p = _input(inputs, 7) if node.op_type == "LSTM" else None
        return spec, arrange_weights(spec, w, r, _input(inputs, 3), p)

    def begin(
        self, node: Node, inputs: Sequence[np.ndarray | None], prepared: Prepared
    ) -> tuple[RecurrentSpec, RecurrentWeights, np.ndarray]:
        """The node's spec, its arranged weights and X as [seq, batch, input]."""
        spec, weights = self.spec_and_weights(node, inputs, prepared)
        x = inputs[0]
        assert x is not None
        return spec, weights, self.time_major(spec, x)

    @staticmethod
    def time_major(spec: RecurrentSpec, x: np.ndarray) -> np.ndarray:
        """X as [seq, batch, input], contiguous."""
        return np.ascontiguousarray(x.transpose(1, 0, 2)) if spec.layout else x

    @staticmethod
    def initial_states(
        spec: RecurrentSpec, inputs: Sequence[np.ndarray | None], batch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """h0 and c0 as [dirs, batch, H] float32 (zeros when absent)."""
        states = []
        for position in (5, 6):
            given = _input(inputs, position)
            if given is None:
                states.append(np.zeros((spec.directions, batch, spec.hidden), np.float32))
            else:
                state = given.transpose(1, 0, 2) if spec.layout else given
                states.append(np.ascontiguousarray(state, dtype=np.float32))
        return states[0], states[1]

    @staticmethod
    def lengths(inputs: Sequence[np.ndarray | None], seq: int, batch: int) -> np.ndarray:
        lens = _input(inputs, 4)
        if lens is None:
            return np.full(batch, seq, np.int64)
        return np.minimum(np.asarray(lens, np.int64), seq)

    @staticmethod
    def write_outputs(
        spec: RecurrentSpec, outputs: Sequence[np.ndarray | None], y: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> None:
        """Time-major results [seq, dirs, batch, H] / [dirs, batch, H] into the node's outputs
        (in its layout), skipping those already written in place and omitted ones."""
        results = (y, h, c)
        for index, out in enumerate(outputs[:3]):
            src = results[index]
            if out is None or out is src:
                continue
            if spec.layout:
                src = src.transpose(2, 0, 1, 3) if index == 0 else src.transpose(1, 0, 2)
            np.copyto(out, src)


@register_tactic
class FusedRecurrentTactic(RunsBound, _RecurrentTactic):
    """Temporal fusion: one GEMM for the input projection of all steps, then one numba kernel
    per direction for the whole recurrence (directions concurrent when large enough)."""

    name = "cpu.recurrent.fused"
    priority = 10
    # Run the two directions of a bidirectional layer on two threads (see the subclass).
    concurrent_directions: ClassVar[bool] = False

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray | None],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """Projection GEMM (BLAS), then the recurrence kernel (numba), then the layout of the
        outputs, on these arrays. Everything that does not change from run to run is settled
        here: the arranged weights, the buffers, whether the outputs are written in place, the
        sequence lengths when none are given. A streaming model (Silero VAD: one step of a
        128-unit LSTM per call) spent ~30 us a run on that Python. Weights that are run-time
        inputs are arranged on every call, so such a node binds only with ``copies``."""
        if not prepared.tensors and not copies:
            return None
        spec, weights = self.spec_and_weights(node, inputs, prepared)
        x_in = inputs[0]
        assert x_in is not None
        before: list[Callable[[], Any]] = []  # copies into the kernel's layouts, each call
        x: np.ndarray
        if spec.layout or not x_in.flags.c_contiguous:
            source = x_in.transpose(1, 0, 2) if spec.layout else x_in
            x = np.empty(source.shape, np.float32)
            before.append(functools.partial(np.copyto, x, source))
        else:
            x = x_in
        seq, batch, features = x.shape
        dirs, hidden, gh = spec.directions, spec.hidden, spec.gates * spec.hidden
        states: list[np.ndarray] = []
        for position in (5, 6):
            given = _input(inputs, position)
            if given is None:
                states.append(np.zeros((dirs, batch, hidden), np.float32))
                continue
            state = given.transpose(1, 0, 2) if spec.layout else given
            if state.dtype == np.float32 and state.flags.c_contiguous:
                states.append(state)  # the kernels only read h0 and c0
            else:
                states.append(np.empty(state.shape, np.float32))
                before.append(functools.partial(np.copyto, states[-1], state, casting="unsafe"))
        h0, c0 = states
        given_lens = _input(inputs, 4)
        lens = np.full(batch, seq, np.int64)
        if given_lens is not None:
            before.append(functools.partial(np.minimum, given_lens, seq, out=lens, casting="unsafe"))
        # Write straight into the outputs when they have the kernel's layout.
        y_out, h_out, c_out = (_input(outputs, i) for i in range(3))
        direct = spec.layout == 0
        shapes = ((seq, dirs, batch, hidden), (dirs, batch, hidden), (dirs, batch, hidden))
        results = [
            out if direct and out is not None and out.flags.c_contiguous else np.empty(shape, np.float32)
            for out, shape in zip((y_out, h_out, c_out), shapes, strict=True)
        ]
        y, h, c = results
        proj = np.empty((seq, batch, dirs * gh), np.float32)
        project: Callable[[], Any] = functools.partial(
            np.matmul, x.reshape(seq * batch, features), weights.w_t, out=proj.reshape(seq * batch, dirs * gh)
        )
        if seq * batch * features * dirs * gh < SINGLE_THREAD_PROJECTION_MACS:
            project = blas_single_thread_call(project)
        add_bias = functools.partial(np.add, proj, weights.input_bias, out=proj)
        recur = self.recurrence_call(spec, weights, proj, h0, c0, lens, y, h, c)
        after = (
            [functools.partial(self.write_outputs, spec, outputs, y, h, c)]
            if any(
                out is not None and out is not res
                for out, res in zip((y_out, h_out, c_out), results, strict=True)
            )
            else []
        )
        return in_order(*before, project, add_bias, recur, *after)

    def recurrence_call(
        self, spec: RecurrentSpec, weights: RecurrentWeights, proj: np.ndarray, h0: np.ndarray, c0: np.ndarray,
        lens: np.ndarray, y: np.ndarray, h: np.ndarray, c: np.ndarray,
    ) -> Callable[[], None]:  # fmt: skip
        """The recurrence over ``proj`` as one call: one numba kernel for the whole sequence
        (both directions at once when they are large enough to pay for a second thread)."""
        seq, batch = proj.shape[:2]
        reverse = np.array(spec.reverse, np.int64)
        macs = seq * batch * spec.hidden * spec.gates * spec.hidden
        kind = KIND[spec.op_type]
        args = (
            proj, weights.r_t, weights.candidate_bias, weights.peepholes, h0, c0, lens, spec.codes, spec.alphas,
            spec.betas, np.float32(spec.clip), spec.input_forget, spec.linear_before_reset, y, h, c,
        )  # fmt: skip
        if self.concurrent_directions and macs >= CONCURRENT_DIRECTIONS_MIN_MACS:
            return functools.partial(recurrence, kind, reverse, *args)
        # One direction after the other on this thread: no parallel region is entered at all
        # (even a one-thread parallel launch costs more than a small layer's whole recurrence).
        return in_order(
            *(functools.partial(_run_direction, kind, d, reverse[d], *args) for d in range(spec.directions))
        )


@register_tactic
class FusedConcurrentRecurrentTactic(FusedRecurrentTactic):
    """Temporal fusion with the two directions of a bidirectional layer on two threads (numba's
    pool). Whether that pays depends on the layer's size and on how busy the machine is, so it
    is a separate candidate the tuner measures against the one-thread form."""

    name = "cpu.recurrent.fused_concurrent"
    priority = 11
    concurrent_directions = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """Bidirectional layers only (one direction has nothing to run concurrently)."""
        return node.attr("direction", "forward") == "bidirectional" and super().supports(node, graph)


@njit(cache=True, nogil=True)
def _gru_reset_step(d, s, reverse, proj, hr, h, lens, f_code, alpha, beta, clip, extra):
    """GRU without linear_before_reset, one step: extra = r * h (0 for finished rows)."""
    batch, hidden = h.shape
    off = d * 3 * hidden
    for b in range(batch):
        if s >= lens[b]:
            extra[b, :] = 0.0
            continue
        t = lens[b] - 1 - s if reverse else s
        for j in range(hidden):
            r = _activate(f_code, _clip(proj[t, b, off + hidden + j] + hr[b, hidden + j], clip), alpha, beta)
            extra[b, j] = r * h[b, j]


@njit(cache=True, nogil=True)
def _gates_step(
    kind, d, s, reverse, proj, hr, hc, candidate_bias, peep, h, c, lens, codes, alphas, betas, clip,
    input_forget, linear_before_reset, y,
):  # fmt: skip
    """One time step after its hidden projection ``hr = h @ R^T`` (GRU: only z and r there, and
    ``hc`` is the candidate's ``(r*h) @ R_h^T``, or ``h @ R_h^T`` with linear_before_reset):
    gates, cell update, h/c in place, y written; finished rows keep their state, y = 0."""
    batch, hidden = h.shape
    gh = proj.shape[2] // y.shape[1]
    off = d * gh
    f_code, g_code, h_code = codes[d, 0], codes[d, 1], codes[d, 2]
    fa, ga, ha = alphas[d, 0], alphas[d, 1], alphas[d, 2]
    fb, gb, hb = betas[d, 0], betas[d, 1], betas[d, 2]
    for b in range(batch):
        if s >= lens[b]:
            y[s, d, b, :] = 0.0
            continue
        t = lens[b] - 1 - s if reverse else s
        p = proj[t, b, off : off + gh]
        for j in range(hidden):
            if kind == 1:
                z = _activate(f_code, _clip(p[j] + hr[b, j], clip), fa, fb)
                if linear_before_reset:
                    r = _activate(f_code, _clip(p[hidden + j] + hr[b, hidden + j], clip), fa, fb)
                    pre = p[2 * hidden + j] + r * (hc[b, j] + candidate_bias[d, j])
                else:
                    pre = p[2 * hidden + j] + hc[b, j]
                cand = _activate(g_code, _clip(pre, clip), ga, gb)
                h[b, j] = (np.float32(1.0) - z) * cand + z * h[b, j]
            elif kind == 2:
                cj = c[b, j]
                i_gate = _activate(f_code, _clip(p[j] + hr[b, j] + peep[d, j] * cj, clip), fa, fb)
                if input_forget:
                    f_gate = np.float32(1.0) - i_gate
                else:
                    pre_f = p[2 * hidden + j] + hr[b, 2 * hidden + j] + peep[d, 2 * hidden + j] * cj
                    f_gate = _activate(f_code, _clip(pre_f, clip), fa, fb)
                cand = _activate(g_code, _clip(p[3 * hidden + j] + hr[b, 3 * hidden + j], clip), ga, gb)
                c_new = f_gate * cj + i_gate * cand
                pre_o = p[hidden + j] + hr[b, hidden + j] + peep[d, hidden + j] * c_new
                o_gate = _activate(f_code, _clip(pre_o, clip), fa, fb)
                c[b, j] = c_new
                h[b, j] = o_gate * _activate(h_code, c_new, ha, hb)
            else:
                h[b, j] = _activate(f_code, _clip(p[j] + hr[b, j], clip), fa, fb)
        y[t, d, b, :] = h[b]


@njit(cache=True, nogil=True, error_model="numpy")
def _fast_gates_step(
    kind, d, s, reverse, proj, hr, hc, candidate_bias, peep, h, c, lens, f_code, clip, input_forget,
    linear_before_reset, y, acc_row, extra_row, g1, g2, g3, g4,
):  # fmt: skip
    """:func:`_gates_step` for the default activations: each row's pre-activations are gathered
    into ``acc_row`` and :func:`_fast_gates_row` does the vectorized gate math."""
    batch, hidden = h.shape
    gh = proj.shape[2] // y.shape[1]
    off = d * gh
    for b in range(batch):
        if s >= lens[b]:
            y[s, d, b, :] = 0.0
            continue
        t = lens[b] - 1 - s if reverse else s
        for j in range(gh):
            acc_row[j] = proj[t, b, off + j]
        if kind == 1:
            for j in range(2 * hidden):
                acc_row[j] += hr[b, j]
            if linear_before_reset:
                for j in range(hidden):
                    extra_row[j] = hc[b, j] + candidate_bias[d, j]
            else:
                for j in range(hidden):
                    acc_row[2 * hidden + j] += hc[b, j]
        else:
            for j in range(gh):
                acc_row[j] += hr[b, j]
        _fast_gates_row(kind, linear_before_reset, input_forget, f_code, d, acc_row, extra_row, h[b], c[b], peep,
                        clip, g1, g2, g3, g4)  # fmt: skip
        y[t, d, b, :] = h[b]


@register_tactic
class FusedBlasStepRecurrentTactic(FusedRecurrentTactic):
    """Temporal fusion with a BLAS hidden projection: the input projection of all steps is one
    GEMM as in ``cpu.recurrent.fused``; each step is then one small BLAS GEMM ``h @ R^T`` (one
    thread) and one fused numba kernel for the gates and the cell update, state kept in place.
    Pays off over the all-numba recurrence when batch x hidden is large enough for BLAS's
    register blocking to beat a plain loop; the tuner decides."""

    name = "cpu.recurrent.fused_blas_steps"
    priority = 9

    def recurrence_call(
        self, spec: RecurrentSpec, weights: RecurrentWeights, proj: np.ndarray, h0: np.ndarray, c0: np.ndarray,
        lens: np.ndarray, y: np.ndarray, h: np.ndarray, c: np.ndarray,
    ) -> Callable[[], None]:  # fmt: skip
        """The step-by-step recurrence below as one call."""
        return functools.partial(self.recur, spec, weights, proj, h0, c0, lens, y, h, c)

    def recur(
        self, spec: RecurrentSpec, weights: RecurrentWeights, proj: np.ndarray, h0: np.ndarray, c0: np.ndarray,
        lens: np.ndarray, y: np.ndarray, h: np.ndarray, c: np.ndarray,
    ) -> None:  # fmt: skip
        """Per direction and step: BLAS GEMM(s), then the numba gate kernel."""
        seq, batch = proj.shape[:2]
        hidden, gh = spec.hidden, spec.gates * spec.hidden
        gru, lbr = spec.op_type == "GRU", spec.linear_before_reset
        hr = np.empty((batch, 2 * hidden if gru else gh), np.float32)
        hc = np.zeros((batch, hidden), np.float32)
        extra = np.empty((batch, hidden), np.float32)
        kind, clip = KIND[spec.op_type], np.float32(spec.clip)
        fast = [default_activations(spec, d) for d in range(spec.directions)]
        acc_row = np.empty(gh, np.float32)
        extra_row = np.empty(hidden, np.float32)
        gates = tuple(np.empty(hidden, np.float32) for _ in range(4))
        with blas_single_thread():
            for d in range(spec.directions):
                reverse = spec.reverse[d]
                r_t = weights.r_t[d]
                if gru:
                    r_zr, r_h = (
                        np.ascontiguousarray(r_t[:, : 2 * hidden]),
                        np.ascontiguousarray(r_t[:, 2 * hidden :]),
                    )
                h_d, c_d = h[d], c[d]
                h_d[:] = h0[d]
                c_d[:] = c0[d]
                for s in range(seq):
                    if not gru:
                        np.matmul(h_d, r_t, out=hr)
                    else:
                        np.matmul(h_d, r_zr, out=hr)
                        if lbr:
                            np.matmul(h_d, r_h, out=hc)
                        else:
                            _gru_reset_step(d, s, reverse, proj, hr, h_d, lens, spec.codes[d, 0], spec.alphas[d, 0],
                                            spec.betas[d, 0], clip, extra)  # fmt: skip
                            np.matmul(extra, r_h, out=hc)
                    if fast[d]:
                        _fast_gates_step(
                            kind, d, s, reverse, proj, hr, hc, weights.candidate_bias, weights.peepholes, h_d, c_d,
                            lens, spec.codes[d, 0], clip, spec.input_forget, lbr, y, acc_row, extra_row, *gates,
                        )  # fmt: skip
                    else:
                        _gates_step(
                            kind, d, s, reverse, proj, hr, hc, weights.candidate_bias, weights.peepholes, h_d, c_d,
                            lens, spec.codes, spec.alphas, spec.betas, clip, spec.input_forget, lbr, y,
                        )  # fmt: skip


# --------------------------------------------------------------------------- step by step
def _numpy_activation(code: int, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """The activation ``code`` on an array (numpy, float32)."""
    one = np.float32(1.0)
    table = {
        0: lambda: one / (one + np.exp(-x)),
        1: lambda: np.tanh(x),
        2: lambda: np.maximum(x, 0),
        3: lambda: np.float32(alpha) * x + np.float32(beta),
        4: lambda: np.where(x >= 0, x, np.float32(alpha) * x),
        5: lambda: np.where(x > alpha, x, 0),
        6: lambda: np.float32(alpha) * np.tanh(np.float32(beta) * x),
        7: lambda: np.clip(np.float32(alpha) * x + np.float32(beta), 0, 1),
        8: lambda: np.where(x > 0, x, np.float32(alpha) * (np.exp(np.minimum(x, 0)) - one)),
        9: lambda: x / (one + np.abs(x)),
        10: lambda: np.log1p(np.exp(x)),
    }
    with np.errstate(over="ignore"):  # exp overflows to inf: sigmoid's limit, 0, is right
        return np.asarray(table[int(code)](), np.float32)


@register_tactic
class StepwiseRecurrentTactic(_RecurrentTactic):
    """The unfused form: per step and direction, BLAS GEMMs for x_t W^T and h R^T, then numpy
    gate arithmetic (a dozen small array ops)."""

    name = "cpu.recurrent.stepwise"
    priority = 0

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """Loop over time steps in Python; every step is its own GEMMs and elementwise ops."""
        spec, weights, x = self.begin(node, inputs, prepared)
        seq, batch, features = x.shape
        dirs, hidden, gh = spec.directions, spec.hidden, spec.gates * spec.hidden
        h0, c0 = self.initial_states(spec, inputs, batch)
        lens = self.lengths(inputs, seq, batch)
        y = np.zeros((seq, dirs, batch, hidden), np.float32)
        h_final = np.empty((dirs, batch, hidden), np.float32)
        c_final = np.empty((dirs, batch, hidden), np.float32)
        rows = np.arange(batch)
        clip = np.float32(spec.clip)
        for d in range(dirs):
            w_t = weights.w_t[:, d * gh : (d + 1) * gh]
            bias = weights.input_bias[d * gh : (d + 1) * gh]
            r_t = weights.r_t[d]
            codes, alphas, betas = spec.codes[d], spec.alphas[d], spec.betas[d]

            def act(k: int, v: np.ndarray) -> np.ndarray:
                return _numpy_activation(codes[k], np.clip(v, -clip, clip), alphas[k], betas[k])  # noqa: B023

            h, c = h0[d].copy(), c0[d].copy()
            for s in range(seq):
                active = s < lens
                t = np.where(active, lens - 1 - s, 0) if spec.reverse[d] else np.full(batch, s)
                z = x[t, rows] @ w_t + bias
                if spec.op_type == "GRU":
                    hr = h @ r_t[:, : 2 * hidden]
                    zg = act(0, z[:, :hidden] + hr[:, :hidden])
                    rg = act(0, z[:, hidden : 2 * hidden] + hr[:, hidden:])
                    if spec.linear_before_reset:
                        inner = rg * (h @ r_t[:, 2 * hidden :] + weights.candidate_bias[d])
                    else:
                        inner = (rg * h) @ r_t[:, 2 * hidden :]
                    candidate = act(1, z[:, 2 * hidden :] + inner)
                    h_new, c_new = (1 - zg) * candidate + zg * h, c
                elif spec.op_type == "LSTM":
                    z = z + h @ r_t
                    p = weights.peepholes[d]
                    i_gate = act(0, z[:, :hidden] + p[:hidden] * c)
                    f_gate = (
                        1 - i_gate
                        if spec.input_forget
                        else act(0, z[:, 2 * hidden : 3 * hidden] + p[2 * hidden :] * c)
                    )
                    c_new = f_gate * c + i_gate * act(1, z[:, 3 * hidden :])
                    o_gate = act(0, z[:, hidden : 2 * hidden] + p[hidden : 2 * hidden] * c_new)
                    h_new = o_gate * _numpy_activation(codes[2], c_new, alphas[2], betas[2])
                else:
                    h_new, c_new = act(0, z + h @ r_t), c
                mask = active[:, None]
                h = np.where(mask, h_new, h).astype(np.float32)
                c = np.where(mask, c_new, c).astype(np.float32)
                y[t[active], d, rows[active]] = h[active]
            h_final[d], c_final[d] = h, c
        self.write_outputs(spec, outputs, y, h_final, c_final)
