"""Generic numpy tactics: one correct tactic for every op, so any graph builds and runs.

Two kinds live here:

* ``cpu.numpy.<Op>`` for the light ops (shape ops, gathers, elementwise, reductions, norms) and
  for everything without a dedicated tactic: it calls the reference implementation of the op
  (``farm.compiler.reference.run_node``) and copies the result into the output buffer. It is
  correct by construction, accepts strided outputs (concat elision) and works in place.
* numpy implementations of the heavy ops that are fast enough to be a baseline:
  ``cpu.numpy.conv_im2col`` (Conv / FusedConv), ``cpu.numpy.gemm_blas`` (MatMul / Gemm /
  FusedGemm) and ``cpu.numpy.attention``; the kernels engineer's numba/BLAS tactics compete with
  them in the autotuner.

These tactics have the lowest priorities, so a heuristic (untimed) build prefers a faster
tactic whenever one supports the node.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._operands import RunsBound
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic

# Ops whose generic tactic is the reference implementation. When the reference package
# publishes its op table we use that; this list is the fallback and the documentation.
REFERENCE_OPS: tuple[str, ...] = (
    # elementwise
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Erf", "Not", "IsNaN", "IsInf", "Clip", "Mish", "ThresholdedRelu",
    "PRelu", "Gelu", "Cast", "CastLike", "Identity", "Dropout",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where",
    "BitShift",
    # reductions
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp", "ReduceLogSum", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum",
    # shape and data movement
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand", "Tile",
    "Pad", "Shape", "Size", "ConstantOfShape", "Range", "Constant", "DepthToSpace",
    "SpaceToDepth", "Resize", "TopK", "NonZero", "OneHot", "Einsum", "Trilu",
    # neural-network ops without a dedicated generic tactic
    "ConvTranspose", "FusedConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "LRN", "Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "LayerNorm",
    "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "If", "Loop", "Scan",
)  # fmt: skip

# Ops that have their own numpy tactic below; the reference is not registered for them.
DEDICATED_OPS = frozenset({"Conv", "FusedConv", "MatMul", "Gemm", "FusedGemm", "Attention"})

_ELEMENTWISE_UNARY = frozenset(
    {
        "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin",
        "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Tanh",
        "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
        "Softplus", "Softsign", "Erf", "Mish", "ThresholdedRelu", "Gelu", "Clip",
    }
)  # fmt: skip
_ELEMENTWISE_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})


def _reference_op_types() -> tuple[str, ...]:
    """The op types the reference implements (its own table, plus the documented fallback list)."""
    try:
        from farm.compiler.reference import available_ops

        return tuple(sorted(set(available_ops()) | set(REFERENCE_OPS)))
    except ImportError:  # the reference package is incomplete (only while it is being written)
        return REFERENCE_OPS


def run_reference_node(
    node: Node, inputs: Sequence[np.ndarray | None], graph: Graph | None
) -> list[np.ndarray]:
    """Run one node with the reference interpreter and return its outputs as a list.

    Inputs past ``node.inputs`` are the enclosing-scope values its subgraphs read, in the order
    of ``ir.run_inputs`` (If/Loop/Scan); they become the reference's scope."""
    from farm.compiler import reference

    context = None
    if len(inputs) > len(node.inputs):
        from farm.compiler.ir import scope_reads
        from farm.compiler.reference.registry import Context

        context = Context(graph, dict(zip(scope_reads(node), inputs[len(node.inputs) :], strict=True)))
        inputs = inputs[: len(node.inputs)]
    result = reference.run_node(node, list(inputs), graph, context)
    if isinstance(result, dict):
        return [result[o] for o in node.outputs]
    return list(result)


class ReferenceOpTactic(Tactic):
    """Runs the op with the reference implementation and copies the result into the outputs."""

    priority = -100
    accepts_strided_output = True

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        # The reference may need the graph (e.g. value dtypes for Cast-like ops or subgraphs);
        # keep a reference to it for the run without serializing anything.
        prepared = Prepared()
        prepared.scratch["graph"] = graph
        return prepared

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """Compute with the reference, then copy each result into its preallocated buffer."""
        results = run_reference_node(node, inputs, prepared.scratch.get("graph"))
        for out, res in zip(outputs, results, strict=False):
            if out is None:
                continue
            res = np.asarray(res)
            if res.shape != out.shape:
                raise ValueError(
                    f"{node.op_type} node {node.name!r}: reference produced shape {res.shape}, "
                    f"buffer has {out.shape}"
                )
            np.copyto(out, res, casting="unsafe")


