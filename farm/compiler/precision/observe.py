"""Run an (optimized) IR graph fast and read any of its tensors: an FP32 engine of a copy of
the graph whose outputs are the wanted tensors.

Calibration, the accuracy-budget reference and the sensitivity analysis run the model over
hundreds of samples; the numpy reference interpreter is far too slow for that (ResNet-18 at
64x64: ~2.7 s per image on the 2-core machine), the FP32 engine is what we ship anyway and
matches the reference to 1e-5. The engine is built untimed (tuning level 0) and unoptimized (the
graph given is already optimized, or must stay as it is, e.g. a fake-quantized emulation).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from farm.compiler.ir import Graph
from farm.compiler.ir.graph import Dim

BatchAxes = Mapping[str, "int | None"]


def batch_axes_of(
    shapes: Mapping[str, Sequence[Dim] | None], inputs: Collection[str], names: Iterable[str]
) -> dict[str, int | None]:
    """The axis of each of ``names`` that holds the batch, or None for one without (its data is
    fed whole), given every value's (symbolic) shape and the graph's ``inputs``.

    The batch is the symbol at axis 0 of the inputs (as the builder binds it). A value's batch
    axis is the first axis carrying such a symbol: axis 1 for a GRU/LSTM state input ``[layers,
    batch, hidden]``. An input without one has no batch axis; any other value without one (a
    derived dim such as ``batch*seq``, or none) keeps axis 0, as does every value when no input
    has a symbolic axis 0.
    """
    symbols = {shape[0] for n in inputs if (shape := shapes.get(n)) and isinstance(shape[0], str)}
    axes: dict[str, int | None] = {}
    for name in names:
        shape = shapes.get(name)
        if not symbols or shape is None:
            axes[name] = 0
            continue
        found = next((i for i, d in enumerate(shape) if isinstance(d, str) and d in symbols), None)
        axes[name] = found if found is not None or name not in inputs else None
    return axes


def batch_axes(graph: Graph, names: Iterable[str]) -> dict[str, int | None]:
    """:func:`batch_axes_of` for values of ``graph``."""
    shapes = {name: value.shape for name, value in graph.values.items()}
    return batch_axes_of(shapes, graph.inputs, names)


def batch_slice(array: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of ``array`` along its batch ``axis`` (all of it when None)."""
    if axis is None:
        return array
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def batch_size(feeds: Mapping[str, np.ndarray], axes: BatchAxes) -> int:
    """The number of samples in ``feeds`` (along the first input that has a batch axis)."""
    for name, array in feeds.items():
        axis = axes.get(name, 0)
        if axis is not None:
            return int(np.shape(array)[axis]) if np.ndim(array) > axis else 1
    return 1


def concat_batches(parts: list[np.ndarray], axis: int | None) -> np.ndarray:
    """``parts`` joined along their batch axis (a value without one: the first part's)."""
    if len(parts) == 1:
        return parts[0]
    return parts[0] if axis is None else np.concatenate(parts, axis=axis)


class GraphRunner:
    """Runs ``graph`` and returns ``tensors`` (names of any values), batch by batch."""

    def __init__(
        self,
        graph: Graph,
        tensors: Iterable[str] | None = None,
        *,
        max_batch: int = 32,
        example: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``example`` feeds fix the non-batch dims the graph leaves symbolic (e.g. ``seq``)."""
        from farm.compiler.builder import BuilderConfig, build

        wanted = list(dict.fromkeys(tensors if tensors is not None else graph.outputs))
        self.tensors = wanted
        self.from_feeds = [t for t in wanted if t in graph.inputs]
        copy = graph.copy()
        for node in copy.nodes:
            if node.op_type == "Concat":  # a tensor we read must not become a view of the concat
                node.attrs.pop("elide", None)
            node.precision = None
        copy.outputs = [t for t in wanted if t not in graph.inputs]
        self.max_batch = max_batch
        self.input_axes = batch_axes(graph, graph.inputs)
        self.tensor_axes = batch_axes(graph, wanted)
        shapes = {}
        for name, value in (example or {}).items():
            if name in graph.inputs:
                shape = list(np.shape(value))
                axis = self.input_axes[name]
                if axis is not None and axis < len(shape):
                    shape[axis] = max_batch
                shapes[name] = shape
        config = BuilderConfig(
            tuning_level=0, optimize=False, batch_range=(1, max_batch, max_batch), input_shapes=shapes
        )
        self.engine = build(copy, "cpu", config)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The wanted tensors for ``feeds`` (any batch size: split into engine-sized chunks along
        each input's batch axis, joined along each tensor's)."""
        total = batch_size(feeds, self.input_axes)
        parts = []
        for start in range(0, total, self.max_batch):
            stop = start + self.max_batch
            chunk = {k: batch_slice(v, self.input_axes.get(k, 0), start, stop) for k, v in feeds.items()}
            out = dict(self.engine.run(chunk))
            out.update({t: chunk[t] for t in self.from_feeds})
            parts.append(out)
        return {t: concat_batches([p[t] for p in parts], self.tensor_axes[t]) for t in self.tensors}
