"""The runtime: an :class:`Engine` (schedule + prepared tactics + memory plan) and the
:class:`ExecutionContext` that owns the arena and runs it.

``engine.run(feeds)`` accepts any shapes inside the declared ranges: concrete shapes are
inferred once per shape signature (cached), the arena views for that signature are made once,
and each run only binds the feeds, allocates the outputs and calls the tactics in order.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node, numpy_dtype, run_inputs
from farm.compiler.kernels.registry import Prepared, Tactic, binds
from farm.compiler.kernels.threads import configure_threads, resolve_threads
from farm.compiler.memory.planner import ALIAS, ARENA, CONST, DYNAMIC, INPUT, OUTPUT, SLICE, MemoryPlan

Shape = tuple[int, ...]


class FeedError(ValueError):
    """The feeds passed to ``Engine.run`` do not match the engine's input bindings."""


@dataclass
class Binding:
    """An engine input or output: name, dtype, symbolic shape and the allowed range per dim."""

    name: str
    dtype: str
    shape: list[int | str]
    min_shape: list[int]
    opt_shape: list[int]
    max_shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Binding:
        return Binding(**data)


@dataclass
class Kernel:
    """One step of the schedule: a node, the tactic chosen for it, and what ``prepare`` made."""

    node: Node
    tactic: Tactic
    prepared: Prepared
    timings_ms: dict[str, float | None] = field(default_factory=dict)


@dataclass
class _Step:
    """One kernel bound to the arrays of one shape signature. ``ins``/``outs`` hold the arrays
    that are the same every run (arena views, constants); the ``*_patch`` lists name the
    positions filled per run (feeds, graph outputs, data-dependent values)."""

    kernel: Kernel
    mode: str  # "kernel", "view" (zero-copy, nothing to do), "concat" (elided), "dynamic"
    prepared: Prepared
    ins: list[np.ndarray | None]
    outs: list[np.ndarray | None]
    in_patch: list[tuple[int, str]]
    out_patch: list[tuple[int, str]]
    copies: list[tuple[int, tuple[slice, ...]]] = field(default_factory=list)
    # The tactic's call bound to ``ins``/``outs`` (``Tactic.bind``) when nothing is patched.
    call: Callable[[], None] | None = None


@dataclass
class _BoundShapes:
    """Everything fixed for one shape signature inside one execution context."""

    shapes: dict[str, Shape]
    static: dict[str, np.ndarray]  # constants, arena views and views of them
    run_views: list[str]  # views of per-run arrays, dependencies first
    allocations: list[tuple[str, Shape, np.dtype]]  # arrays made fresh each run (graph outputs...)
    steps: list[_Step]
    # feeds copied each run into a buffer of this binding (in ``static``): see ``STAGE_BYTES``
    staged: list[str] = field(default_factory=list)
    # (graph output, whether a value made by this run may be returned as is rather than copied)
    results: list[tuple[str, bool]] = field(default_factory=list)


# Feeds and graph outputs up to this size get a buffer of their own in each binding: a feed is
# copied in at the start of a run, an output copied out at the end (a 256 KiB copy is ~10 us, the
# zoo's classifier logits 4 KB well under 1 us). Their steps then read and write fixed arrays and
# are bound (``Tactic.bind``) like every inner step; an MLP at batch 1 has only such steps.
STAGE_BYTES = 1 << 18

# Prepared weights start on a cache line: an AVX-512 load of 64 bytes that straddles two lines
# costs two, and numpy's allocator (and a tensor's place in an engine file) gives only 16 or 8
# bytes. Measured on the 2-core Xeon: ``panel_rows`` at 1x512x512 7.4 us with its panels on a
# line, 10.8 us 16 bytes off; 8x512x512 15.8 vs 20.4 us.
WEIGHT_ALIGNMENT = 64


