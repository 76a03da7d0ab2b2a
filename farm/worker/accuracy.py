"""Pipeline step ``accuracy``: the engine's outputs against ONNX Runtime in FP32.

Validation data comes from the submission's dataset (an ``.npz`` whose arrays are named after the
model's inputs, or ``input:<name>``), split into batches of the job's batch size. Without a
dataset, inputs are generated from the model's input specs with ranges a real input would have:

- an integer input that feeds a ``Gather`` on a constant table (an embedding) gets token ids
  below that table's first dimension (found by following the input through Cast/Reshape/
  Unsqueeze/Squeeze/Flatten/Identity in the graph);
- an input whose name says it is a mask (``mask`` in the name) gets 0/1 values, mostly 1 with
  padding at the end of each row;
- other integer inputs get small ids (0 or 1, e.g. token type ids), booleans random 0/1;
- float inputs (images, features) get standard-normal values.

The metrics are the compiler's (:mod:`farm.compiler.accuracy`): max abs error, relative L2 error,
cosine similarity, SNR, and top-1/top-5 agreement for classifier outputs. Each output is checked
against the precision's budget (:data:`DEFAULT_BUDGETS`, overridable per submission); the worst
output counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from farm.compiler import Engine
from farm.compiler.accuracy import OutputAccuracy, compare_outputs, onnxruntime_outputs
from farm.compiler.builder import batched_shapes
from farm.compiler.precision.budget import AccuracyBudget
from farm.compiler.precision.observe import batch_axes_of, batch_size, batch_slice

# worst output must meet every budget of the engine's precision
DEFAULT_BUDGETS: dict[str, tuple[str, ...]] = {
    "fp32": ("cosine>=0.99999", "rel_l2<=0.001"),
    "fp16": ("cosine>=0.999", "rel_l2<=0.05"),
    "bf16": ("cosine>=0.995", "rel_l2<=0.1"),
    "int8": ("cosine>=0.99",),
    "best": ("cosine>=0.99",),
}
GENERATED_BATCHES = 4
MAX_DATASET_SAMPLES = 256
PASS_THROUGH_OPS = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})


@dataclass
class AccuracyReport:
    """The metrics of every output, the budgets they were held to, and whether all were met."""

    outputs: list[OutputAccuracy]
    budgets: list[str]
    failures: list[str] = field(default_factory=list)
    source: str = "generated"  # "dataset" or "generated"
    samples: int = 0

    @property
    def passed(self) -> bool:
        """True when every output meets every budget."""
        return not self.failures

    def worst(self, metric: str) -> float | None:
        """The worst value of ``metric`` over the outputs (``None`` when no output has it)."""
        values = [getattr(o, metric) for o in self.outputs if getattr(o, metric) is not None]
        values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        if not values:
            return None
        direction = "<=" if metric in ("rel_l2", "max_abs") else ">="
        return max(values) if direction == "<=" else min(values)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON (non-finite numbers become ``None``)."""
        return {
            "passed": self.passed,
            "budgets": self.budgets,
            "failures": self.failures,
            "source": self.source,
            "samples": self.samples,
            "outputs": [o.to_json() for o in self.outputs],
        }


def budgets_for(precision: str, overrides: Mapping[str, Any] | None = None) -> list[AccuracyBudget]:
    """The budgets of ``precision``: the submission's override for it, else :data:`DEFAULT_BUDGETS`."""
    chosen: Any = (overrides or {}).get(precision, DEFAULT_BUDGETS.get(precision, DEFAULT_BUDGETS["fp32"]))
    texts = [chosen] if isinstance(chosen, str) else list(chosen)
    return [AccuracyBudget.parse(text) for text in texts]


