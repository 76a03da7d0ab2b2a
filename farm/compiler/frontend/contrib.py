"""ONNX Runtime's contrib ops, written as standard ONNX ops.

Models that went through ONNX Runtime's transformer optimizer (``onnxruntime.transformers.
optimizer``, the usual way BERT-like models are prepared for deployment) or were saved by an
ONNX Runtime session with graph optimizations on contain ops of the ``com.microsoft`` domain,
and a few ONNX Runtime registers in the ONNX domain itself (``SimplifiedLayerNormalization``, and
``LayerNormalization`` before opset 17, where ONNX did not have it yet). Their meaning is
ONNX Runtime's (its ContribOperators.md and CPU kernels); each is replaced here by the ONNX ops
that compute it, written as the patterns the fusion passes know, so the optimizer fuses them
back into our own kernels (Attention, LayerNorm, Gelu, the conv epilogues):

=================================  =============================================================
op                                 written as
=================================  =============================================================
Gelu, BiasGelu                     (x + bias) * 0.5 * (1 + Erf((x + bias) / sqrt 2))
FastGelu                           the tanh form of GELU on x (+ bias)
QuickGelu                          x * Sigmoid(alpha * x)
BiasAdd                            x + bias + skip
SkipLayerNormalization             LayerNorm(input + skip (+ bias)) and, when asked, the sum
SkipSimplifiedLayerNormalization   RMS norm of input + skip (+ bias) and, when asked, the sum
SimplifiedLayerNormalization       RMS norm (ONNX domain, ONNX Runtime's op)
LayerNormalization before 17       ReduceMean / Sub / Pow / Sqrt / Div / Mul / Add
EmbedLayerNormalization            Gathers of the word, position and segment embeddings, their
                                   sum, LayerNorm; the mask index as the count of each row's mask
Attention                          the packed QKV projection, Split, head reshapes, MatMul, scale,
                                   additive mask, Softmax, MatMul, head merge
FusedMatMul                        Transposes of the last two axes, MatMul, Mul(alpha)
FusedConv                          Conv (+ Z) and its activation
=================================  =============================================================

What is not written raises :class:`ModelError` naming the node and the reason (Attention with a
KV cache or rotary embedding, FusedMatMul's batch transposes, an activation FusedConv does not
define); other ``com.microsoft`` ops are reported by the loader as unsupported, by name.

Rule: every node of those op types, in every graph, is replaced in place by its ops, whose names
begin with the node's name; the node's outputs keep their names. Shapes the rewrite needs (the
QKV projection's width, a tensor's rank) come from initializers and onnx shape inference; the
rewrite repeats while it makes progress, since an op behind another contrib op gets its input
types only once that op is written out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, TypeProto, helper, numpy_helper

from farm.compiler.frontend.attributes import all_graphs, replace_nodes
from farm.compiler.frontend.errors import ModelError
from farm.compiler.frontend.functions import DEFAULT_DOMAINS

CONTRIB_DOMAIN = "com.microsoft"
MAX_ROUNDS = 8
SKIP_LN_EPSILON = 1e-12  # ONNX Runtime's default for SkipLayerNormalization / EmbedLayerNormalization
LN_EPSILON = 1e-5  # LayerNormalization's and SimplifiedLayerNormalization's default
ATTENTION_MASK_FILTER = -10000.0  # ONNX Runtime's default mask_filter_value

Types = dict[str, TypeProto]


class _Unknown(Exception):
    """A shape the rewrite needs is not known yet (another round may know it)."""


class Emitter:
    """Builds the ONNX nodes that replace one contrib node, at the model's opset: the forms of
    Unsqueeze, ReduceMean/ReduceSum and Split change with it (axes and sizes moved from
    attributes to inputs in opsets 13 and 18)."""

    def __init__(
        self,
        node: NodeProto,
        opset: int,
        types: Types,
        shared: dict[tuple[Any, ...], str] | None = None,
        taken: set[str] | None = None,
    ) -> None:
        self.node = node
        self.opset = opset
        self.types = types
        # values one graph's nodes can share (the additive mask every Attention of a model builds
        # from the same mask_index), by what they are computed from
        self.shared = shared if shared is not None else {}
        # every value and node name of the model, so that new ones never collide (ONNX does not
        # make node names unique, and the prefix is the node's name)
        self.taken = taken if taken is not None else set()
        self.nodes: list[NodeProto] = []
        self.prefix = node.name or node.output[0]
        self.count = 0

    @property
    def where(self) -> str:
        domain = node_domain(self.node)
        label = f"{domain}.{self.node.op_type}" if domain else self.node.op_type
        return f"node {self.prefix!r} ({label})"

    def error(self, why: str) -> ModelError:
        return ModelError(f"{self.where}: {why}")

    def fresh(self, what: str) -> str:
        while True:
            self.count += 1
            name = f"{self.prefix}/{what}_{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        """One node with one output (``out`` or a fresh name); returns the output's name."""
        name = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=self.fresh(op_type), **attrs))
        return name

    def multi(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> None:
        """One node with several outputs (empty names for optional ones not wanted)."""
        self.nodes.append(
            helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(op_type), **attrs)
        )

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        array = np.asarray(value, dtype=dtype)
        return self.op("Constant", [], value=numpy_helper.from_array(array, self.fresh("value")))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(list(axes), np.int64)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int, out: str | None = None) -> str:
        takes_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if takes_input:
            return self.op(op_type, [x, self.const(list(axes), np.int64)], out, keepdims=keepdims)
        return self.op(op_type, [x], out, axes=list(axes), keepdims=keepdims)

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        outs = [self.fresh("part") for _ in sizes]
        if self.opset >= 13:
            self.multi("Split", [x, self.const(list(sizes), np.int64)], outs, axis=axis)
        else:
            self.multi("Split", [x], outs, axis=axis, split=list(sizes))
        return outs

    def identity(self, x: str, out: str) -> None:
        self.op("Identity", [x], out)

    # what the node's inputs, outputs and attributes say

    def attrs(self) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute}

    def input(self, index: int) -> str:
        return self.node.input[index] if index < len(self.node.input) else ""

    def output(self, index: int) -> str:
        return self.node.output[index] if index < len(self.node.output) else ""

    def dims(self, name: str) -> list[int | None]:
        """The dims of ``name`` (None for a symbolic one); _Unknown when its rank is not known."""
        info = self.types.get(name)
        if (
            info is None
            or info.WhichOneof("value") != "tensor_type"
            or not info.tensor_type.HasField("shape")
        ):
            raise _Unknown(name)
        return [d.dim_value if d.HasField("dim_value") else None for d in info.tensor_type.shape.dim]

    def elem_type(self, name: str) -> int:
        info = self.types.get(name)
        if info is None or info.WhichOneof("value") != "tensor_type":
            raise _Unknown(name)
        return int(info.tensor_type.elem_type)