def _make_reference_tactic(op_type: str) -> type[Tactic]:
    inplace: tuple[tuple[int, int], ...] = ()
    if op_type in _ELEMENTWISE_UNARY:
        inplace = ((0, 0),)
    elif op_type in _ELEMENTWISE_BINARY:
        inplace = ((0, 0), (1, 0))
    return type(
        f"Reference{op_type}Tactic",
        (ReferenceOpTactic,),
        {
            "name": f"cpu.numpy.{op_type}",
            "op_types": (op_type,),
            "inplace": inplace,
            "__doc__": f"{op_type} through the reference implementation.",
        },
    )


for _op in _reference_op_types():
    if _op not in DEDICATED_OPS:
        register_tactic(_make_reference_tactic(_op))


# --------------------------------------------------------------------------- direct numpy
# Light ops written straight into the output buffer with numpy (no reference call, no temporary
# where numpy allows ``out=``): a few microseconds per call instead of ~15. Float dtypes only where
# ONNX and numpy differ on integers (division, power).
_UNARY_UFUNCS: dict[str, Any] = {
    "Relu": None, "Neg": np.negative, "Abs": np.absolute, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal, "Tanh": np.tanh, "Sin": np.sin, "Cos": np.cos, "Floor": np.floor,
    "Ceil": np.ceil, "Sigmoid": None, "Not": np.logical_not, "Erf": None,
}  # fmt: skip
_BINARY_UFUNCS: dict[str, Any] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Max": np.maximum, "Min": np.minimum, "Equal": np.equal, "Less": np.less, "Greater": np.greater,
    "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "And": np.logical_and,
    "Or": np.logical_or, "Xor": np.logical_xor,
}  # fmt: skip
_FLOAT_ONLY = frozenset(
    {"Div", "Pow", "Reciprocal", "Sqrt", "Log", "Exp", "Tanh", "Sin", "Cos", "Sigmoid", "Erf"}
)


def _float_inputs(node: Node, graph: Graph) -> bool:
    return all(
        graph.values[i].dtype in ("float32", "float64", "float16")
        for i in node.inputs
        if i and i in graph.values
    )


@register_tactic
class NumpyUnaryTactic(RunsBound, Tactic):
    """Elementwise unary ops as one numpy ufunc call into the output (works in place)."""

    name = "cpu.numpy.unary"
    op_types = tuple(_UNARY_UFUNCS)
    priority = -50
    accepts_strided_output = True
    inplace = ((0, 0),)

    def supports(self, node: Node, graph: Graph) -> bool:
        """Float inputs (Not: bool); one input and one output."""
        if len(node.outputs) != 1:
            return False
        if node.op_type == "Not":
            return graph.values[node.input(0)].dtype == "bool"
        return _float_inputs(node, graph)

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None]:
        """The ufunc call(s) on these arrays, the op's dispatch done once."""
        x, out = inputs[0], outputs[0]
        assert x is not None
        op = node.op_type
        if op == "Relu":
            return functools.partial(np.maximum, x, x.dtype.type(0), out=out)
        if op == "Sigmoid":

            def sigmoid() -> None:
                with np.errstate(over="ignore"):  # exp(-x) = inf below x ~ -88: the limit, 0, is right
                    np.negative(x, out=out)
                    np.exp(out, out=out)
                np.add(out, 1, out=out)
                np.reciprocal(out, out=out)

            return sigmoid
        if op == "Erf":
            return lambda: np.copyto(out, erf_float32(x), casting="unsafe")
        return functools.partial(_UNARY_UFUNCS[op], x, out=out)


@register_tactic
class NumpyBinaryTactic(RunsBound, Tactic):
    """Elementwise binary ops (numpy broadcasting) as one ufunc call into the output."""

    name = "cpu.numpy.binary"
    op_types = tuple(_BINARY_UFUNCS)
    priority = -50
    accepts_strided_output = True
    inplace = ((0, 0), (1, 0))

    def supports(self, node: Node, graph: Graph) -> bool:
        """Two inputs (Max/Min: variadic in ONNX, two here); Div/Pow on floats only."""
        if len(node.inputs) != 2 or not all(node.inputs):
            return False
        return node.op_type not in _FLOAT_ONLY or _float_inputs(node, graph)

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None]:
        """The ufunc call on these arrays."""
        return functools.partial(_BINARY_UFUNCS[node.op_type], inputs[0], inputs[1], out=outputs[0])