# Buffers of at least this many bytes (the arena, the weight pool) are mapped on their own,
# aligned to a 2 MiB huge page and offered to the kernel's transparent huge pages
# (``madvise(MADV_HUGEPAGE)``; in Linux's default "madvise" mode nothing else gets them). With 4
# KiB pages, a layer that walks megabytes of weights and activations misses the TLB on every
# page once the rest of the model has evicted its entries: ResNet-18 at batch 1 on a 2-core Zen 5
# ran 11.8 ms on 4 KiB pages and 9.4 ms with its buffers on huge pages (same engine file,
# ``prctl(PR_SET_THP_DISABLE)`` against the default, 2026-11-24). numpy madvises only its own
# allocations of 4 MiB and more, so an engine whose weights were many smaller arrays got huge
# pages for some and not others, and its speed moved with that from build to build.
HUGE_PAGE_BYTES = 2 << 20


def aligned_bytes(nbytes: int, alignment: int = WEIGHT_ALIGNMENT) -> np.ndarray:
    """A fresh uint8 buffer of ``nbytes`` whose first byte lies on an ``alignment`` boundary
    (numpy's allocator only promises 16 bytes); from :func:`huge_page_bytes` when it is at least
    :data:`HUGE_PAGE_BYTES`."""
    if nbytes >= HUGE_PAGE_BYTES and HUGE_PAGE_BYTES % alignment == 0 and hasattr(mmap, "MAP_PRIVATE"):
        return huge_page_bytes(nbytes)
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes]