def node_domain(node: NodeProto) -> str:
    return "" if node.domain in DEFAULT_DOMAINS else node.domain


# ---------------------------------------------------------------------------------------------
# shared pieces


def _gelu_erf(e: Emitter, x: str, out: str) -> None:
    """0.5 * x * (1 + Erf(x / sqrt 2)), as the GELU fusion matches it."""
    erf = e.op("Erf", [e.op("Div", [x, e.const(math.sqrt(2.0))])])
    e.op("Mul", [e.op("Mul", [x, e.op("Add", [erf, e.const(1.0)])]), e.const(0.5)], out)


def _gelu_tanh(e: Emitter, x: str, out: str) -> None:
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    cube = e.op("Mul", [e.op("Pow", [x, e.const(3.0)]), e.const(0.044715)])
    inner = e.op("Mul", [e.op("Add", [x, cube]), e.const(math.sqrt(2.0 / math.pi))])
    e.op("Mul", [e.op("Mul", [x, e.op("Add", [e.op("Tanh", [inner]), e.const(1.0)])]), e.const(0.5)], out)


def _norm_axes(e: Emitter, x: str, axis: int) -> list[int]:
    """The axes ``axis .. -1`` as negative numbers (a positive axis needs ``x``'s rank)."""
    if axis < 0:
        return list(range(axis, 0))
    rank = len(e.dims(x))
    if axis >= rank:
        raise e.error(f"axis {axis} is out of range for a rank-{rank} input")
    return list(range(axis - rank, 0))