@register_tactic
class NumpyWhereTactic(RunsBound, Tactic):
    """Where: copy Y, then X where the condition holds (broadcasting, no temporary)."""

    name = "cpu.numpy.where"
    op_types = ("Where",)
    priority = -50
    accepts_strided_output = True

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None]:
        """The two copies on these arrays, the condition broadcast once."""
        cond, x, y = inputs[0], inputs[1], inputs[2]
        assert cond is not None and x is not None and y is not None
        out = outputs[0]
        mask = np.broadcast_to(cond, out.shape)

        def where() -> None:
            np.copyto(out, y)
            np.copyto(out, x, where=mask)

        return where


@register_tactic
class NumpyDataMovementTactic(RunsBound, Tactic):
    """Transpose / Expand / Cast / Concat / Split / Gather / Identity-like copies, straight into
    the output buffers."""

    name = "cpu.numpy.copy"
    op_types = ("Transpose", "Expand", "Cast", "Concat", "Split", "Gather", "Identity", "Reshape", "Flatten",
                "Squeeze", "Unsqueeze")  # fmt: skip
    priority = -50
    accepts_strided_output = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """Cast between numeric types only (string casts go to the reference)."""
        if node.op_type == "Cast":
            src = graph.values[node.input(0)].dtype
            dst = graph.values[node.outputs[0]].dtype
            return src not in (None, "string", "bfloat16") and dst not in (None, "string", "bfloat16")
        return True

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None]:
        """The copies on these arrays, their views made once (a reshape that would copy, of a
        strided input, is redone on every call)."""
        op = node.op_type
        x = inputs[0]
        assert x is not None
        if op == "Transpose":
            perm = node.attr("perm") or list(range(x.ndim))[::-1]
            return functools.partial(np.copyto, outputs[0], x.transpose(perm))
        if op in ("Expand", "Cast"):
            return functools.partial(np.copyto, outputs[0], x, casting="unsafe")
        if op == "Concat":
            parts = [part for part in inputs if part is not None]
            axis = int(node.attr("axis", 0)) % outputs[0].ndim
            pieces = _pieces(outputs[0], axis, [part.shape[axis] for part in parts])
            return functools.partial(_copy_pairs, tuple(zip(pieces, parts, strict=True)))
        if op == "Split":
            axis = int(node.attr("axis", 0)) % x.ndim
            pieces = _pieces(x, axis, [out.shape[axis] for out in outputs])
            return functools.partial(_copy_pairs, tuple(zip(outputs, pieces, strict=True)))
        if op == "Gather":
            indices = inputs[1]
            assert indices is not None
            axis = int(node.attr("axis", 0)) % x.ndim
            out = outputs[0]
            return lambda: np.copyto(out, np.take(x, indices, axis=axis))
        # Identity and the reshapes: same data, the output's shape
        out = outputs[0]
        if x.flags.c_contiguous:
            return functools.partial(np.copyto, out, x.reshape(out.shape))
        return lambda: np.copyto(out, x.reshape(out.shape))


def _pieces(array: np.ndarray, axis: int, sizes: Sequence[int]) -> list[np.ndarray]:
    """Consecutive views of ``array`` along ``axis``, ``sizes`` long (Concat's output, Split's
    input)."""
    ends = np.cumsum(sizes).tolist()
    starts = [0, *ends][:-1]
    return [array[(slice(None),) * axis + (slice(a, b),)] for a, b in zip(starts, ends, strict=True)]


def _copy_pairs(pairs: tuple[tuple[np.ndarray, np.ndarray], ...]) -> None:
    """``np.copyto(dst, src)`` for each pair."""
    for dst, src in pairs:
        np.copyto(dst, src)


# --------------------------------------------------------------------------- epilogues
def erf_float32(x: np.ndarray) -> np.ndarray:
    """erf (numpy has none) in float32 with few temporaries: Abramowitz & Stegun 7.1.26,
    |error| < 1.5e-7 plus float32 rounding."""
    t = np.abs(x, dtype=np.float32)
    e = np.square(t)
    np.negative(e, out=e)
    np.exp(e, out=e)  # exp(-x^2)
    t *= np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)  # k
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    poly *= e
    np.subtract(np.float32(1.0), poly, out=poly)
    return np.copysign(poly, x, out=poly)


