"""Slice and the Reduce ops straight into the output buffer with numpy, without the reference.

The reference tactics run an op through the interpreter, make the result and copy it: ~7-15 us
a call, as much as a small conv. Exported models are full of such light ops around their convs
(Silero VAD's STFT takes five Slices of a 258-row spectrum; YOLO and DB heads slice their
outputs). Here:

* ``cpu.numpy.slice``: the ONNX Slice rule (``reference.shape_ops.slice_index``: negative
  starts/ends/axes, clamping, negative steps) made into a numpy index once per input shape, and
  the copy of that view. Bound to fixed arrays, a run is one ``np.copyto``. Any dtype; starts,
  ends, axes and steps may be run-time inputs (read on every call).
* ``cpu.numpy.reduce``: ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2 on floats, numpy's reduction
  ufuncs writing into the output (``keepdims``, ``noop_with_empty_axes``, axes as input or
  attribute), with the reference's arithmetic: float32 pairwise sums, the mean divided by the
  count afterwards, L2 accumulated in float64, ±inf for an empty Max/Min.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._operands import RunsBound, constant_input, memo
from farm.compiler.kernels.registry import Prepared, Tactic, register_tactic
from farm.compiler.reference.reduce import reduce_axes
from farm.compiler.reference.shape_ops import slice_index


def _side_inputs(node: Node, graph: Graph, first: int) -> tuple[bool, list[np.ndarray | None]]:
    """(whether inputs ``first..`` are all constants or absent, their values)."""
    known = [constant_input(node, graph, i) for i in range(first, len(node.inputs))]
    return all(k for k, _ in known), [v for _, v in known]


@register_tactic
class NumpySliceTactic(RunsBound, Tactic):
    """Slice as one copy of a numpy view (module docstring)."""

    name = "cpu.numpy.slice"
    op_types = ("Slice",)
    priority = -40
    accepts_strided_output = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """The canonical form: starts and ends as inputs (the frontend moves opset-1 attributes)."""
        return len(node.inputs) >= 3 and bool(node.input(1)) and bool(node.input(2))

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Constant starts/ends/axes/steps are kept as parameters (the index is made per shape)."""
        constant, values = _side_inputs(node, graph, 1)
        if not constant:
            return Prepared()
        return Prepared(
            params={"bounds": [None if v is None else [int(e) for e in v.reshape(-1)] for v in values]}
        )

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """``np.copyto(out, x[index])`` on these arrays; with run-time bounds, None unless
        ``copies`` (the bounds must be read on every call)."""
        x = inputs[0]
        assert x is not None
        bounds = prepared.params.get("bounds")
        if bounds is None:
            if not copies:
                return None
            index = slice_index(x.shape, list(inputs))
        else:
            side = [None if b is None else np.asarray(b, np.int64) for b in bounds]
            index = memo(prepared, ("slice_index", x.shape), lambda: slice_index(x.shape, [x, *side]))
        return functools.partial(np.copyto, outputs[0], x[index], casting="unsafe")


REDUCTIONS = ("Sum", "Mean", "Max", "Min", "Prod", "SumSquare", "L1", "L2")


def _reduce_call(
    kind: str, x: np.ndarray, out: np.ndarray, axes: tuple[int, ...] | None, keep: bool
) -> Callable[[], None]:
    """``out = Reduce<kind>(x)`` over ``axes`` (None: the no-op of ``noop_with_empty_axes``) as a
    call with its axes and count settled (Max and Min: one partial of the ufunc): a reduction
    of a few elements (Silero's ReduceMean of one value) cost ~7 us a call when the count was
    worked out on every call (``np.prod`` of a list alone, 3.7 us)."""
    if axes is None:  # reshaped on every call: a reshape of a strided view is a copy

        def copy() -> None:
            np.copyto(out, x.reshape(out.shape), casting="unsafe")

        return copy
    if kind == "Max":
        return functools.partial(np.maximum.reduce, x, axis=axes, keepdims=keep, out=out, initial=-np.inf)
    if kind == "Min":
        return functools.partial(np.minimum.reduce, x, axis=axes, keepdims=keep, out=out, initial=np.inf)
    count = out.dtype.type(int(np.prod([x.shape[a] for a in axes])))

    def reduce() -> None:
        # over/invalid: a float32 sum may overflow to inf (what ONNX Runtime returns, silently)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if kind in ("Sum", "Mean"):
                np.add.reduce(x, axis=axes, keepdims=keep, out=out)
                if kind == "Mean":
                    np.divide(out, count, out=out)
            elif kind == "Prod":
                np.multiply.reduce(x, axis=axes, keepdims=keep, out=out)
            elif kind == "SumSquare":
                np.add.reduce(x * x, axis=axes, keepdims=keep, out=out)
            elif kind == "L1":
                np.add.reduce(np.abs(x), axis=axes, keepdims=keep, out=out)
            else:  # L2, accumulated in float64 as the reference does
                wide = x.astype(np.float64)
                np.copyto(out, np.sqrt(np.sum(wide * wide, axis=axes, keepdims=keep)), casting="unsafe")

    return reduce


@register_tactic
class NumpyReduceTactic(RunsBound, Tactic):
    """ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2 of floats with numpy's reduction ufuncs into
    the output (module docstring)."""

    name = "cpu.numpy.reduce"
    op_types = tuple(f"Reduce{k}" for k in REDUCTIONS)
    priority = -40
    accepts_strided_output = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """Float input and output of one dtype; constant axes (or none)."""
        x = graph.values.get(node.input(0))
        y = graph.values.get(node.outputs[0])
        if x is None or y is None or x.dtype not in ("float32", "float64") or y.dtype != x.dtype:
            return False
        return _side_inputs(node, graph, 1)[0]

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
        copies: bool = False,
    ) -> Callable[[], None] | None:
        """The reduction of these arrays; the axes are resolved once per input rank."""
        x = inputs[0]
        assert x is not None
        kind = node.op_type[len("Reduce") :]

        def axes() -> tuple[int, ...] | None:
            return reduce_axes(node, [x, *inputs[1:2]], x.ndim)

        keep = bool(node.attr("keepdims", 1))
        return _reduce_call(kind, x, outputs[0], memo(prepared, ("axes", x.ndim), axes), keep)


__all__: Sequence[str] = ("REDUCTIONS", "NumpyReduceTactic", "NumpySliceTactic")