def embedding_table_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """For each graph input that indexes a constant table through ``Gather``, the table's size."""
    graph = model.graph
    tables = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = list(node.attribute[0].t.dims)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    sizes: dict[str, int] = {}
    for value in graph.input:
        if value.name in tables:
            continue
        frontier, seen = [value.name], set()
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in consumers.get(name, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
                    dims = tables.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims:
                        size = dims[axis]
                        sizes[value.name] = min(sizes.get(value.name, size), size)
                elif node.op_type in PASS_THROUGH_OPS and node.input and node.input[0] == name:
                    frontier.extend(node.output)
    return sizes


def generate_feeds(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str], seed: int
) -> dict[str, np.ndarray]:
    """One batch of inputs with realistic ranges (see the module docstring) for the given shapes."""
    rng = np.random.default_rng(seed)
    vocab = embedding_table_sizes(model)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        dtype = np.dtype(dtypes[name])
        shape = tuple(int(d) for d in shape)
        if "mask" in name.lower():
            feeds[name] = _padding_mask(rng, shape).astype(dtype)
        elif dtype.kind in "iu":
            high = vocab.get(name, 2)
            feeds[name] = rng.integers(0, max(high, 1), size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _padding_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.ones(shape, dtype=np.int64)
    if len(shape) >= 2 and shape[-1] > 1:
        for row in np.ndindex(*shape[:-1]):
            valid = int(rng.integers(max(1, shape[-1] // 2), shape[-1] + 1))
            mask[row + (slice(valid, None),)] = 0
    return mask


def validation_batches(
    engine: Engine,
    model: onnx.ModelProto,
    *,
    batch: int,
    dataset: Mapping[str, np.ndarray] | None = None,
    batches: int = GENERATED_BATCHES,
    seed: int = 0,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Validation feeds for ``engine`` at ``batch``: from ``dataset`` when given, else generated."""
    if dataset:
        dtypes = {b.name: b.dtype for b in engine.inputs}
        return dataset_batches(dtypes, dataset, batch=batch, axes=model_batch_axes(model)), "dataset"
    shapes = batched_shapes(engine.inputs, batch)
    dtypes = {binding.name: binding.dtype for binding in engine.inputs}
    return [generate_feeds(model, shapes, dtypes, seed + i) for i in range(batches)], "generated"


def dataset_batches(
    input_dtypes: Mapping[str, str],
    dataset: Mapping[str, np.ndarray],
    *,
    batch: int,
    axes: Mapping[str, int | None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """The dataset's samples for each input (name -> dtype), cut into batches of ``batch`` (a short
    tail dropped) along each input's batch axis (``axes``; axis 0 when not given, None: fed whole,
    e.g. an RNN state ``[layers, batch, hidden]`` batches on axis 1)."""
    axes = axes or {}
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in input_dtypes.items():
        array = dataset.get(name, dataset.get(f"input:{name}"))
        if array is None:
            raise ValueError(f"the dataset has no array for input {name!r} (has {sorted(dataset)})")
        arrays[name] = batch_slice(
            np.asarray(array).astype(dtype, copy=False), axes.get(name, 0), 0, MAX_DATASET_SAMPLES
        )
    batched = {k: v for k, v in arrays.items() if axes.get(k, 0) is not None}
    count = min((batch_size({k: v}, axes) for k, v in batched.items()), default=batch)
    if count < batch:
        # fewer samples than one batch: repeat them (a batch-8 engine still needs batch-8 feeds)
        repeats = -(-batch // count)
        for k, v in batched.items():
            axis = axes.get(k, 0) or 0
            arrays[k] = batch_slice(np.concatenate([v] * repeats, axis=axis), axis, 0, batch)
        count = batch
    return [
        {k: batch_slice(v, axes.get(k, 0), start, start + batch) for k, v in arrays.items()}
        for start in range(0, count - batch + 1, batch)
    ]


def model_batch_axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Each graph input's batch axis (:func:`~farm.compiler.precision.observe.batch_axes_of`):
    axis 0, or the axis an RNN state declares with the batch symbol; None for an input without."""
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, list[int | str] | None] = {}
    for value in model.graph.input:
        if value.name not in initializers:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else f"?{i}")
                                  for i, d in enumerate(dims)]  # fmt: skip
    return batch_axes_of(shapes, list(shapes), list(shapes))