def apply_activation(z: np.ndarray, activation: str, alpha: float, beta: float) -> np.ndarray:
    """``act(z)`` for an epilogue activation named as in ``fused.py`` (in place where possible)."""
    if activation == "":
        return z
    if activation == "Relu":
        return np.maximum(z, 0, out=z)
    if activation == "LeakyRelu":
        return np.where(z >= 0, z, z * alpha).astype(z.dtype, copy=False)
    if activation == "Clip":
        return np.clip(z, alpha, beta, out=z)
    if activation == "Sigmoid":
        with np.errstate(over="ignore"):  # exp(-z) = inf below z ~ -88: the limit, 0, is right
            return (1.0 / (1.0 + np.exp(-z))).astype(z.dtype, copy=False)
    if activation == "Tanh":
        return np.tanh(z, out=z)
    if activation == "HardSigmoid":
        return np.clip(alpha * z + beta, 0.0, 1.0).astype(z.dtype, copy=False)
    if activation == "HardSwish":
        return (z * np.clip(z / 6.0 + 0.5, 0.0, 1.0)).astype(z.dtype, copy=False)
    if activation == "Silu":
        with np.errstate(over="ignore"):  # as Sigmoid's: z / inf is the limit, -0
            return (z / (1.0 + np.exp(-z))).astype(z.dtype, copy=False)
    if activation == "Gelu":
        half = z * np.asarray(0.5, dtype=z.dtype)
        return np.multiply(half, 1.0 + erf_float32(z * np.asarray(1 / math.sqrt(2.0), dtype=z.dtype)), out=z)
    if activation == "GeluTanh":
        inner = z * z * z
        inner *= np.asarray(0.044715, dtype=z.dtype)
        inner += z
        inner *= np.asarray(math.sqrt(2.0 / math.pi), dtype=z.dtype)
        np.tanh(inner, out=inner)
        inner += 1
        inner *= z
        return np.multiply(inner, np.asarray(0.5, dtype=z.dtype), out=z)
    raise ValueError(f"unknown epilogue activation {activation!r}")


def apply_epilogue(z: np.ndarray, node: Node, residual: np.ndarray | None) -> np.ndarray:
    """The fused epilogue after bias: residual (pre/post) and activation, as in ``fused.py``."""
    activation = node.attr("activation", "")
    alpha = float(node.attr("alpha", 0.0))
    beta = float(node.attr("beta", 0.0))
    if residual is not None and node.attr("residual", "pre") == "pre":
        z = (
            np.add(z, residual, out=z)
            if z.shape == np.broadcast_shapes(z.shape, residual.shape)
            else z + residual
        )
        residual = None
    z = apply_activation(z, activation, alpha, beta)
    if residual is not None:
        z = z + residual
    return z


def _const(graph: Graph, name: str) -> np.ndarray | None:
    return graph.const(name) if name else None


# --------------------------------------------------------------------------- convolution
def _conv_params(node: Node, spatial: int) -> tuple[list[int], list[int], list[int], int]:
    strides = list(node.attr("strides", [1] * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    pads = list(node.attr("pads", [0] * (2 * spatial)))
    return strides, dilations, pads, int(node.attr("group", 1))


def conv_im2col(
    x: np.ndarray,
    w_cols: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    group: int,
) -> np.ndarray:
    """N-d grouped convolution by im2col + matmul.

    ``w_cols`` is the weight as ``[group, Cg*prod(kernel), Mg]``. Returns ``[N, M, *out]``.
    """
    spatial = len(kernel)
    n, c = x.shape[:2]
    if any(pads):
        widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)]
        x = np.pad(x, widths)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(x, extents, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, s) for s in strides)
    index += tuple(slice(None, None, d) for d in dilations)
    windows = windows[index]  # [N, C, *out, *kernel]
    out_spatial = windows.shape[2 : 2 + spatial]
    cg = c // group
    mg = w_cols.shape[2]
    if cg == 1 and mg == 1:
        return _depthwise_taps(windows, w_cols[:, :, 0], kernel)
    rows = n * int(np.prod(out_spatial))
    k = cg * int(np.prod(kernel))
    result = np.empty((group, rows, mg), dtype=np.result_type(x.dtype, w_cols.dtype))
    for g in range(group):
        block = windows[:, g * cg : (g + 1) * cg]
        # [N, *out, Cg, *kernel] -> rows x (Cg * kernel)
        order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
        cols = np.ascontiguousarray(block.transpose(order)).reshape(rows, k)
        np.matmul(cols, w_cols[g], out=result[g])
    # [G, N*out, Mg] -> [N, G*Mg, *out]
    result = result.reshape(group, n, *out_spatial, mg)
    order = (1, 0, spatial + 2, *range(2, 2 + spatial))
    return result.transpose(order).reshape(n, group * mg, *out_spatial)