def _layer_norm(
    e: Emitter, x: str, gamma: str, beta: str, axis: int, epsilon: float, outs: Sequence[str]
) -> None:
    """LayerNorm of ``x`` over ``axis..-1`` into ``outs`` = (Y, Mean, InvStdDev; empty names for
    the optional ones not wanted): ONNX LayerNormalization from opset 17, else its decomposition
    (the pattern the LayerNorm fusion matches)."""
    y, mean_out, inv_out = (list(outs) + ["", "", ""])[:3]
    if e.opset >= 17:
        inputs = [x, gamma] + ([beta] if beta else [])
        e.multi("LayerNormalization", inputs, [y, mean_out, inv_out], axis=axis, epsilon=epsilon)
        return
    axes = _norm_axes(e, x, axis)
    mean = e.reduce("ReduceMean", x, axes, 1)
    centred = e.op("Sub", [x, mean])
    var = e.reduce("ReduceMean", e.op("Pow", [centred, e.const(2.0)]), axes, 1)
    std = e.op("Sqrt", [e.op("Add", [var, e.const(epsilon)])])
    normed = e.op("Div", [centred, std])
    if beta:
        e.op("Add", [e.op("Mul", [normed, gamma]), beta], y)
    else:
        e.op("Mul", [normed, gamma], y)
    if mean_out:
        e.identity(mean, mean_out)
    if inv_out:
        e.op("Reciprocal", [std], inv_out)


def _rms_norm(e: Emitter, x: str, gamma: str, axis: int, epsilon: float, y: str, inv_out: str = "") -> None:
    """x / Sqrt(mean(x^2) + eps) * gamma over ``axis..-1``; ``inv_out`` the reciprocal root."""
    axes = _norm_axes(e, x, axis)
    mean_square = e.reduce("ReduceMean", e.op("Pow", [x, e.const(2.0)]), axes, 1)
    root = e.op("Sqrt", [e.op("Add", [mean_square, e.const(epsilon)])])
    e.op("Mul", [e.op("Div", [x, root]), gamma], y)
    if inv_out:
        e.op("Reciprocal", [root], inv_out)


def _skip_sum(e: Emitter) -> str:
    """input (+ bias, the node's input 4 for SkipLayerNormalization, 3 for the simplified one)
    + skip, named as the node's output 3 when the model reads that output. The bias is added
    first: a MatMul's bias, then the residual, is the order the epilogue fusion folds into
    the GEMM."""
    bias_index = 4 if e.node.op_type == "SkipLayerNormalization" else 3
    total = e.input(0)
    if e.input(bias_index):
        total = e.op("Add", [total, e.input(bias_index)])
    total = e.op("Add", [total, e.input(1)])
    if e.output(3):
        e.identity(total, e.output(3))
    return total


# ---------------------------------------------------------------------------------------------
# the ops


def _biased_input(e: Emitter) -> str:
    """Input 0, plus input 1 when the node has one (BiasGelu's B, FastGelu's optional bias)."""
    return e.op("Add", [e.input(0), e.input(1)]) if e.input(1) else e.input(0)


def _gelu(e: Emitter) -> None:
    _gelu_erf(e, _biased_input(e), e.output(0))


def _fast_gelu(e: Emitter) -> None:
    _gelu_tanh(e, _biased_input(e), e.output(0))


def _quick_gelu(e: Emitter) -> None:
    alpha = float(e.attrs().get("alpha", 1.702))
    x = e.input(0)
    e.op("Mul", [x, e.op("Sigmoid", [e.op("Mul", [x, e.const(alpha)])])], e.output(0))


def _bias_add(e: Emitter) -> None:
    e.op("Add", [e.op("Add", [e.input(0), e.input(1)]), e.input(2)], e.output(0))


def _skip_layer_norm(e: Emitter) -> None:
    eps = float(e.attrs().get("epsilon", SKIP_LN_EPSILON))
    _layer_norm(e, _skip_sum(e), e.input(2), e.input(3), -1, eps, [e.output(0), e.output(1), e.output(2)])


def _skip_simplified_layer_norm(e: Emitter) -> None:
    eps = float(e.attrs().get("epsilon", SKIP_LN_EPSILON))
    if e.output(1):
        raise e.error("its mean output (output 1) is not defined for an RMS norm; the model reads it")
    _rms_norm(e, _skip_sum(e), e.input(2), -1, eps, e.output(0), e.output(2))


def _simplified_layer_norm(e: Emitter) -> None:
    attrs = e.attrs()
    eps = float(attrs.get("epsilon", LN_EPSILON))
    _rms_norm(e, e.input(0), e.input(1), int(attrs.get("axis", -1)), eps, e.output(0), e.output(1))


def _legacy_layer_norm(e: Emitter) -> None:
    attrs = e.attrs()
    eps = float(attrs.get("epsilon", LN_EPSILON))
    axis = int(attrs.get("axis", -1))
    _layer_norm(e, e.input(0), e.input(1), e.input(2), axis, eps, [e.output(0), e.output(1), e.output(2)])