def huge_page_bytes(nbytes: int) -> np.ndarray:
    """A fresh, zeroed uint8 buffer of ``nbytes`` in an anonymous mapping of its own, starting on
    a 2 MiB boundary and advised to the kernel as huge-page memory where the platform has
    ``MADV_HUGEPAGE`` (elsewhere plain pages: the same buffer, without the advice)."""
    # Private: Python's default for an anonymous map is MAP_SHARED, which is shared memory, whose
    # huge pages follow a separate setting that is off by default.
    mapping = mmap.mmap(
        -1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0)
    )
    raw = np.frombuffer(mapping, dtype=np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE_BYTES
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # a kernel built without transparent huge pages
            mapping.madvise(advice, start, nbytes)
    return raw[start : start + nbytes]


def pooled_weights(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Read-only copies of ``arrays`` laid out one after another in one buffer
    (:func:`aligned_bytes`: huge pages once the total is 2 MiB or more), each on a
    :data:`WEIGHT_ALIGNMENT` boundary."""
    offsets, total = [], 0
    for a in arrays:
        offsets.append(total)
        total += -(-a.nbytes // WEIGHT_ALIGNMENT) * WEIGHT_ALIGNMENT
    pool = aligned_bytes(max(total, 1))
    copies = []
    for a, offset in zip(arrays, offsets, strict=True):
        copy = pool[offset : offset + a.nbytes].view(a.dtype).reshape(a.shape)
        np.copyto(copy, a)
        copy.flags.writeable = False
        copies.append(copy)
    return copies


def aligned_weight(array: Any) -> Any:
    """``array`` read-only and, when it is a C-contiguous array of at least one line, starting on
    a :data:`WEIGHT_ALIGNMENT` boundary (copied there when it does not)."""
    if (
        not isinstance(array, np.ndarray)
        or array.nbytes < WEIGHT_ALIGNMENT
        or not array.flags.c_contiguous  # a view a tactic keeps on purpose: left as it is
        or array.ctypes.data % WEIGHT_ALIGNMENT == 0
    ):
        return _read_only(array)
    copy = aligned_bytes(array.nbytes).view(array.dtype).reshape(array.shape)
    np.copyto(copy, array)
    copy.flags.writeable = False
    return copy


def _read_only(array: Any) -> Any:
    """``array`` itself when it is a read-only ndarray (or no ndarray), else a read-only view."""
    if not isinstance(array, np.ndarray) or not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


def _nbytes(shape: Shape, dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _tuple_shape(shape: Sequence[Any] | None) -> Shape | None:
    if shape is None or not all(isinstance(d, int | np.integer) for d in shape):
        return None
    return tuple(int(d) for d in shape)


class ExecutionContext:
    """Runs an engine: holds the arena, per-shape bindings, per-node scratch and the profile."""

    def __init__(self, engine: Engine, *, threads: tuple[int | None, int | None] | None = None) -> None:
        self.engine = engine
        self._thread_args: tuple[int, int] = (1, 1)
        # (BLAS threads, numba threads) applied before each run: the engine's own tuned choice,
        # unless the caller pins one (e.g. to compare two engines under the same setting).
        self.threads = threads if threads is not None else (engine.threads, engine.numba_threads)
        self.arena = aligned_bytes(engine.plan.arena_size, engine.plan.alignment)
        # Per-context scratch: tactics keep workspaces here; prepared tensors are shared.
        self.prepared = {
            k.node.name: Prepared(k.prepared.tensors, k.prepared.params, k.prepared.replaces)
            for k in engine.kernels
        }
        # keyed by the shape signature and the thread setting: bound calls plan their parallel
        # tasks for the numba thread count they were bound under
        self._bound: dict[tuple[tuple[Shape, ...], tuple[int, int]], _BoundShapes] = {}
        self.layer_times_ms: dict[str, list[float]] = {}

    @property
    def threads(self) -> tuple[int | None, int | None]:
        """(BLAS, numba) thread counts this context applies before each run (None: the default)."""
        return self._threads

    @threads.setter
    def threads(self, value: tuple[int | None, int | None]) -> None:
        self._threads = value
        # None means the default: resolved here, once, instead of one affinity system call per
        # run (~3 us at batch 1).
        self._thread_args = resolve_threads(*value)

    # ------------------------------------------------------------------ binding
    def _dtype(self, name: str) -> np.dtype:
        return numpy_dtype(self.engine.graph.values[name].dtype or "float32")

    def _bind(self, signature: tuple[Shape, ...]) -> _BoundShapes:
        engine = self.engine
        plan = engine.plan
        shapes = engine.infer_shapes(dict(zip(engine.input_names, signature, strict=True)))
        static: dict[str, np.ndarray] = dict(engine.constants)
        allocations: list[tuple[str, Shape, np.dtype]] = []
        staged: list[str] = []
        for name, place in plan.values.items():
            shape = _tuple_shape(shapes.get(name))
            small = shape is not None and _nbytes(shape, self._dtype(name)) <= STAGE_BYTES
            if place.kind == INPUT and small and name in engine.input_names:
                static[name] = np.empty(shape, dtype=self._dtype(name))  # type: ignore[arg-type]
                staged.append(name)
            elif place.kind == OUTPUT and small:
                static[name] = np.empty(shape, dtype=self._dtype(name))  # type: ignore[arg-type]
            elif place.kind in (OUTPUT, DYNAMIC) and shape is not None:
                allocations.append((name, shape, self._dtype(name)))
            if place.kind != ARENA:
                continue
            if shape is None:
                raise RuntimeError(f"shape of {name!r} is unknown for inputs {signature}")
            dtype = self._dtype(name)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            buf = plan.buffers[place.buffer or 0]
            if nbytes > buf.size:
                raise FeedError(
                    f"tensor {name!r} needs {nbytes} bytes for inputs {signature} but the engine planned "
                    f"{buf.size}: the inputs are outside the shapes the engine was built for"
                )
            static[name] = self.arena[buf.offset : buf.offset + nbytes].view(dtype).reshape(shape)

        # Views (aliases, concat slices): made now when their storage is static, else per run.
        run_views: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            place = plan.values.get(name)
            if name in seen or place is None or place.kind not in (ALIAS, SLICE):
                return
            seen.add(name)
            assert place.of is not None
            visit(place.of)
            if place.of in static:
                static[name] = self._view(name, static[place.of], shapes)
            else:
                run_views.append(name)

        for name in plan.values:
            visit(name)

        steps = []
        by_name = {k.node.name: k.node for k in engine.kernels}
        for kernel in engine.kernels:
            node = kernel.node
            prepared = self.prepared[node.name]
            if node.name in engine.view_node_names:
                steps.append(_Step(kernel, "view", prepared, [], [], [], []))
                continue
            if node.name in plan.elided_concats:
                positions = plan.elided_concats[node.name]
                axis = plan.values[node.inputs[positions[0]]].axis or 0
                copies, start = [], 0
                for pos, name in enumerate(by_name[node.name].inputs):
                    length = shapes[name][axis]
                    if pos not in positions:
                        copies.append((pos, (slice(None),) * axis + (slice(start, start + length),)))
                    start += length
                steps.append(_Step(kernel, "concat", prepared, [], [], [], [], copies))
                continue
            if any(o and _tuple_shape(shapes.get(o)) is None for o in node.outputs):
                steps.append(_Step(kernel, "dynamic", prepared, [], [], [], []))
                continue
            ins: list[np.ndarray | None] = []
            in_patch = []
            for i, name in enumerate(run_inputs(node)):  # inputs, then If/Loop/Scan scope reads
                if not name or i in prepared.replaces:
                    ins.append(None)
                elif name in static:
                    ins.append(static[name])
                else:
                    ins.append(None)
                    in_patch.append((i, name))
            outs: list[np.ndarray | None] = []
            out_patch = []
            for i, name in enumerate(node.outputs):
                if name in static:
                    outs.append(static[name])
                else:
                    outs.append(None)
                    if name:
                        out_patch.append((i, name))
            step = _Step(kernel, "kernel", prepared, ins, outs, in_patch, out_patch)
            if not in_patch and not out_patch and binds(kernel.tactic):
                step.call = kernel.tactic.bind(node, ins, outs, prepared)  # type: ignore[arg-type]
            steps.append(step)
        results = []
        for name in engine.graph.outputs:
            out_place = plan.values.get(name)
            fresh = out_place is None or out_place.kind in (OUTPUT, DYNAMIC)
            results.append((name, fresh and name not in engine.input_names))
        return _BoundShapes(shapes, static, run_views, allocations, steps, staged=staged, results=results)

    def _view(self, name: str, base: np.ndarray, shapes: dict[str, Shape]) -> np.ndarray:
        """The view ``name`` of its storage ``base`` (a reshape, or a slice of a concat output)."""
        place = self.engine.plan.values[name]
        if place.kind == ALIAS:
            return base.reshape(shapes[name])
        node = self.engine.producer_of_concat_slice(name)
        axis = place.axis or 0
        start = sum(shapes[node.inputs[p]][axis] for p in range(place.index or 0))
        return base[(slice(None),) * axis + (slice(start, start + shapes[name][axis]),)]

    # ------------------------------------------------------------------ running
    def bound_steps(self, feeds: Mapping[str, np.ndarray]) -> list[_Step]:
        """The steps a run on feeds of these shapes makes, bound to this context's arena, in
        order: for tools that time one step alone (``benchmarks/kernels/layer_cache_state.py``).
        A step whose ``call`` is None and whose patch lists are not empty reads a feed or writes
        a fresh output, arrays that exist only inside a run."""
        _, signature = self.engine.checked_feeds(feeds)
        key = (signature, self._thread_args)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._bind(signature)
        return list(bound.steps)

    def run(self, feeds: Mapping[str, np.ndarray], *, profile: bool = False) -> dict[str, np.ndarray]:
        """Run the engine on ``feeds``; returns fresh arrays for every graph output.

        The per-run Python is kept small (at batch 1 an MLP's four layers take ~50 us in all):
        the thread counts are resolved once, feeds already seen pass a short check, and each
        step's fixed arrays were bound with the shape signature."""
        engine = self.engine
        configure_threads(*self._thread_args)
        arrays, signature = engine.checked_feeds(feeds)
        key = (signature, self._thread_args)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._bind(signature)
        static = bound.static
        env: dict[str, np.ndarray] = dict(arrays)
        for name in bound.staged:
            np.copyto(static[name], env.pop(name))
        for name, shape, dtype in bound.allocations:
            env[name] = np.empty(shape, dtype=dtype)
        for name in bound.run_views:
            of = engine.plan.values[name].of or ""
            base = env.get(of)
            if base is not None:
                env[name] = self._view(name, base, bound.shapes)

        def lookup(name: str) -> np.ndarray:
            found = env.get(name)
            return static[name] if found is None else found

        perf_counter = time.perf_counter
        for step in bound.steps:
            started = perf_counter() if profile else 0.0
            if step.call is not None:
                step.call()
            elif step.mode == "kernel":
                # A patched name is never static (``_bind``): it is a feed, a fresh output, a
                # view of one or a dynamic node's result, all in ``env``.
                ins, outs = step.ins, step.outs
                if step.in_patch:
                    ins = ins.copy()
                    for i, name in step.in_patch:
                        ins[i] = env[name]
                if step.out_patch:
                    outs = outs.copy()
                    for i, name in step.out_patch:
                        outs[i] = env[name]
                step.kernel.tactic.run(step.kernel.node, ins, outs, step.prepared)  # type: ignore[arg-type]
            elif step.mode == "concat":
                node = step.kernel.node
                out = lookup(node.outputs[0])
                for pos, index in step.copies:
                    np.copyto(out[index], lookup(node.inputs[pos]))
            elif step.mode == "dynamic":
                self._run_dynamic(step.kernel, lookup, env)
            if profile:
                self.layer_times_ms.setdefault(step.kernel.node.name, []).append(
                    (perf_counter() - started) * 1e3
                )

        result: dict[str, np.ndarray] = {}
        for name, fresh in bound.results:
            value = env.get(name)
            if value is None:
                result[name] = np.array(static[name], copy=True)
            else:
                result[name] = value if fresh else np.array(value, copy=True)
        return result

    def _run_dynamic(self, kernel: Kernel, lookup: Any, env: dict[str, np.ndarray]) -> None:
        """A node whose output size depends on data (e.g. NonZero): let the reference allocate."""
        from farm.compiler.kernels.cpu.generic import run_reference_node

        node = kernel.node
        ins = [lookup(n) if n else None for n in run_inputs(node)]
        # A tactic that can allocate its own outputs (control flow) runs; otherwise the reference.
        run_dynamic = getattr(kernel.tactic, "run_dynamic", None)
        if run_dynamic is not None:
            results = run_dynamic(node, ins, self.prepared[node.name])
        else:
            results = run_reference_node(node, ins, self.engine.graph)
        for name, value in zip(node.outputs, results, strict=False):
            if name:
                env[name] = np.asarray(value)


class Engine:
    """A compiled model: schedule of kernels with their tactics and prepared weights, memory
    plan, bindings, and the build report. Make one with :func:`farm.compiler.build` or
    :meth:`Engine.load`."""

    def __init__(
        self,
        *,
        graph: Graph,
        kernels: list[Kernel],
        plan: MemoryPlan,
        inputs: list[Binding],
        outputs: list[Binding],
        fingerprint: dict[str, Any],
        profile: str,
        precision: str,
        report: dict[str, Any],
        threads: int | None = None,
        numba_threads: int | None = None,
    ) -> None:
        self.graph = graph
        self.kernels = kernels
        self.plan = plan
        self.inputs = inputs
        self.outputs = outputs
        self.fingerprint = fingerprint
        self.profile = profile
        self.precision = precision
        self.report = report
        # BLAS and numba thread counts (None: BLAS on the calling thread, numba on every core).
        self.threads = threads
        self.numba_threads = numba_threads
        self.input_names = [b.name for b in inputs]
        self.output_names = [b.name for b in outputs]
        self.view_node_names = frozenset(plan.view_nodes)
        # Weights are read-only in every engine, built or loaded (a loaded one's are views of the
        # file): the kernels see the same array types either way, so numba compiles (and caches)
        # one specialization per kernel, not a writable one at build and a read-only one at load.
        # They also start on a cache line (:func:`aligned_weight`), and the C-contiguous ones live
        # in one pool on huge pages when they add up to 2 MiB or more (:data:`HUGE_PAGE_BYTES`).
        for k in kernels:
            k.prepared.tensors = {name: aligned_weight(a) for name, a in k.prepared.tensors.items()}
        poolable = [
            (k.prepared.tensors, name)
            for k in kernels
            for name, a in k.prepared.tensors.items()
            if isinstance(a, np.ndarray) and a.nbytes >= WEIGHT_ALIGNMENT and a.flags.c_contiguous
        ]
        if sum(tensors[name].nbytes for tensors, name in poolable) >= HUGE_PAGE_BYTES:
            copies = pooled_weights([tensors[name] for tensors, name in poolable])
            for (tensors, name), copy in zip(poolable, copies, strict=True):
                tensors[name] = copy
        self.constants = {
            k: _read_only(v.const)
            for k, v in graph.values.items()
            if v.const is not None and k not in graph.inputs
        }
        self._slice_parent: dict[str, Node] = {}
        nodes = {k.node.name: k.node for k in kernels}
        for cname, positions in plan.elided_concats.items():
            for p in positions:
                self._slice_parent[nodes[cname].inputs[p]] = nodes[cname]
        self._shape_cache: dict[tuple[tuple[str, Shape], ...], dict[str, Shape]] = {}
        self._input_dtypes = [numpy_dtype(b.dtype) for b in inputs]
        self._input_checks = list(zip(self.input_names, self._input_dtypes, strict=True))
        self._valid_signatures: set[tuple[Shape, ...]] = set()  # input shapes already checked
        self._context: ExecutionContext | None = None

    # ------------------------------------------------------------------ persistence
    def save(self, path: Any) -> None:
        """Write the engine to ``path`` (one safetensors file with the manifest in its metadata)."""
        from farm.compiler.engine.format import write_engine

        write_engine(self, path)

    def to_bytes(self) -> bytes:
        """The engine file's bytes."""
        from farm.compiler.engine.format import engine_to_bytes

        return engine_to_bytes(self)

    @staticmethod
    def load(path: Any, *, allow_device_mismatch: bool = False) -> Engine:
        """Read an engine file. Refuses one built for another device unless ``allow_device_mismatch``;
        raises :class:`EngineFormatError` for a corrupted, truncated or foreign file."""
        from farm.compiler.engine.format import read_engine

        return read_engine(path, allow_device_mismatch=allow_device_mismatch)

    @staticmethod
    def from_bytes(data: bytes, *, allow_device_mismatch: bool = False) -> Engine:
        """Like :meth:`load`, from the file's bytes."""
        from farm.compiler.engine.format import engine_from_bytes

        return engine_from_bytes(data, allow_device_mismatch=allow_device_mismatch)

    # ------------------------------------------------------------------ running
    def create_context(self, *, threads: tuple[int | None, int | None] | None = None) -> ExecutionContext:
        """A new execution context (its own arena): one per concurrent caller. ``threads`` pins
        (BLAS, numba) thread counts instead of the engine's tuned choice."""
        return ExecutionContext(self, threads=threads)

    @property
    def context(self) -> ExecutionContext:
        """The engine's default execution context, made on first use."""
        if self._context is None:
            self._context = ExecutionContext(self)
        return self._context

    def run(self, feeds: Mapping[str, np.ndarray], *, profile: bool = False) -> dict[str, np.ndarray]:
        """Run on ``{input name: array}`` and return ``{output name: array}``.

        Any shape inside the declared ranges works without rebuilding. ``profile=True`` records
        per-layer times in ``engine.context.layer_times_ms``.
        """
        return self.context.run(feeds, profile=profile)

    def producer_of_concat_slice(self, name: str) -> Node:
        """The elided Concat whose output buffer holds value ``name``."""
        return self._slice_parent[name]

    def validate_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes, ranks and dims against the bindings; return contiguous arrays
        in binding order. Raises :class:`FeedError` with every problem found."""
        return self.checked_feeds(feeds)[0]

    def checked_feeds(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], tuple[Shape, ...]]:
        """:meth:`validate_feeds` and the shape signature of the arrays it returns."""
        fast = self._validate_fast(feeds)
        if fast is not None:
            return fast
        arrays = self._validate_full(feeds)
        signature = tuple(a.shape for a in arrays.values())
        self._valid_signatures.add(signature)
        return arrays, signature

    def _validate_full(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every check, every problem reported (see :meth:`validate_feeds`)."""
        problems = []
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing:
            problems.append(f"missing input(s) {missing}")
        if unknown:
            problems.append(f"unknown input(s) {unknown} (the engine's inputs are {self.input_names})")
        arrays: dict[str, np.ndarray] = {}
        for b in self.inputs:
            if b.name not in feeds:
                continue
            array = np.asarray(feeds[b.name])
            want = numpy_dtype(b.dtype)
            if array.dtype != want:
                problems.append(f"input {b.name!r} has dtype {array.dtype}, expected {want}")
            elif array.ndim != len(b.shape):
                problems.append(
                    f"input {b.name!r} has rank {array.ndim} (shape {list(array.shape)}), expected rank "
                    f"{len(b.shape)} ({b.shape})"
                )
            else:
                bad = [
                    f"dim {i} is {d}, allowed {lo}..{hi}"
                    for i, (d, lo, hi) in enumerate(zip(array.shape, b.min_shape, b.max_shape, strict=True))
                    if not lo <= d <= hi
                ]
                if bad:
                    problems.append(
                        f"input {b.name!r} has shape {list(array.shape)} outside the engine's range "
                        f"{b.min_shape}..{b.max_shape}: {'; '.join(bad)}"
                    )
            arrays[b.name] = array if array.flags.c_contiguous else np.array(array, order="C")
        if problems:
            raise FeedError("invalid feeds: " + "; ".join(problems))
        return arrays

    def _validate_fast(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], tuple[Shape, ...]] | None:
        """The common case in a serving loop: the same names, dtypes and shapes as an earlier,
        fully checked call, contiguous arrays. None means: do the full check."""
        if len(feeds) != len(self.input_names):
            return None
        arrays = {}
        shapes = []
        for name, dtype in self._input_checks:
            array = feeds.get(name)
            if type(array) is not np.ndarray:
                return None
            # ``is`` first: numpy's built-in dtypes are singletons, ``==`` costs ~0.2 us
            if (array.dtype is not dtype and array.dtype != dtype) or not array.flags.c_contiguous:
                return None
            arrays[name] = array
            shapes.append(array.shape)
        signature = tuple(shapes)
        if signature not in self._valid_signatures:
            return None
        return arrays, signature

    def seed_shapes(self, table: Mapping[tuple[tuple[str, Shape], ...], dict[str, Shape]]) -> None:
        """Pre-fill the shape cache (the loader passes the shapes recorded at build time)."""
        self._shape_cache.update(table)

    def infer_shapes(self, input_shapes: dict[str, Shape]) -> dict[str, Shape]:
        """Concrete shapes of every value for these input shapes (cached per signature)."""
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        cached = self._shape_cache.get(key)
        if cached is not None:
            return cached
        static = {k: _tuple_shape(v.shape) for k, v in self.graph.values.items()}
        if all(static.get(k) == s for k, s in input_shapes.items()) and all(
            s is not None for s in static.values()
        ):
            shapes = {k: s for k, s in static.items() if s is not None}
        else:
            from farm.compiler.frontend.shape_inference import infer_shapes

            graph = self.graph.copy()
            infer_shapes(graph, {k: tuple(v) for k, v in input_shapes.items()})  # in place
            shapes = {}
            for k, v in graph.values.items():
                shape = _tuple_shape(v.shape)
                if shape is not None:
                    shapes[k] = shape
        self._shape_cache[key] = shapes
        return shapes

    def describe_layers(self) -> list[dict[str, Any]]:
        """One row per scheduled node: name, op, tactic, precision, output shapes, how it runs."""
        rows = []
        for k in self.kernels:
            node = k.node
            if node.name in self.view_node_names:
                mode = "view"
            elif node.name in self.plan.elided_concats:
                mode = "elided concat"
            elif node.name in self.plan.inplace_nodes:
                mode = "in place"
            else:
                mode = "kernel"
            rows.append(
                {
                    "name": node.name,
                    "op_type": node.op_type,
                    "tactic": k.tactic.name,
                    "precision": node.precision or self.precision,
                    "outputs": {o: list(self.graph.values[o].shape or []) for o in node.outputs if o},
                    "mode": mode,
                    "timings_ms": k.timings_ms,
                }
            )
        return rows

    def __repr__(self) -> str:
        return (
            f"Engine({self.graph.name!r}: {len(self.kernels)} kernels, inputs={self.input_names}, "
            f"arena={self.plan.arena_size} B, profile={self.profile!r}, precision={self.precision!r})"
        )


__all__ = ["ARENA", "CONST", "INPUT", "Binding", "Engine", "ExecutionContext", "FeedError", "Kernel"]