def _depthwise_taps(windows: np.ndarray, taps: np.ndarray, kernel: Sequence[int]) -> np.ndarray:
    """Depthwise convolution (one input and one output channel per group) as one multiply-add
    over all channels per kernel tap, instead of a matmul per channel.

    ``windows`` is ``[N, C, *out, *kernel]`` (strided views), ``taps`` is ``[C, prod(kernel)]``."""
    n, c = windows.shape[:2]
    spatial = len(kernel)
    out_spatial = windows.shape[2 : 2 + spatial]
    dtype = np.result_type(windows.dtype, taps.dtype)
    acc = np.zeros((n, c, *out_spatial), dtype=dtype)
    product = np.empty_like(acc)
    channel_shape = (1, c) + (1,) * spatial
    for index, position in enumerate(np.ndindex(*kernel)):
        tap = windows[(slice(None),) * (2 + spatial) + position]  # [N, C, *out]
        np.multiply(tap, taps[:, index].reshape(channel_shape), out=product)
        acc += product
    return acc


def _weight_columns(w: np.ndarray, group: int) -> np.ndarray:
    m = w.shape[0]
    return np.ascontiguousarray(w.reshape(group, m // group, -1).transpose(0, 2, 1))


@register_tactic
class ConvIm2colTactic(Tactic):
    """Conv / FusedConv: im2col with sliding windows, one BLAS matmul per group, numpy epilogue."""

    name = "cpu.numpy.conv_im2col"
    op_types = ("Conv", "FusedConv")
    priority = -10
    accepts_strided_output = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """Float convolutions of any rank with explicit pads (the frontend resolves auto_pad)."""
        x = graph.values.get(node.input(0))
        return (
            x is not None
            and x.dtype in ("float32", "float64")
            and node.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
        )

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Reshape a constant weight once into ``[group, Cg*k, Mg]`` columns."""
        w = _const(graph, node.input(1))
        if w is None:
            return Prepared()
        group = int(node.attr("group", 1))
        return Prepared(
            tensors={"w_cols": _weight_columns(w, group)},
            params={"kernel": [int(d) for d in w.shape[2:]]},
            replaces=frozenset({1}),
        )

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """conv, + bias over channels, then the FusedConv epilogue."""
        x = inputs[0]
        assert x is not None
        spatial = x.ndim - 2
        strides, dilations, pads, group = _conv_params(node, spatial)
        if "w_cols" in prepared.tensors:
            w_cols = prepared.tensors["w_cols"]
            kernel = prepared.params["kernel"]
        else:
            w = inputs[1]
            assert w is not None
            w_cols = _weight_columns(w, group)
            kernel = list(w.shape[2:])
        z = conv_im2col(x, w_cols, kernel, strides, dilations, pads, group)
        z = np.ascontiguousarray(z)
        bias = inputs[2] if len(inputs) > 2 else None
        if bias is not None:
            z += bias.reshape((1, -1) + (1,) * spatial)
        residual = inputs[3] if len(inputs) > 3 else None
        if node.op_type == "FusedConv":
            z = apply_epilogue(z, node, residual)
        np.copyto(outputs[0], z, casting="unsafe")


# --------------------------------------------------------------------------- GEMM
def _gemm_layout(node: Node) -> tuple[bool, bool, float, float]:
    """(transA, transB, alpha, beta) of a MatMul / Gemm / FusedGemm node."""
    if node.op_type == "Gemm":
        return (
            bool(node.attr("transA", 0)),
            bool(node.attr("transB", 0)),
            float(node.attr("alpha", 1.0)),
            float(node.attr("beta", 1.0)),
        )
    if node.op_type == "FusedGemm":
        return False, bool(node.attr("transB", 0)), 1.0, 1.0
    return False, False, 1.0, 1.0


@register_tactic
class GemmBlasTactic(Tactic):
    """MatMul / Gemm / FusedGemm: numpy matmul (BLAS) on a pre-transposed constant B, then the epilogue.

    A constant B is stored once as a contiguous ``[K, N]`` matrix, so BLAS sees a plain
    row-major product; the matmul writes straight into the output buffer when there is no
    epilogue.
    """

    name = "cpu.numpy.gemm_blas"
    op_types = ("MatMul", "Gemm", "FusedGemm")
    priority = -10
    accepts_strided_output = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """Float products (integer MatMul goes to the reference)."""
        a = graph.values.get(node.input(0))
        return a is not None and a.dtype in ("float32", "float64")

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Store a constant B as contiguous ``[..., K, N]`` (transposed once when transB)."""
        b = _const(graph, node.input(1))
        if b is None:
            return Prepared()
        _, trans_b, alpha, _ = _gemm_layout(node)
        if trans_b:
            b = np.swapaxes(b, -1, -2)
        if alpha != 1.0:
            b = b * np.asarray(alpha, dtype=b.dtype)
        return Prepared(tensors={"b": np.ascontiguousarray(b)}, replaces=frozenset({1}))

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """``A @ B`` (+ bias, residual, activation)."""
        a = inputs[0]
        assert a is not None
        trans_a, trans_b, alpha, beta = _gemm_layout(node)
        if trans_a:
            a = a.T
        b = prepared.tensors.get("b")
        if b is None:
            b = inputs[1]
            assert b is not None
            if trans_b:
                b = np.swapaxes(b, -1, -2)
            if alpha != 1.0:
                b = b * np.asarray(alpha, dtype=b.dtype)
        out = outputs[0]
        bias = inputs[2] if len(inputs) > 2 else None
        residual = inputs[3] if len(inputs) > 3 else None
        simple = node.op_type == "MatMul" or (
            bias is None and residual is None and node.attr("activation", "") == ""
        )
        if simple and out.shape == np.broadcast_shapes(out.shape, a.shape[:-1] + b.shape[-1:]):
            np.matmul(a, b, out=out)
            return
        z = np.matmul(a, b)
        if bias is not None:
            z += bias * np.asarray(beta, dtype=z.dtype) if beta != 1.0 else bias
        if node.op_type == "FusedGemm":
            z = apply_epilogue(z, node, residual)
        np.copyto(out, z, casting="unsafe")


# --------------------------------------------------------------------------- attention
def attention_numpy(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, num_heads: int, scale: float
) -> np.ndarray:
    """The fused Attention op of ``fused.py`` with batched matmuls."""
    b, sq, hidden = q.shape
    sk = k.shape[1]
    d = hidden // num_heads
    qh = q.reshape(b, sq, num_heads, d).transpose(0, 2, 1, 3)
    kh = k.reshape(b, sk, num_heads, d).transpose(0, 2, 3, 1)
    vh = v.reshape(b, sk, num_heads, d).transpose(0, 2, 1, 3)
    scores = np.matmul(qh, kh)
    scores *= np.asarray(scale, dtype=scores.dtype)
    if mask is not None:
        scores += mask
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    y = np.matmul(scores, vh)  # [B, H, Sq, D]
    return y.transpose(0, 2, 1, 3).reshape(b, sq, hidden)


@register_tactic
class AttentionTactic(Tactic):
    """Attention: per-batch-and-head matmuls with a numerically stable softmax (unfused)."""

    name = "cpu.numpy.attention"
    op_types = ("Attention",)
    priority = -10
    accepts_strided_output = True

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """softmax(scale * q k^T + mask) v, heads packed in the last axis."""
        q, k, v = inputs[0], inputs[1], inputs[2]
        assert q is not None and k is not None and v is not None
        mask = inputs[3] if len(inputs) > 3 else None
        num_heads = int(node.attr("num_heads"))
        d = q.shape[-1] // num_heads
        scale = float(node.attr("scale", 1.0 / math.sqrt(d)))
        np.copyto(outputs[0], attention_numpy(q, k, v, mask, num_heads, scale), casting="unsafe")


def describe_generic_tactics() -> dict[str, Any]:
    """Which ops have a dedicated numpy tactic and which use the reference (for docs/inspect)."""
    return {"dedicated": sorted(DEDICATED_OPS), "reference": sorted(_reference_op_types())}
