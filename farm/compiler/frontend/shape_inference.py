"""Dtype and shape inference for IR graphs, symbolic dims included, re-runnable at any time.

``infer_shapes(graph, input_shapes)`` (re)fills ``Value.dtype`` and ``Value.shape`` of every value,
in nested subgraphs too, for ONNX ops in canonical form and for the fused ops.

Besides shapes it propagates *values* of small integer tensors, which is what resolves
``Shape -> Gather -> Concat -> Reshape`` chains:

* a node whose inputs are all known small tensors is evaluated with the reference
  implementation (``Shape`` of a static-shaped value is such a known tensor);
* ``Shape`` of a partly symbolic value gives a list of dims (``["batch", 128, 768]``) that
  Gather, Slice, Concat, Unsqueeze, Squeeze, Cast, Identity and integer arithmetic carry along,
  so Reshape, Expand, ConstantOfShape, Tile and Range can take their output shape from it.

When every graph input has a concrete shape, every shape comes out concrete. Sizes that depend on
data (NonZero, NonMaxSuppression, Loop trip counts) get a fresh symbolic dim named after the
value, so repeated inference gives the same names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from farm.compiler.frontend.errors import ModelError
from farm.compiler.frontend.symbolic import (
    broadcast_shapes,
    dim_add,
    dim_divide,
    dim_floordiv,
    dim_product,
    dim_sub,
    factors,
    make_dim,
)
from farm.compiler.ir.dtypes import dtype_name, from_onnx
from farm.compiler.ir.graph import Dim, Graph, Node, Shape, Value

MAX_EVAL_ELEMENTS = 4096
"""Nodes whose inputs are all known are evaluated when no input is larger than this."""
SHAPE_GENERATORS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Pad", "OneHot", "EyeLike"})
"""Ops whose output size comes from input values, not input sizes."""
NO_EVAL = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                     "If", "Loop", "Scan"})


@dataclass
class Info:
    """What inference knows about one value."""

    dtype: str | None
    shape: Shape | None
    value: np.ndarray | None = None  # the data, when known and small
    dims: list[Dim] | None = None  # a 1-D int tensor's elements, possibly symbolic


Rule = Callable[[Node, list[Info]], list[tuple[str | None, Shape | None]]]
_RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the shape/dtype rule of ``op_types``: it receives the
    node and one :class:`Info` per input and returns one (dtype, shape) per output."""

    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            _RULES[op_type] = fn
        return fn

    return register


def infer_shapes(graph: Graph, input_shapes: dict[str, tuple] | None = None) -> None:
    """(Re)fill dtype and shape of every value of ``graph`` (and of its subgraphs).

    ``input_shapes`` sets the shapes of graph inputs first (ints or symbolic names). Values whose
    shape cannot be determined get ``shape=None``.
    """
    for name, shape in (input_shapes or {}).items():
        if name not in graph.inputs:
            raise ModelError(f"input_shapes names {name!r}, which is not a graph input (inputs: {graph.inputs})")
        graph.values[name].shape = tuple(int(d) if isinstance(d, (int, np.integer)) else str(d) for d in shape)
    _infer_graph(graph, {})


def _info_of(value: Value) -> Info:
    info = Info(value.dtype, value.shape)
    if value.const is not None:
        info.dtype = dtype_name(value.const.dtype)
        info.shape = tuple(int(d) for d in value.const.shape)
        if value.const.size <= MAX_EVAL_ELEMENTS:
            info.value = value.const
    return info


def _infer_graph(graph: Graph, outer: dict[str, Info]) -> dict[str, Info]:
    env: dict[str, Info] = dict(outer)
    for name, value in graph.values.items():
        if value.const is not None:
            env[name] = _info_of(value)
    for name in graph.inputs:
        value = graph.values[name]
        if value.const is not None and value.shape != tuple(value.const.shape):
            env[name] = Info(value.dtype, value.shape)  # an overridden initializer-input
        elif value.const is None:
            env[name] = Info(value.dtype, value.shape)
    for node in graph.nodes:
        inputs = [env.get(i, Info(None, None)) if i else Info(None, None) for i in node.inputs]
        for i, name in enumerate(node.inputs):
            if name and name in graph.values and name not in env:
                inputs[i] = Info(graph.values[name].dtype, graph.values[name].shape)
        results = _infer_node(node, inputs, env)
        for name, info in zip(node.outputs, results, strict=False):
            if not name:
                continue
            value = graph.add_value(name)
            value.dtype = info.dtype
            value.shape = info.shape
            env[name] = info
    return env


def _infer_node(node: Node, inputs: list[Info], env: dict[str, Info]) -> list[Info]:
    if _may_evaluate(node, inputs):
        evaluated = _try_evaluate(node, inputs)
        if evaluated is not None:
            return evaluated
    fn = _RULES.get(node.op_type)
    outputs: list[Info] = []
    if node.op_type in ("If", "Loop", "Scan"):
        outputs = _control_flow(node, inputs, env)
    elif fn is not None:
        try:
            typed = fn(node, inputs)
        except Exception:  # a nonsensical node leaves its outputs unknown; the reference will say why
            typed = []
        outputs = [Info(dtype, shape) for dtype, shape in typed]
    while len(outputs) < len(node.outputs):
        outputs.append(Info(None, None))
    for out, name in zip(outputs, node.outputs, strict=False):
        if out.shape is not None:
            out.shape = tuple(_fresh_if_negative(d, name, i) for i, d in enumerate(out.shape))
    try:
        dims = _propagate_dims(node, inputs)
        if node.op_type == "Equal" and outputs:
            decided = _compare_dims(node, inputs)
            static = outputs[0].shape if outputs[0].shape is not None else None
            if decided is not None and static is not None and all(isinstance(d, int) for d in static):
                sizes = tuple(int(d) for d in static)
                outputs[0].value = decided.reshape(sizes) if int(np.prod(sizes)) == decided.size else None
    except (IndexError, ValueError, TypeError):
        dims = None
    if dims is not None and outputs:
        outputs[0].dims = dims
    return outputs