def _fused_matmul(e: Emitter) -> None:
    attrs = e.attrs()
    if int(attrs.get("transBatchA", 0)) or int(attrs.get("transBatchB", 0)):
        raise e.error("transBatchA / transBatchB are not supported")
    operands = []
    for index, flag in ((0, "transA"), (1, "transB")):
        x = e.input(index)
        if int(attrs.get(flag, 0)):
            rank = len(e.dims(x))
            if rank < 2:
                raise e.error(f"{flag} on a rank-{rank} input")
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            x = e.op("Transpose", [x], perm=perm)
        operands.append(x)
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 1.0:
        e.op("MatMul", operands, e.output(0))
    else:
        e.op("Mul", [e.op("MatMul", operands), e.const(alpha)], e.output(0))


FUSED_CONV_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid")
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _fused_conv(e: Emitter) -> None:
    attrs = e.attrs()
    activation = attrs.get("activation", b"")
    activation = activation.decode() if isinstance(activation, bytes) else str(activation)
    params = [float(p) for p in attrs.get("activation_params", [])]
    if activation and activation not in FUSED_CONV_ACTIVATIONS:
        raise e.error(
            f"activation {activation!r} is not one FusedConv defines ({', '.join(FUSED_CONV_ACTIVATIONS)})"
        )
    conv_attrs = {k: v for k, v in attrs.items() if k in CONV_ATTRS}
    if isinstance(conv_attrs.get("auto_pad"), bytes):
        conv_attrs["auto_pad"] = conv_attrs["auto_pad"].decode()
    inputs = [e.input(0), e.input(1)] + ([e.input(2)] if e.input(2) else [])
    y = e.op("Conv", inputs, None if activation or e.input(3) else e.output(0), **conv_attrs)
    if e.input(3):
        y = e.op("Add", [y, e.input(3)], None if activation else e.output(0))
    if not activation:
        return
    out = e.output(0)
    if activation in ("Relu", "Tanh", "Sigmoid"):
        e.op(activation, [y], out)
    elif activation == "LeakyRelu":
        e.op("LeakyRelu", [y], out, alpha=params[0] if params else 0.01)
    elif activation == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params) :])[:2]
        e.op("HardSigmoid", [y], out, alpha=alpha, beta=beta)
    else:  # Clip
        if len(params) < 2:
            raise e.error("a Clip activation needs activation_params [min, max]")
        e.op("Clip", [y, e.const(params[0]), e.const(params[1])], out)


def _embed_layer_norm(e: Emitter) -> None:
    attrs = e.attrs()
    eps = float(attrs.get("epsilon", SKIP_LN_EPSILON))
    ids, segments, words, positions, segment_table = (e.input(i) for i in range(5))
    gamma, beta, mask, position_ids = (e.input(i) for i in range(5, 9))
    total = e.op("Gather", [words, ids])
    if position_ids:
        total = e.op("Add", [total, e.op("Gather", [positions, position_ids])])
    else:  # positions 0 .. seq-1 of every row
        seq = e.op("Gather", [e.op("Shape", [ids]), e.const(1, np.int64)], axis=0)
        rows = e.op("Range", [e.const(0, np.int64), seq, e.const(1, np.int64)])
        total = e.op("Add", [total, e.op("Gather", [positions, rows])])
    if segments and segment_table:
        total = e.op("Add", [total, e.op("Gather", [segment_table, segments])])
    _layer_norm(e, total, gamma, beta, -1, eps, [e.output(0)])
    if e.output(2):
        e.identity(total, e.output(2))
    if not e.output(1):
        return
    if mask:  # the count of each row's attending positions (ONNX Runtime's mask index)
        counts = e.reduce("ReduceSum", e.op("Cast", [mask], to=TensorProto.INT32), [1], 0)
        e.identity(counts, e.output(1))
    else:
        batch = e.op("Slice", [e.op("Shape", [ids]), e.const([0], np.int64), e.const([1], np.int64)])
        zero = numpy_helper.from_array(np.zeros(1, np.int32), e.fresh("zero"))
        e.op("ConstantOfShape", [batch], e.output(1), value=zero)