def model_input_specs(
    model: onnx.ModelProto, *, batch: int, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Concrete shapes and dtypes of the model's inputs: a symbolic first dim is ``batch``, as is
    a dim declared with the same symbol on another axis (:func:`model_batch_axes`); other symbolic
    dims must be given in ``input_shapes``."""
    initializers = {init.name for init in model.graph.initializer}
    axes = model_batch_axes(model)
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtypes[value.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        if input_shapes and value.name in input_shapes:
            shapes[value.name] = [int(d) for d in input_shapes[value.name]]
            continue
        shape = []
        batch_axis = axes.get(value.name)
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif axis == 0 or axis == batch_axis:
                shape.append(batch)
            else:
                raise ValueError(f"input {value.name!r} has a symbolic dim at axis {axis}; give input_shapes")
        shapes[value.name] = shape
    return shapes, dtypes


def calibration_batches(
    model: onnx.ModelProto,
    *,
    batch: int,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dataset: Mapping[str, np.ndarray] | None = None,
    batches: int = 8,
    seed: int = 1000,
) -> list[dict[str, np.ndarray]]:
    """INT8 calibration feeds: the dataset's samples, else generated ones (another seed than validation)."""
    shapes, dtypes = model_input_specs(model, batch=batch, input_shapes=input_shapes)
    if dataset:
        return dataset_batches(dtypes, dataset, batch=batch, axes=model_batch_axes(model))
    return [generate_feeds(model, shapes, dtypes, seed + i) for i in range(batches)]


def reference_outputs(model_path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FP32 reference outputs: ONNX Runtime, or onnx's reference evaluator where ORT lacks an op."""
    try:
        return onnxruntime_outputs(model_path, feeds)
    except Exception as ort_error:
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(str(model_path))
            names = [o.name for o in onnx.load(str(model_path), load_external_data=False).graph.output]
            return dict(zip(names, evaluator.run(None, dict(feeds)), strict=True))
        except Exception:
            raise ort_error from None


def check_accuracy(
    engine: Engine,
    model_path: Path,
    feed_batches: Sequence[Mapping[str, np.ndarray]],
    budgets: Sequence[AccuracyBudget],
    *,
    source: str,
) -> AccuracyReport:
    """Run every batch through the engine and the reference, and hold the metrics to ``budgets``."""
    got: dict[str, list[np.ndarray]] = {}
    want: dict[str, list[np.ndarray]] = {}
    for feeds in feed_batches:
        for name, array in engine.run(dict(feeds)).items():
            got.setdefault(name, []).append(np.asarray(array))
        for name, array in reference_outputs(model_path, feeds).items():
            want.setdefault(name, []).append(np.asarray(array))
    outputs = compare_outputs(
        {name: _join(parts) for name, parts in got.items()},
        {name: _join(parts) for name, parts in want.items()},
    )
    report = AccuracyReport(
        outputs=outputs,
        budgets=[str(b) for b in budgets],
        source=source,
        samples=sum(len(next(iter(f.values()))) for f in feed_batches) if feed_batches else 0,
    )
    for budget in budgets:
        for output in outputs:
            value = getattr(output, budget.metric)
            if value is None:
                continue  # e.g. top1 on an output that is not a classifier's
            if isinstance(value, float) and math.isnan(value) or not budget.met(value):
                report.failures.append(f"{output.name}: {budget.metric}={value:.6g} misses {budget}")
    return report


def load_dataset(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` dataset (never unpickling anything)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def load_model_proto(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path`` without its external weights (only the graph is needed)."""
    return onnx.load(str(path), load_external_data=False)


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts[0].ndim > 0 else np.stack(parts)
