"""Load-time consistency checks of an engine manifest, and the shapes it records for the runtime.

The tensors of an engine file are covered by a sha256, the manifest is not: a hand-edited (or
fuzzed) manifest could otherwise name a schedule that reads values nobody writes, put a buffer
outside the arena, or give a value more bytes than its buffer holds, and the kernels would then
read garbage or fail deep inside a run. :func:`check_engine` refuses such a file at load with an
:class:`EngineFormatError` naming the first inconsistency.

``shapes`` in the manifest: the concrete shape of every value whose shape in the graph is symbolic,
for the input shapes the engine was tuned for (``opt_shape``) and planned for (``max_shape``).
Writing them at build time means the first run at those shapes needs no shape inference (which
imports the ONNX frontend); any other input shapes are inferred on first use, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from farm.compiler.engine.serialize import EngineFormatError
from farm.compiler.ir import numpy_dtype, run_inputs
from farm.compiler.memory.planner import ALIAS, ARENA, CONST, DYNAMIC, INPUT, OUTPUT, SLICE, MemoryPlan

if TYPE_CHECKING:
    from farm.compiler.engine.runtime import Engine

Shape = tuple[int, ...]
ShapeTable = dict[tuple[tuple[str, Shape], ...], dict[str, Shape]]

PLACEMENT_KINDS = frozenset({INPUT, CONST, OUTPUT, ARENA, ALIAS, SLICE, DYNAMIC})
MAX_ALIGNMENT = 1 << 16


def _bad(message: str) -> EngineFormatError:
    return EngineFormatError(f"engine manifest is inconsistent: {message}")


def _static_shape(shape: Iterable[Any] | None) -> Shape | None:
    if shape is None:
        return None
    dims = tuple(shape)
    return dims if all(type(d) is int for d in dims) else None


def _int_shape(shape: Any, what: str) -> Shape:
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"{what} has shape {shape!r}, not a list of non-negative integers")
    return tuple(shape)


def _nbytes(shape: Shape, dtype: str | None) -> int:
    size = 1
    for d in shape:
        size *= d
    return size * numpy_dtype(dtype or "float32").itemsize


# ---------------------------------------------------------------------------- recorded shapes
def shapes_to_json(engine: Engine) -> list[dict[str, Any]]:
    """The ``shapes`` manifest entry: for ``opt_shape`` and ``max_shape`` (when concrete), the
    shape of every value whose graph shape is symbolic."""
    entries: list[dict[str, Any]] = []
    seen: set[tuple[tuple[str, Shape], ...]] = set()
    symbolic = [k for k, v in engine.graph.values.items() if _static_shape(v.shape) is None]
    for which in ("opt_shape", "max_shape"):
        signature = {b.name: tuple(getattr(b, which)) for b in engine.inputs}
        key = tuple(sorted(signature.items()))
        if key in seen or not all(type(d) is int for s in signature.values() for d in s):
            continue
        seen.add(key)
        try:
            shapes = engine.infer_shapes(signature)
        except Exception:  # optional data: never fail a save; the runtime infers (and reports) later
            continue
        entries.append(
            {
                "inputs": {k: list(v) for k, v in signature.items()},
                "values": {k: list(shapes[k]) for k in symbolic if k in shapes},
            }
        )
    return entries


def shapes_from_json(engine: Engine, data: Any) -> ShapeTable:
    """Parse and check the manifest's ``shapes`` (absent in older files: no entries). Each entry
    becomes the full shape table for its input signature: static graph shapes plus recorded ones."""
    if data is None:
        return {}
    if not isinstance(data, list):
        raise _bad(f"'shapes' is a {type(data).__name__}, not a list")
    values = engine.graph.values
    static = {k: s for k, v in values.items() if (s := _static_shape(v.shape)) is not None}
    table: ShapeTable = {}
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("inputs"), dict):
            raise _bad("an entry of 'shapes' has no 'inputs' object")
        recorded = entry.get("values")
        if not isinstance(recorded, dict):
            raise _bad("an entry of 'shapes' has no 'values' object")
        if sorted(entry["inputs"]) != sorted(engine.input_names):
            raise _bad(
                f"'shapes' names inputs {sorted(entry['inputs'])}, the engine has {engine.input_names}"
            )
        signature: dict[str, Shape] = {}
        for b in engine.inputs:
            shape = _int_shape(entry["inputs"][b.name], f"recorded input {b.name!r}")
            if len(shape) != len(b.min_shape) or not all(
                lo <= d <= hi for d, lo, hi in zip(shape, b.min_shape, b.max_shape, strict=True)
            ):
                raise _bad(
                    f"recorded input shape {list(shape)} of {b.name!r} is outside {b.min_shape}..{b.max_shape}"
                )
            signature[b.name] = shape
        shapes = dict(static)
        for name, raw in recorded.items():
            value = values.get(name)
            if value is None:
                raise _bad(f"'shapes' names value {name!r}, which is not in the graph")
            shape = _int_shape(raw, f"recorded value {name!r}")
            if value.shape is not None and (
                len(shape) != len(value.shape)
                or any(type(d) is int and d != s for d, s in zip(value.shape, shape, strict=True))
            ):
                raise _bad(
                    f"recorded shape {list(shape)} of {name!r} contradicts its graph shape {list(value.shape)}"
                )
            shapes[name] = shape
        for name, shape in signature.items():
            shapes[name] = shape
        table[tuple(sorted(signature.items()))] = shapes
    return table


# ---------------------------------------------------------------------------- the checks
def check_engine(engine: Engine, recorded_shapes: Any) -> ShapeTable:
    """Raise :class:`EngineFormatError` when the bindings, schedule, memory plan or the recorded
    shapes (the manifest's ``shapes``) of ``engine`` contradict each other or the graph. Returns
    the recorded shapes as :func:`shapes_from_json` does."""
    _check_bindings(engine)
    _check_schedule(engine)
    shapes = shapes_from_json(engine, recorded_shapes)
    _check_plan(engine, shapes)
    return shapes


def _check_bindings(engine: Engine) -> None:
    graph = engine.graph
    if engine.input_names != list(graph.inputs) or engine.output_names != list(graph.outputs):
        raise _bad(
            f"bindings {engine.input_names} -> {engine.output_names} are not the graph's "
            f"{list(graph.inputs)} -> {list(graph.outputs)}"
        )
    for b in engine.inputs:
        numpy_dtype(b.dtype)
        ranks = {len(b.shape), len(b.min_shape), len(b.opt_shape), len(b.max_shape)}
        dims = [*b.min_shape, *b.opt_shape, *b.max_shape]
        if len(ranks) != 1 or not all(type(d) is int and d >= 0 for d in dims):
            raise _bad(f"input {b.name!r} has shape range {b.min_shape}..{b.opt_shape}..{b.max_shape}")
        if not all(
            lo <= opt <= hi for lo, opt, hi in zip(b.min_shape, b.opt_shape, b.max_shape, strict=True)
        ):
            raise _bad(f"input {b.name!r} has min/opt/max shapes {b.min_shape}, {b.opt_shape}, {b.max_shape}")


def _check_schedule(engine: Engine) -> None:
    """Every graph node scheduled once, after the producers of what it reads."""
    graph = engine.graph
    scheduled = [k.node.name for k in engine.kernels]
    if len(set(scheduled)) != len(scheduled) or sorted(scheduled) != sorted(n.name for n in graph.nodes):
        raise _bad("the schedule does not run every node of the graph exactly once")
    available = set(graph.inputs) | {k for k, v in graph.values.items() if v.const is not None}
    for step, kernel in enumerate(engine.kernels):
        node = kernel.node
        for i, name in enumerate(run_inputs(node)):
            if name and i not in kernel.prepared.replaces and name not in available:
                raise _bad(f"step {step} ({node.name!r}) reads {name!r}, which no earlier step writes")
        available.update(o for o in node.outputs if o)
    missing = [o for o in graph.outputs if o not in available]
    if missing:
        raise _bad(f"graph outputs {missing} are never written")


def _check_plan(engine: Engine, shapes: ShapeTable) -> None:
    plan: MemoryPlan = engine.plan
    alignment = plan.alignment
    if not 1 <= alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise _bad(f"memory plan alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}")
    steps = len(engine.kernels)
    end = 0
    for position, buf in enumerate(plan.buffers):
        fields = (buf.index, buf.size, buf.offset, buf.first, buf.last)
        if not all(type(x) is int for x in fields) or buf.index != position:
            raise _bad(f"buffer {position} has fields {fields}")
        if buf.size < 0 or buf.offset < 0 or buf.offset % alignment:
            raise _bad(
                f"buffer {position} has size {buf.size} at offset {buf.offset} (alignment {alignment})"
            )
        if buf.offset + buf.size > plan.arena_size:
            raise _bad(
                f"buffer {position} (offset {buf.offset}, size {buf.size}) ends beyond the arena "
                f"({plan.arena_size} bytes)"
            )
        if not 0 <= buf.first <= buf.last < max(steps, 1):
            raise _bad(f"buffer {position} is live over steps {buf.first}..{buf.last} of {steps}")
        end = max(end, buf.offset + buf.size)
    if plan.arena_size > end + alignment:
        raise _bad(f"arena of {plan.arena_size} bytes for buffers that end at byte {end}")
    ordered = sorted(plan.buffers, key=lambda b: b.offset)
    for i, a in enumerate(ordered):  # buffers live at a common step must not share bytes
        for b in ordered[i + 1 :]:
            if b.offset >= a.offset + a.size:
                break
            if a.first <= b.last and b.first <= a.last and a.size and b.size:
                raise _bad(f"buffers {a.index} and {b.index} are live together and overlap in the arena")

    graph = engine.graph
    node_names = {k.node.name: k.node for k in engine.kernels}
    for name in (*plan.view_nodes, *plan.inplace_nodes, *plan.elided_concats):
        if name not in node_names:
            raise _bad(f"the memory plan names node {name!r}, which is not scheduled")
    for cname in plan.elided_concats:
        if node_names[cname].op_type != "Concat":
            raise _bad(f"elided concat {cname!r} is a {node_names[cname].op_type}")
    written = {o for k in engine.kernels for o in k.node.outputs if o}
    for name in written:
        if name not in plan.values:
            raise _bad(f"value {name!r} has no placement in the memory plan")
    tables = list(shapes.values()) or [{}]
    for name, place in plan.values.items():
        value = graph.values.get(name)
        if value is None:
            raise _bad(f"the memory plan places {name!r}, which is not in the graph")
        if place.kind not in PLACEMENT_KINDS:
            raise _bad(f"value {name!r} has placement kind {place.kind!r}")
        if place.kind == ARENA:
            if type(place.buffer) is not int or not 0 <= place.buffer < len(plan.buffers):
                raise _bad(f"value {name!r} is placed in buffer {place.buffer!r} of {len(plan.buffers)}")
            size = plan.buffers[place.buffer].size
            for table in tables:
                shape = table.get(name) or _static_shape(value.shape)
                if shape is not None and _nbytes(shape, value.dtype) > size:
                    raise _bad(
                        f"value {name!r} ({value.dtype} {list(shape)}, {_nbytes(shape, value.dtype)} bytes) "
                        f"does not fit its buffer {place.buffer} ({size} bytes)"
                    )
        elif place.kind in (ALIAS, SLICE):
            _check_view_chain(engine, name)
            if place.kind == SLICE:
                try:
                    engine.producer_of_concat_slice(name)
                except KeyError:
                    raise _bad(
                        f"value {name!r} is a slice of {place.of!r}, which no elided concat writes"
                    ) from None


def _check_view_chain(engine: Engine, name: str) -> None:
    """An alias/slice must end, through its ``of`` chain, at a placed value (no cycle)."""
    values = engine.plan.values
    seen = {name}
    place = values[name]
    while place.kind in (ALIAS, SLICE):
        target = place.of
        if not isinstance(target, str) or target not in values:
            raise _bad(f"value {name!r} is a view of {target!r}, which has no placement")
        if target in seen:
            raise _bad(f"value {name!r} is a view of itself (through {sorted(seen)})")
        seen.add(target)
        place = values[target]