def _may_evaluate(node: Node, inputs: list[Info]) -> bool:
    """Evaluate only when the outputs will be small too: ops that build tensors from shape values
    (ConstantOfShape, Expand, Tile, Range, ...) could otherwise allocate whole activations."""
    fn = _RULES.get(node.op_type)
    if fn is None:
        return True
    try:
        predicted = fn(node, inputs)
    except Exception:
        return True
    for _, shape in predicted:
        if shape is None:
            return node.op_type not in SHAPE_GENERATORS
        sizes = [d for d in shape if isinstance(d, int) and d >= 0]
        if len(sizes) != len(shape):
            return node.op_type not in SHAPE_GENERATORS
        if int(np.prod(sizes)) > MAX_EVAL_ELEMENTS:
            return False
    return True


def _fresh_if_negative(d: Dim, name: str, axis: int) -> Dim:
    if d is None or (isinstance(d, int) and d < 0):
        return f"{name}_dim{axis}"
    return d


def _try_evaluate(node: Node, inputs: list[Info]) -> list[Info] | None:
    """Run the reference when every input is a known small tensor (shape arithmetic)."""
    if node.op_type in NO_EVAL or not node.inputs:
        return None
    present = [i for name, i in zip(node.inputs, inputs, strict=False) if name]
    if not present or any(i.value is None for i in present):
        if node.op_type == "Shape" and inputs and inputs[0].shape is not None and all(
            isinstance(d, int) for d in inputs[0].shape
        ):
            pass
        else:
            return None
    from farm.compiler.reference import run_node

    args: list[np.ndarray | None] = []
    for name, info in zip(node.inputs, inputs, strict=False):
        if not name:
            args.append(None)
        elif info.value is not None:
            args.append(info.value)
        else:  # Shape of a static value: the data does not matter
            args.append(np.empty(tuple(int(d) for d in info.shape or ()), dtype=np.float32))
    try:
        with np.errstate(all="ignore"):
            results = run_node(node, args)
    except Exception:
        return None
    out = []
    for r in results:
        r = np.asarray(r)
        info = Info(dtype_name(r.dtype), tuple(int(d) for d in r.shape))
        if r.size <= MAX_EVAL_ELEMENTS:
            info.value = r
            if r.ndim <= 1 and np.issubdtype(r.dtype, np.integer):
                info.dims = [int(v) for v in r.reshape(-1)]
        out.append(info)
    return out


# ---------------------------------------------------------------------------------------- values
def _dims_of(info: Info) -> list[Dim] | None:
    if info.dims is not None:
        return list(info.dims)
    if info.value is not None and info.value.ndim <= 1 and np.issubdtype(info.value.dtype, np.integer):
        return [int(v) for v in info.value.reshape(-1)]
    return None


def _compare_dims(node: Node, inputs: list[Info]) -> np.ndarray | None:
    """Equal on shape values with symbolic entries, when every element is decidable: a symbolic
    dim equals itself and never a negative number (e.g. Reshape/Expand's -1 markers)."""
    a, b = _dims_of(inputs[0]), _dims_of(inputs[1])
    if a is None or b is None:
        return None
    if len(a) == 1 and len(b) > 1:
        a = a * len(b)
    if len(b) == 1 and len(a) > 1:
        b = b * len(a)
    if len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b, strict=True):
        if isinstance(x, int) and isinstance(y, int) or x == y:
            out.append(x == y)
        elif (isinstance(x, int) and x < 0) or (isinstance(y, int) and y < 0):
            out.append(False)
        else:
            return None
    return np.array(out, dtype=bool)


def _propagate_dims(node: Node, inputs: list[Info]) -> list[Dim] | None:
    """Carry symbolic 1-D int tensors through the ops shape arithmetic uses."""
    op = node.op_type
    if op == "Shape":
        shape = inputs[0].shape
        if shape is None:
            return None
        rank = len(shape)
        start = int(node.attr("start", 0))
        end = node.attr("end", None)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        stop = rank if end is None else min(max(int(end) + rank if int(end) < 0 else int(end), 0), rank)
        return list(shape[start:stop])
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten") and inputs:
        dims = _dims_of(inputs[0])
        if op == "Cast" and dims is not None:
            return dims
        return dims
    if op == "Concat":
        parts = [_dims_of(i) for i in inputs]
        if any(p is None for p in parts):
            return None
        return [d for p in parts for d in p]  # type: ignore[union-attr]
    if op == "Gather":
        dims = _dims_of(inputs[0])
        index = inputs[1].value
        if dims is None or index is None:
            return None
        picked = [dims[int(i)] for i in index.reshape(-1)]
        return picked
    if op == "Slice":
        dims = _dims_of(inputs[0])
        if dims is None or any(i.value is None for i in inputs[1:3]):
            return None
        start = int(inputs[1].value.reshape(-1)[0])  # type: ignore[union-attr]
        end = int(inputs[2].value.reshape(-1)[0])  # type: ignore[union-attr]
        step = int(inputs[4].value.reshape(-1)[0]) if len(inputs) > 4 and inputs[4].value is not None else 1
        from farm.compiler.reference.shape_ops import slice_bounds

        return dims[slice_bounds(len(dims), start, end, step)]
    if op == "Where" and len(inputs) == 3 and inputs[0].value is not None:
        a, b = _dims_of(inputs[1]), _dims_of(inputs[2])
        cond = [bool(c) for c in inputs[0].value.reshape(-1)]
        if a is None or b is None:
            return None
        length = max(len(cond), len(a), len(b))
        cond, a, b = (v * length if len(v) == 1 else v for v in (cond, a, b))  # type: ignore[assignment]
        if not len(cond) == len(a) == len(b) == length:
            return None
        return [x if c else y for c, x, y in zip(cond, a, b, strict=True)]
    if op in ("Mul", "Add", "Sub", "Div") and len(inputs) == 2:
        a, b = _dims_of(inputs[0]), _dims_of(inputs[1])
        if a is None or b is None:
            return None
        if len(a) == 1 and len(b) > 1:
            a = a * len(b)
        if len(b) == 1 and len(a) > 1:
            b = b * len(a)
        if len(a) != len(b):
            return None
        out: list[Dim] = []
        for x, y in zip(a, b, strict=True):
            if op == "Mul":
                out.append(dim_product([x, y]))
            elif op == "Add":
                out.append(dim_add(x, y))
            elif op == "Sub":
                out.append(dim_sub(x, y))
            else:
                q = dim_divide(x, y)
                if q is None:
                    return None
                out.append(q)
        return out
    return None