def _attention(e: Emitter) -> None:
    attrs = e.attrs()
    x, weight, bias, mask = (e.input(i) for i in range(4))
    past, extra_bias, past_length = e.input(4), e.input(5), e.input(6)
    if past or past_length:
        raise e.error("a KV cache (past / past_sequence_length) is not supported")
    if int(attrs.get("do_rotary", 0)):
        raise e.error("rotary embedding (do_rotary) is not supported")
    heads = int(attrs.get("num_heads", 0))
    if heads <= 0:
        raise e.error("num_heads must be a positive number")
    sizes = [int(s) for s in attrs.get("qkv_hidden_sizes", [])]
    if not sizes:
        width = e.dims(weight)[-1]
        if width is None or width % 3:
            raise e.error(f"the QKV weight's width {width} is not three equal parts")
        sizes = [width // 3] * 3
    if len(sizes) != 3 or sizes[0] != sizes[1] or any(s <= 0 or s % heads for s in sizes):
        raise e.error(f"qkv_hidden_sizes {sizes} must be three positive multiples of num_heads with Q = K")
    head_q, head_v = sizes[0] // heads, sizes[2] // heads
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head_q)
    filter_value = float(attrs.get("mask_filter_value", ATTENTION_MASK_FILTER))

    projected = e.op("MatMul", [x, weight])
    if bias:
        projected = e.op("Add", [projected, bias])
    q, k, v = e.split(projected, sizes, -1)
    q_heads = e.op(
        "Transpose", [e.op("Reshape", [q, e.const([0, 0, heads, head_q], np.int64)])], perm=[0, 2, 1, 3]
    )
    k_heads = e.op(
        "Transpose", [e.op("Reshape", [k, e.const([0, 0, heads, head_q], np.int64)])], perm=[0, 2, 1, 3]
    )
    k_t = e.op("Transpose", [k_heads], perm=[0, 1, 3, 2])
    v_heads = e.op(
        "Transpose", [e.op("Reshape", [v, e.const([0, 0, heads, head_v], np.int64)])], perm=[0, 2, 1, 3]
    )
    scores = e.op("Mul", [e.op("MatMul", [q_heads, k_t]), e.const(scale)])
    additive = _attention_mask(e, x, mask, int(attrs.get("unidirectional", 0)), filter_value)
    if extra_bias:
        additive = extra_bias if not additive else e.op("Add", [additive, extra_bias])
    if additive:
        scores = e.op("Add", [scores, additive])
    context = e.op("MatMul", [e.op("Softmax", [scores], axis=-1), v_heads])
    merged = e.op("Transpose", [context], perm=[0, 2, 1, 3])
    e.op("Reshape", [merged, e.const([0, 0, sizes[2]], np.int64)], e.output(0))
    if e.output(1):  # present: K and V stacked, [2, B, heads, S, head size]
        stacked = [e.unsqueeze(k_heads, [0]), e.unsqueeze(v_heads, [0])]
        e.op("Concat", stacked, e.output(1), axis=0)


def _attention_mask(e: Emitter, x: str, mask: str, causal: int, filter_value: float) -> str:
    """The additive mask of ONNX Runtime's Attention: ``filter_value`` where a key is masked,
    0 elsewhere, broadcasting into [B, heads, S, S]; "" when nothing is masked. Every Attention
    of a graph with the same mask_index and ``causal`` gets the same tensor: a 1-D mask_index
    and ``causal`` take the sequence length from the first one's ``x``, which self-attention over
    the sequence the mask_index describes shares (another length would fail to broadcast).

    mask_index: 1-D [B], each row's end position (keys at and after it are masked); 2-D [B, S],
    1 to attend, 0 to mask; 3-D [B, S, S] per query. ``causal`` masks keys after the query."""
    rank = len(e.dims(mask)) if mask else 0
    key = (mask, causal, filter_value)
    if key in e.shared:
        return e.shared[key]
    e.shared[key] = additive = _build_mask(e, x, mask, rank, causal, filter_value)
    return additive


def _build_mask(e: Emitter, x: str, mask: str, rank: int, causal: int, filter_value: float) -> str:
    masked = ""
    if mask:
        if rank == 1:
            seq = e.op("Gather", [e.op("Shape", [x]), e.const(1, np.int64)], axis=0)
            keys = e.op("Range", [e.const(0, np.int64), seq, e.const(1, np.int64)])
            ends = e.op("Cast", [e.unsqueeze(mask, [1])], to=TensorProto.INT64)
            masked = e.unsqueeze(e.op("Not", [e.op("Less", [e.unsqueeze(keys, [0]), ends])]), [1, 2])
        elif rank in (2, 3):
            zero = e.const(0, helper.tensor_dtype_to_np_dtype(e.elem_type(mask)))
            attend = e.op("Greater", [mask, zero])
            masked = e.unsqueeze(e.op("Not", [attend]), [1, 2] if rank == 2 else [1])
        else:
            raise e.error(
                f"a rank-{rank} mask_index is not supported (1-D end positions, 2-D or 3-D masks are)"
            )
    if causal:
        seq = e.op("Gather", [e.op("Shape", [x]), e.const(1, np.int64)], axis=0)
        positions = e.op("Range", [e.const(0, np.int64), seq, e.const(1, np.int64)])
        future = e.op("Greater", [e.unsqueeze(positions, [0]), e.unsqueeze(positions, [1])])
        masked = future if not masked else e.op("Or", [masked, future])
    if not masked:
        return ""
    return e.op("Where", [masked, e.const(filter_value), e.const(0.0)])