# ----------------------------------------------------------------------------------------- rules
def _same(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[0].dtype, ins[0].shape)]


rule(
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Erf", "BitwiseNot", "Relu", "LeakyRelu",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "ThresholdedRelu", "Mish", "Shrink", "Gelu", "Softmax", "LogSoftmax", "Hardmax", "Identity", "Clip",
    "LRN", "LpNormalization", "MeanVarianceNormalization", "InstanceNormalization", "GroupNormalization",
    "Trilu", "CumSum", "CumProd", "ScatterND", "ScatterElements", "LayerNorm", "TensorScatter",
)(_same)


@rule("Attention")
def _attention(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    """Q's shape; with ``packed_qkv`` the packed input's last axis divided by three."""
    shape = ins[0].shape
    if not node.attr("packed_qkv", 0) or not shape:
        return [(ins[0].dtype, shape)]
    width = shape[-1]
    return [(ins[0].dtype, (*shape[:-1], width // 3) if isinstance(width, int) else None)]


@rule("Dropout")
def _dropout(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[0].dtype, ins[0].shape), ("bool", ins[0].shape)]


@rule("Not", "IsNaN", "IsInf")
def _bool_same(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("bool", ins[0].shape)]


def _broadcast(ins: list[Info]) -> Shape | None:
    shapes = [i.shape for i in ins]
    if any(s is None for s in shapes):
        return None
    return broadcast_shapes(*shapes)  # type: ignore[arg-type]


@rule("Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu",
      "Sum", "Mean", "Max", "Min")
def _elementwise(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    present = [i for name, i in zip(node.inputs, ins, strict=False) if name]
    return [(present[0].dtype, _broadcast(present))]


@rule("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor")
def _compare(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("bool", _broadcast(ins[:2]))]


@rule("Where")
def _where(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[1].dtype or ins[2].dtype, _broadcast(ins[:3]))]


def _cast_target(to: int | str) -> str:
    return from_onnx(int(to)) if isinstance(to, (int, np.integer)) else str(to)


@rule("Cast")
def _cast(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(_cast_target(node.attr("to")), ins[0].shape)]


@rule("BitCast")
def _bitcast(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(_cast_target(node.attr("to")), ins[0].shape)]


@rule("CastLike")
def _cast_like(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[1].dtype, ins[0].shape)]


def _matmul_shape(a: Shape | None, b: Shape | None) -> Shape | None:
    if a is None or b is None:
        return None
    a_vec, b_vec = len(a) == 1, len(b) == 1
    a2 = (1, *a) if a_vec else tuple(a)
    b2 = (*b, 1) if b_vec else tuple(b)
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = (*batch, a2[-2], b2[-1])
    if a_vec:
        out = out[:-2] + out[-1:]
    if b_vec:
        out = out[:-1]
    return out


@rule("MatMul")
def _matmul(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[0].dtype, _matmul_shape(ins[0].shape, ins[1].shape))]


@rule("MatMulInteger")
def _matmul_integer(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("int32", _matmul_shape(ins[0].shape, ins[1].shape))]


@rule("QLinearMatMul")
def _qlinear_matmul(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[7].dtype, _matmul_shape(ins[0].shape, ins[3].shape))]


@rule("FusedGemm")
def _fused_gemm(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    b = ins[1].shape
    if b is not None and node.attr("transB", 0):
        b = (*b[:-2], b[-1], b[-2])
    return [(ins[0].dtype, _matmul_shape(ins[0].shape, b))]


@rule("Gemm")
def _gemm(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    a, b = ins[0].shape, ins[1].shape
    if a is None or b is None:
        return [(ins[0].dtype, None)]
    m = a[1] if node.attr("transA", 0) else a[0]
    n = b[0] if node.attr("transB", 0) else b[1]
    return [(ins[0].dtype, (m, n))]


@rule("Einsum")
def _einsum(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    equation = str(node.attr("equation")).replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    letters: dict[str, Dim] = {}
    ellipsis: Shape = ()
    for term, info in zip(terms, ins, strict=False):
        if info.shape is None:
            return [(ins[0].dtype, None)]
        if "..." in term:
            before, after = term.split("...")
            n_ell = len(info.shape) - len(before) - len(after)
            ell = info.shape[len(before) : len(before) + n_ell]
            ellipsis = broadcast_shapes(ellipsis, ell)
            dims = list(info.shape[: len(before)]) + list(info.shape[len(before) + n_ell :])
            term = before + after
        else:
            dims = list(info.shape)
        for letter, d in zip(term, dims, strict=True):
            if letter not in letters or letters[letter] == 1:
                letters[letter] = d
    if not _:
        counts = {c: lhs.count(c) for c in set(lhs) if c.isalpha()}
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c, k in counts.items() if k == 1))
    out: list[Dim] = []
    for part in re.findall(r"\.\.\.|[A-Za-z]", rhs):
        if part == "...":
            out.extend(ellipsis)
        else:
            out.append(letters[part])
    return [(ins[0].dtype, tuple(out))]


def _window_out(node: Node, x: Shape, kernel: list[int], transpose: bool = False) -> list[Dim]:
    n = len(kernel)
    strides = list(node.attr("strides", None) or [1] * n)
    dilations = list(node.attr("dilations", None) or [1] * n)
    pads = list(node.attr("pads", None) or [0] * (2 * n))
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    ceil_mode = bool(node.attr("ceil_mode", 0))
    out: list[Dim] = []
    for i in range(n):
        size = x[2 + i]
        effective = (kernel[i] - 1) * dilations[i] + 1
        if transpose:
            output_shape = node.attr("output_shape", None)
            if output_shape is not None:
                out.append(int(list(output_shape)[-n:][i]))
                continue
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out.append(dim_product([size, strides[i]]))
                continue
            if not isinstance(size, int):
                out.append(-1)
                continue
            op_ = list(node.attr("output_padding", None) or [0] * n)[i]
            pad_total = 0 if auto_pad == "VALID" else pads[i] + pads[n + i]
            out.append(strides[i] * (size - 1) + op_ + effective - pad_total)
            continue
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(dim_floordiv(dim_add(size, strides[i] - 1), strides[i]))  # ceil(size / stride)
            continue
        total_pad = 0 if auto_pad == "VALID" else pads[i] + pads[n + i]
        if not isinstance(size, int):
            # A symbolic size gives a symbolic expression, the same for every equal input.
            span = dim_add(size, total_pad - effective)
            if ceil_mode:
                span = dim_add(span, strides[i] - 1)
            out.append(dim_add(dim_floordiv(span, strides[i]), 1))
            continue
        span = size + total_pad - effective
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            if (o - 1) * strides[i] >= size + pads[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(o)
    return out


def _kernel(node: Node, w: Info | None) -> list[int] | None:
    kernel = node.attr("kernel_shape", None)
    if kernel is not None:
        return [int(k) for k in kernel]
    if w is not None and w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]):
        return [int(d) for d in w.shape[2:]]
    return None