EXPANSIONS: dict[str, Callable[[Emitter], None]] = {
    "Gelu": _gelu,
    "BiasGelu": _gelu,
    "FastGelu": _fast_gelu,
    "QuickGelu": _quick_gelu,
    "BiasAdd": _bias_add,
    "SkipLayerNormalization": _skip_layer_norm,
    "SkipSimplifiedLayerNormalization": _skip_simplified_layer_norm,
    "SimplifiedLayerNormalization": _simplified_layer_norm,
    "LayerNormalization": _legacy_layer_norm,
    "EmbedLayerNormalization": _embed_layer_norm,
    "Attention": _attention,
    "FusedMatMul": _fused_matmul,
    "FusedConv": _fused_conv,
}
# ops ONNX Runtime registers in the ONNX domain itself
ONNX_DOMAIN_CONTRIB = ("SimplifiedLayerNormalization",)


def is_contrib(node: NodeProto, opset: int) -> bool:
    """Whether ``node`` is a contrib op this module writes out."""
    domain = node_domain(node)
    if domain == CONTRIB_DOMAIN:
        return node.op_type in EXPANSIONS
    if domain == "":
        return node.op_type in ONNX_DOMAIN_CONTRIB or (node.op_type == "LayerNormalization" and opset < 17)
    return False


def expand_contrib_ops(proto: ModelProto, opset: int, types_of: Callable[[ModelProto], Types]) -> ModelProto:
    """``proto`` with every contrib op (:func:`is_contrib`) written as ONNX ops, in place.

    ``types_of`` gives the value types of a model (onnx shape inference); it is called once per
    round, and only when a round has nodes to write."""
    for _ in range(MAX_ROUNDS):
        pending = [n for g in all_graphs(proto.graph) for n in g.node if is_contrib(n, opset)]
        if not pending:
            return proto
        if not any(o.domain == CONTRIB_DOMAIN for o in proto.opset_import):
            # ONNX Runtime's optimizer leaves it out of the models it hands back in memory
            proto.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
        types = types_of(proto)
        taken = _names(proto)
        progress = False
        waiting: list[tuple[Emitter, str]] = []
        for graph in reversed(list(all_graphs(proto.graph))):  # innermost first
            shared: dict[tuple[Any, ...], str] = {}
            write_out = functools.partial(
                _write_out, opset=opset, types=types, shared=shared, taken=taken, waiting=waiting
            )
            progress |= replace_nodes(graph, write_out)
        if not progress:
            emitter, name = waiting[0]
            raise emitter.error(f"the shape of {name!r} is not known, and writing it as ONNX ops needs it")
    raise ModelError(f"contrib ops still left after {MAX_ROUNDS} rounds of writing them as ONNX ops")


def _write_out(
    node: NodeProto,
    *,
    opset: int,
    types: Types,
    shared: dict[tuple[Any, ...], str],
    taken: set[str],
    waiting: list[tuple[Emitter, str]],
) -> list[NodeProto] | None:
    """The ONNX nodes of ``node`` when it is a contrib op whose shapes are known; None to keep it
    (a contrib op whose shapes are not known yet is listed in ``waiting``)."""
    if not is_contrib(node, opset):
        return None
    emitter = Emitter(node, opset, types, shared, taken)
    try:
        EXPANSIONS[node.op_type](emitter)
    except _Unknown as unknown:
        waiting.append((emitter, str(unknown)))
        return None
    return emitter.nodes


def _names(proto: ModelProto) -> set[str]:
    """Every value and node name used anywhere in the model."""
    names: set[str] = set()
    for graph in all_graphs(proto.graph):
        names.update(init.name for init in graph.initializer)
        names.update(info.name for info in graph.input)
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    return names