@rule("Conv", "FusedConv", "ConvInteger", "QLinearConv")
def _conv(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    w_index = 3 if node.op_type == "QLinearConv" else 1
    x, w = ins[0], ins[w_index]
    dtype = {"ConvInteger": "int32", "QLinearConv": ins[7].dtype if len(ins) > 7 else None}.get(node.op_type, x.dtype)
    kernel = _kernel(node, w)
    if x.shape is None or w.shape is None or kernel is None:
        return [(dtype, None)]
    return [(dtype, (x.shape[0], w.shape[0], *_window_out(node, x.shape, kernel)))]


@rule("ConvTranspose", "FusedConvTranspose")
def _conv_transpose(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, w = ins[0], ins[1]
    kernel = _kernel(node, w)
    if x.shape is None or w.shape is None or kernel is None:
        return [(x.dtype, None)]
    channels = dim_product([w.shape[1], int(node.attr("group", 1))])
    return [(x.dtype, (x.shape[0], channels, *_window_out(node, x.shape, kernel, transpose=True)))]


@rule("MaxPool", "AveragePool", "LpPool")
def _pool(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None), ("int64", None)]
    shape = (*x.shape[:2], *_window_out(node, x.shape, [int(k) for k in node.attr("kernel_shape")]))
    return [(x.dtype, shape), ("int64", shape)]


@rule("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    return [(x.dtype, None if x.shape is None else (*x.shape[:2], *([1] * (len(x.shape) - 2))))]


@rule("BatchNormalization")
def _batch_norm(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[0].dtype, ins[0].shape), (ins[3].dtype, ins[3].shape), (ins[4].dtype, ins[4].shape)]


@rule("LayerNormalization")
def _layer_norm(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None), ("float32", None), ("float32", None)]
    axis = int(node.attr("axis", -1)) % max(len(x.shape), 1)
    stats = (*x.shape[:axis], *([1] * (len(x.shape) - axis)))
    return [(x.dtype, x.shape), ("float32", stats), ("float32", stats)]


def _const_ints(info: Info) -> list[int] | None:
    return None if info.value is None else [int(v) for v in info.value.reshape(-1)]


def _static_length(info: Info) -> int | None:
    """The length of a 1-D tensor whose values are unknown but whose shape is static."""
    if info.shape is not None and len(info.shape) == 1 and isinstance(info.shape[0], int):
        return info.shape[0]
    return None


def _axes(node: Node, ins: list[Info], index: int = 1, key: str = "axes") -> list[int] | None:
    if len(node.inputs) > index and node.inputs[index]:
        return _const_ints(ins[index])
    value = node.attr(key, None)
    return None if value is None else [int(v) for v in value]


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSum",
      "ReduceLogSumExp", "ReduceSumSquare")
def _reduce(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    has_axes = (len(node.inputs) > 1 and bool(node.inputs[1])) or "axes" in node.attrs
    axes = _axes(node, ins)
    if x.shape is None:
        return [(x.dtype, None)]
    rank = len(x.shape)
    if has_axes and axes is None:  # axes computed at run time: only the rank may be known
        if node.attr("keepdims", 1):
            return [(x.dtype, tuple(-1 for _ in x.shape))]
        count = _static_length(ins[1])
        return [(x.dtype, None if count is None else tuple(-1 for _ in range(rank - count)))]
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [(x.dtype, x.shape)]
        axes = list(range(rank))
    picked = {a % rank for a in axes}
    keep = node.attr("keepdims", 1)
    shape = tuple(1 if i in picked else d for i, d in enumerate(x.shape) if keep or i not in picked)
    return [(x.dtype, shape)]


@rule("ArgMax", "ArgMin")
def _arg(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [("int64", None)]
    axis = int(node.attr("axis", 0)) % len(x.shape)
    keep = node.attr("keepdims", 1)
    return [("int64", tuple(1 if i == axis else d for i, d in enumerate(x.shape) if keep or i != axis))]


@rule("Shape")
def _shape(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    dims = _propagate_dims(node, ins)
    return [("int64", None if dims is None else (len(dims),))]


@rule("Size")
def _size(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("int64", ())]


def _target_dims(info: Info) -> list[Dim] | None:
    dims = _dims_of(info)
    if dims is not None:
        return dims
    if info.shape is not None and len(info.shape) == 1 and isinstance(info.shape[0], int):
        return [-1] * info.shape[0]  # rank known, sizes unknown
    return None


@rule("Reshape")
def _reshape(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    target = _target_dims(ins[1])
    if target is None:
        return [(x.dtype, None)]
    allowzero = node.attr("allowzero", 0)
    out: list[Dim] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero and x.shape is not None and i < len(x.shape):
            out.append(x.shape[i])
        else:
            out.append(d)
    infer_at = [i for i, d in enumerate(out) if d == -1]
    if len(infer_at) == 1 and x.shape is not None and ins[1].value is not None or (
        len(infer_at) == 1 and x.shape is not None and ins[1].dims is not None
    ):
        rest = dim_product([d for i, d in enumerate(out) if i != infer_at[0]])
        inferred = dim_divide(dim_product(list(x.shape)), rest)
        out[infer_at[0]] = inferred if inferred is not None else -1
    return [(x.dtype, tuple(out))]


@rule("Flatten")
def _flatten(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None)]
    axis = int(node.attr("axis", 1))
    if axis < 0:
        axis += len(x.shape)
    return [(x.dtype, (dim_product(list(x.shape[:axis])), dim_product(list(x.shape[axis:]))))]


@rule("Squeeze")
def _squeeze(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    axes = _axes(node, ins)
    if x.shape is None:
        return [(x.dtype, None)]
    has_axes = (len(node.inputs) > 1 and bool(node.inputs[1])) or "axes" in node.attrs
    if has_axes and axes is None:
        count = _static_length(ins[1])
        return [(x.dtype, None if count is None else tuple(-1 for _ in range(len(x.shape) - count)))]
    rank = len(x.shape)
    if axes is None:
        if any(not isinstance(d, int) for d in x.shape):
            return [(x.dtype, None)]
        return [(x.dtype, tuple(d for d in x.shape if d != 1))]
    drop = {a % rank for a in axes}
    return [(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in drop))]


@rule("Unsqueeze")
def _unsqueeze(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    axes = _axes(node, ins)
    if x.shape is None:
        return [(x.dtype, None)]
    if axes is None:
        count = _static_length(ins[1]) if len(ins) > 1 else None
        return [(x.dtype, None if count is None else tuple(-1 for _ in range(len(x.shape) + count)))]
    rank = len(x.shape) + len(axes)
    added = {a % rank for a in axes}
    rest = iter(x.shape)
    return [(x.dtype, tuple(1 if i in added else next(rest) for i in range(rank)))]


@rule("Transpose")
def _transpose(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None)]
    perm = node.attr("perm", None) or list(reversed(range(len(x.shape))))
    return [(x.dtype, tuple(x.shape[p] for p in perm))]


@rule("Concat")
def _concat(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    present = [i for name, i in zip(node.inputs, ins, strict=False) if name]
    if any(i.shape is None for i in present):
        return [(present[0].dtype, None)]
    rank = len(present[0].shape)  # type: ignore[arg-type]
    axis = int(node.attr("axis")) % rank
    total: Dim = 0
    for i in present:
        total = dim_add(total, i.shape[axis])  # type: ignore[index]
    out = list(present[0].shape)  # type: ignore[arg-type]
    for i in present[1:]:
        for k, d in enumerate(i.shape or ()):
            if k != axis and not isinstance(out[k], int) and isinstance(d, int):
                out[k] = d
    out[axis] = total
    return [(present[0].dtype, tuple(out))]


@rule("Split")
def _split(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    count = len(node.outputs)
    if x.shape is None:
        return [(x.dtype, None)] * count
    axis = int(node.attr("axis", 0)) % len(x.shape)
    sizes = _axes(node, ins, 1, "split")
    length = x.shape[axis]
    if sizes is None and len(node.inputs) > 1 and node.inputs[1]:  # sizes computed at run time
        return [(x.dtype, tuple(-1 if k == axis else d for k, d in enumerate(x.shape)))] * count
    if not sizes:
        parts = int(node.attr("num_outputs", count))
        if isinstance(length, int):
            chunk = -(-length // parts)
            sizes = [min(chunk, max(0, length - chunk * i)) for i in range(parts)]
        else:
            d = dim_divide(length, parts)
            return [(x.dtype, tuple(d if k == axis and d is not None else (-1 if k == axis else s)
                                   for k, s in enumerate(x.shape)))] * count
    return [(x.dtype, tuple(s if k == axis else dd for k, dd in enumerate(x.shape))) for s in sizes]


@rule("Slice")
def _slice(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    starts, ends = _dims_of(ins[1]), _dims_of(ins[2])
    if x.shape is None:
        return [(x.dtype, None)]
    rank = len(x.shape)
    has_axes = len(node.inputs) > 3 and bool(node.inputs[3])
    has_steps = len(node.inputs) > 4 and bool(node.inputs[4])
    axes = _const_ints(ins[3]) if has_axes else None
    steps = _const_ints(ins[4]) if has_steps else None
    if starts is None or ends is None or (has_axes and axes is None) or (has_steps and steps is None):
        if has_axes and axes is not None:
            touched = {a % rank for a in axes}
            return [(x.dtype, tuple(-1 if i in touched else d for i, d in enumerate(x.shape)))]
        return [(x.dtype, tuple(-1 for _ in x.shape))]
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    out = list(x.shape)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= rank
        out[axis] = _sliced_length(out[axis], start, end, step)
    return [(x.dtype, tuple(out))]


def _sliced_length(dim: Dim, start: Dim, end: Dim, step: int) -> Dim:
    """Length of dim[start:end:step]; a symbolic end is assumed within the axis (as exporters'
    position-id slices up to the sequence length are)."""
    from farm.compiler.reference.shape_ops import slice_bounds

    if isinstance(dim, int) and isinstance(start, int) and isinstance(end, int):
        return len(range(dim)[slice_bounds(dim, start, end, step)])
    if step != 1:
        return -1
    if start == 0 and (end == dim or (isinstance(end, int) and end >= 2**31 - 1)):
        return dim
    if start == 0 and isinstance(end, str):
        return end
    if isinstance(start, int) and start >= 0 and isinstance(end, int) and end >= 2**31 - 1:
        return dim_sub(dim, start)
    return -1


@rule("Expand")
def _expand(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    target = _target_dims(ins[1])
    if x.shape is None or target is None:
        return [(x.dtype, None)]
    padded_target = tuple(target)
    rank = max(len(x.shape), len(padded_target))
    xs = (1,) * (rank - len(x.shape)) + tuple(x.shape)
    ts = (1,) * (rank - len(padded_target)) + padded_target
    out = [xd if td == -1 and xd != 1 else (td if xd == 1 else (xd if td == 1 else broadcast_shapes((xd,), (td,))[0]))
           for xd, td in zip(xs, ts, strict=True)]
    return [(x.dtype, tuple(out))]


@rule("Tile")
def _tile(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    repeats = _dims_of(ins[1])
    if x.shape is None:
        return [(x.dtype, None)]
    if repeats is None:
        return [(x.dtype, tuple(-1 for _ in x.shape))]
    return [(x.dtype, tuple(dim_product([d, r]) for d, r in zip(x.shape, repeats, strict=True)))]


@rule("Pad")
def _pad(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    pads = _const_ints(ins[1]) if len(ins) > 1 else None
    if x.shape is None or pads is None:
        return [(x.dtype, None if x.shape is None else tuple(-1 for _ in x.shape))]
    rank = len(x.shape)
    axes = _const_ints(ins[3]) if len(node.inputs) > 3 and node.inputs[3] else list(range(rank))
    if axes is None:
        return [(x.dtype, tuple(-1 for _ in x.shape))]
    out = list(x.shape)
    n = len(axes)
    for i, axis in enumerate(axes):
        out[axis % rank] = dim_add(out[axis % rank], pads[i] + pads[n + i])
    return [(x.dtype, tuple(out))]


@rule("ConstantOfShape")
def _constant_of_shape(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    value = node.attr("value", None)
    dtype = "float32" if value is None else dtype_name(np.asarray(value).dtype)
    target = _target_dims(ins[0])
    return [(dtype, None if target is None else tuple(target))]


@rule("Range")
def _range(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    if all(i.value is not None for i in ins[:3]):
        first, last, step = (float(np.asarray(i.value).reshape(-1)[0]) for i in ins[:3])
        count = int(np.ceil((last - first) / step)) if step else 0
        return [(ins[0].dtype, (max(count, 0),))]
    start, limit, delta = (_dims_of(i) for i in ins[:3])
    length: Dim = -1
    if start is not None and limit is not None and delta is not None and delta == [1] and start == [0]:
        length = limit[0]
    return [(ins[0].dtype, (length,))]


@rule("EyeLike")
def _eye_like(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    dtype = node.attr("dtype", None)
    return [(_cast_target(dtype) if dtype is not None else ins[0].dtype, ins[0].shape)]


@rule("Gather")
def _gather(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, idx = ins[0], ins[1]
    if x.shape is None or idx.shape is None:
        return [(x.dtype, None)]
    axis = int(node.attr("axis", 0)) % len(x.shape)
    return [(x.dtype, (*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))]


@rule("GatherElements")
def _gather_elements(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[0].dtype, ins[1].shape)]


@rule("GatherND")
def _gather_nd(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, idx = ins[0], ins[1]
    if x.shape is None or idx.shape is None or not isinstance(idx.shape[-1], int):
        return [(x.dtype, None)]
    batch = int(node.attr("batch_dims", 0))
    return [(x.dtype, (*idx.shape[:-1], *x.shape[batch + idx.shape[-1] :]))]


@rule("OneHot")
def _one_hot(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    idx, depth = ins[0], _const_ints(ins[1])
    if idx.shape is None:
        return [(ins[2].dtype, None)]
    rank = len(idx.shape) + 1
    axis = int(node.attr("axis", -1)) % rank
    out = list(idx.shape)
    out.insert(axis, depth[0] if depth else -1)
    return [(ins[2].dtype, tuple(out))]


@rule("NonZero")
def _non_zero(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    rank = len(ins[0].shape) if ins[0].shape is not None else -1
    return [("int64", (max(rank, 1) if rank >= 0 else -1, -1))]


@rule("Compress")
def _compress(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    axis = node.attr("axis", None)
    if axis is None or x.shape is None:
        return [(x.dtype, (-1,))]
    axis = int(axis) % len(x.shape)
    return [(x.dtype, tuple(-1 if i == axis else d for i, d in enumerate(x.shape)))]


@rule("TopK")
def _top_k(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, k = ins[0], _const_ints(ins[1])
    if x.shape is None:
        return [(x.dtype, None), ("int64", None)]
    axis = int(node.attr("axis", -1)) % len(x.shape)
    shape = tuple((k[0] if k else -1) if i == axis else d for i, d in enumerate(x.shape))
    return [(x.dtype, shape), ("int64", shape)]


@rule("NonMaxSuppression")
def _nms(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("int64", (-1, 3))]


@rule("Resize")
def _resize(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    from farm.compiler.reference.resize import resize_output_shape

    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None)]
    scales = ins[2].value if len(node.inputs) > 2 and node.inputs[2] else None
    sizes = ins[3].value if len(node.inputs) > 3 and node.inputs[3] else None
    if scales is None and sizes is None:
        return [(x.dtype, tuple(-1 for _ in x.shape))]
    axes = node.attr("axes", None)
    rank = len(x.shape)
    axis_list = [a % rank for a in axes] if axes else list(range(rank))
    if all(isinstance(x.shape[a], int) for a in axis_list):
        concrete = tuple(d if isinstance(d, int) else 1 for d in x.shape)
        out, _ = resize_output_shape(concrete, scales, sizes, axes, node.attr("keep_aspect_ratio_policy", "stretch"))
        return [(x.dtype, tuple(out[i] if i in axis_list else x.shape[i] for i in range(rank)))]
    out_dims: list[Dim] = list(x.shape)
    for i, a in enumerate(axis_list):
        if sizes is not None:
            out_dims[a] = int(sizes.reshape(-1)[i])
        elif scales is not None:
            s = float(scales.reshape(-1)[i])
            out_dims[a] = x.shape[a] if s == 1.0 else (dim_product([x.shape[a], int(s)]) if s == int(s) else -1)
    return [(x.dtype, tuple(out_dims))]


@rule("DepthToSpace", "SpaceToDepth")
def _depth_space(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None)]
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    if node.op_type == "DepthToSpace":
        return [(x.dtype, (n, dim_divide(c, b * b) or -1, dim_product([h, b]), dim_product([w, b])))]
    return [(x.dtype, (n, dim_product([c, b * b]), dim_divide(h, b) or -1, dim_divide(w, b) or -1))]


@rule("QuantizeLinear")
def _quantize(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    zp = ins[2].dtype if len(node.inputs) > 2 and node.inputs[2] else "uint8"
    if node.attr("output_dtype", 0):
        zp = _cast_target(node.attr("output_dtype"))
    return [(zp, ins[0].shape)]


@rule("DequantizeLinear")
def _dequantize(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[1].dtype, ins[0].shape)]


@rule("DynamicQuantizeLinear")
def _dynamic_quantize(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("uint8", ins[0].shape), ("float32", ()), ("uint8", ())]


@rule("LSTM", "GRU", "RNN")
def _recurrent(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, w, r = ins[0], ins[1], ins[2]
    if x.shape is None or w.shape is None or r.shape is None:
        return [(x.dtype, None)] * 3
    directions = w.shape[0]
    hidden = node.attr("hidden_size", r.shape[-1])
    if node.attr("layout", 0):
        batch, seq = x.shape[0], x.shape[1]
        return [(x.dtype, (batch, seq, directions, hidden))] + [(x.dtype, (batch, directions, hidden))] * 2
    seq, batch = x.shape[0], x.shape[1]
    return [(x.dtype, (seq, directions, batch, hidden))] + [(x.dtype, (directions, batch, hidden))] * 2


@rule("Det")
def _det(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    return [(x.dtype, None if x.shape is None else tuple(x.shape[:-2]))]


@rule("ReverseSequence")
def _reverse_sequence(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [(ins[0].dtype, ins[0].shape)]


@rule("Unique")
def _unique(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    axis = node.attr("axis", None)
    if axis is None or x.shape is None:
        values: Shape | None = (-1,)
    else:
        axis = int(axis) % len(x.shape)
        values = tuple(-1 if i == axis else d for i, d in enumerate(x.shape))
    inverse = (dim_product(list(x.shape)),) if axis is None and x.shape is not None else (-1,)
    return [(x.dtype, values), ("int64", (-1,)), ("int64", inverse), ("int64", (-1,))]


@rule("CenterCropPad")
def _center_crop_pad(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, sizes = ins[0], _dims_of(ins[1])
    if x.shape is None or sizes is None:
        return [(x.dtype, None if x.shape is None else tuple(-1 for _ in x.shape))]
    out = list(x.shape)
    for axis, size in zip(node.attr("axes", None) or range(len(out)), sizes, strict=True):
        out[int(axis) % len(out)] = size
    return [(x.dtype, tuple(out))]


@rule("GridSample")
def _grid_sample(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, grid = ins[0], ins[1]
    if x.shape is None or grid.shape is None:
        return [(x.dtype, None)]
    return [(x.dtype, (x.shape[0], x.shape[1], *grid.shape[1:-1]))]


@rule("AffineGrid")
def _affine_grid(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    size = _target_dims(ins[1])
    if size is None:
        return [(ins[0].dtype, None)]
    return [(ins[0].dtype, (size[0], *size[2:], len(size) - 2))]


@rule("RoiAlign")
def _roi_align(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, rois = ins[0], ins[1]
    if x.shape is None or rois.shape is None:
        return [(x.dtype, None)]
    return [(x.dtype, (rois.shape[0], x.shape[1], int(node.attr("output_height", 1)),
                       int(node.attr("output_width", 1))))]


@rule("DeformConv")
def _deform_conv(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, w, offset = ins[0], ins[1], ins[2]
    if x.shape is None or w.shape is None or offset.shape is None:
        return [(x.dtype, None)]
    return [(x.dtype, (x.shape[0], w.shape[0], *offset.shape[2:]))]


@rule("StringConcat")
def _string_concat(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("string", _broadcast(ins[:2]))]


@rule("RegexFullMatch")
def _regex(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    return [("bool", ins[0].shape)]


@rule("StringSplit")
def _string_split(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    return [("string", None if x.shape is None else (*x.shape, -1)), ("int64", x.shape)]


@rule("StringNormalizer")
def _string_normalizer(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [("string", None)]
    return [("string", (1, -1) if len(x.shape) == 2 else (-1,))]


@rule("Col2Im")
def _col2im(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, image, block = ins[0], _target_dims(ins[1]), _dims_of(ins[2])
    if x.shape is None or image is None:
        return [(x.dtype, None)]
    channels = dim_divide(x.shape[1], dim_product(block)) if block is not None else None
    return [(x.dtype, (x.shape[0], channels if channels is not None else -1, *image))]


@rule("MaxUnpool")
def _max_unpool(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if len(node.inputs) > 2 and node.inputs[2]:
        target = _target_dims(ins[2])
        return [(x.dtype, None if target is None else tuple(target))]
    if x.shape is None:
        return [(x.dtype, None)]
    kernel = [int(k) for k in node.attr("kernel_shape")]
    n = len(kernel)
    strides = list(node.attr("strides", None) or [1] * n)
    pads = list(node.attr("pads", None) or [0] * (2 * n))
    spatial: list[Dim] = []
    for i in range(n):
        size = x.shape[2 + i]
        spatial.append((size - 1) * strides[i] + kernel[i] - pads[i] - pads[n + i] if isinstance(size, int) else -1)
    return [(x.dtype, (x.shape[0], x.shape[1], *spatial))]


@rule("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    size = _dims_of(ins[0])
    return [(_cast_target(node.attr("output_datatype", 1)), (size[0] if size else -1,))]


@rule("MelWeightMatrix")
def _mel(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    bins, length = _dims_of(ins[0]), _dims_of(ins[1])
    rows = length[0] // 2 + 1 if length and isinstance(length[0], int) else -1
    return [(_cast_target(node.attr("output_datatype", 1)), (rows, bins[0] if bins else -1))]


@rule("DFT")
def _dft(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    if x.shape is None:
        return [(x.dtype, None)]
    rank = len(x.shape)
    axis_info = ins[2] if len(ins) > 2 and node.inputs[2] else None
    axis_values = _dims_of(axis_info) if axis_info is not None else [-2]
    if not axis_values or not isinstance(axis_values[0], int):
        return [(x.dtype, tuple(-1 for _ in x.shape))]
    axis = axis_values[0] % rank
    length = _dims_of(ins[1]) if len(ins) > 1 and node.inputs[1] else None
    inverse, onesided = node.attr("inverse", 0), node.attr("onesided", 0)
    size = x.shape[axis]
    if length:
        n: Dim = length[0]
    elif inverse and onesided:
        n = dim_product([dim_sub(size, 1), 2])
    else:
        n = size
    out = list(x.shape)
    if inverse and onesided:
        out[axis], out[-1] = n, 1
    else:
        out[axis] = (n // 2 + 1 if isinstance(n, int) else -1) if onesided else n
        out[-1] = 2
    return [(x.dtype, tuple(out))]


@rule("STFT")
def _stft(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x = ins[0]
    step = _dims_of(ins[1])
    window = ins[2] if len(ins) > 2 and node.inputs[2] else None
    length = _dims_of(ins[3]) if len(ins) > 3 and node.inputs[3] else None
    frame = length[0] if length else (window.shape[0] if window is not None and window.shape else None)
    if x.shape is None:
        return [(x.dtype, None)]
    signal_length, step_size = x.shape[1], step[0] if step else None
    if not isinstance(signal_length, int) or not isinstance(frame, int) or not isinstance(step_size, int):
        return [(x.dtype, (x.shape[0], -1, -1, 2))]
    frames = 1 + (signal_length - frame) // step_size
    bins = frame // 2 + 1 if node.attr("onesided", 1) else frame
    return [(x.dtype, (x.shape[0], frames, bins, 2))]


@rule("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")
def _loss(node: Node, ins: list[Info]) -> list[tuple[str | None, Shape | None]]:
    x, target = ins[0], ins[1]
    loss = target.shape if node.attr("reduction", "mean") == "none" else ()
    return [(x.dtype, loss), (x.dtype, x.shape)]


# ----------------------------------------------------------------------------------- control flow
def _body_outputs(body: Graph, feeds: list[Info], env: dict[str, Info]) -> list[Info]:
    for name, info in zip(body.inputs, feeds, strict=False):
        value = body.values[name]
        if info.dtype is not None:
            value.dtype = info.dtype
        if info.shape is not None or value.shape is None:
            value.shape = info.shape if info.shape is not None else value.shape
    body_env = _infer_graph(body, env)
    return [body_env.get(o, Info(None, None)) for o in body.outputs]


def _merge(a: Info, b: Info) -> Info:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return Info(a.dtype or b.dtype, None)
    return Info(a.dtype or b.dtype, tuple(x if x == y else -1 for x, y in zip(a.shape, b.shape, strict=True)))


def _control_flow(node: Node, inputs: list[Info], env: dict[str, Info]) -> list[Info]:
    if node.op_type == "If":
        then_out = _body_outputs(node.attr("then_branch"), [], env)
        else_out = _body_outputs(node.attr("else_branch"), [], env)
        cond = inputs[0].value
        if cond is not None:
            chosen = then_out if bool(cond.reshape(-1)[0]) else else_out
            return [Info(i.dtype, i.shape) for i in chosen]
        return [_merge(a, b) for a, b in zip(then_out, else_out, strict=False)]
    if node.op_type == "Loop":
        body: Graph = node.attr("body")
        carried = inputs[2:]
        feeds = [Info("int64", ()), Info("bool", ()), *[Info(c.dtype, c.shape) for c in carried]]
        outs = _body_outputs(body, feeds, env)
        n = len(carried)
        results = []
        for c, o in zip(carried, outs[1 : 1 + n], strict=False):
            results.append(Info(c.dtype or o.dtype, c.shape if c.shape == o.shape else _merge(c, o).shape))
        trips = _const_ints(inputs[0]) if inputs and node.inputs[0] else None
        for o in outs[1 + n :]:
            trip_count: Dim = trips[0] if trips and (len(node.inputs) < 2 or not node.inputs[1]) else -1
            results.append(Info(o.dtype, None if o.shape is None else (trip_count, *o.shape)))
        return results
    body = node.attr("body")
    n_scan = int(node.attr("num_scan_inputs"))
    n_state = len(inputs) - n_scan
    in_axes = node.attr("scan_input_axes", None) or [0] * n_scan
    feeds = [Info(i.dtype, i.shape) for i in inputs[:n_state]]
    length: Dim = -1
    for info, axis in zip(inputs[n_state:], in_axes, strict=False):
        if info.shape is None:
            feeds.append(Info(info.dtype, None))
            continue
        axis %= len(info.shape)
        length = info.shape[axis]
        feeds.append(Info(info.dtype, tuple(d for i, d in enumerate(info.shape) if i != axis)))
    outs = _body_outputs(body, feeds, env)
    out_axes = node.attr("scan_output_axes", None) or [0] * (len(outs) - n_state)
    results = [Info(o.dtype, o.shape) for o in outs[:n_state]]
    for o, axis in zip(outs[n_state:], out_axes, strict=False):
        if o.shape is None:
            results.append(Info(o.dtype, None))
            continue
        shape = list(o.shape)
        shape.insert(axis % (len(shape) + 1), length)
        results.append(Info(o.dtype, tuple(shape)))
    return results


__all__ = ["Info", "factors", "infer_shapes", "make_dim"]
