"""``build()``: ONNX (or IR) in, an :class:`Engine` out.

load → optimize → resolve the input shape ranges → infer shapes (tuning shapes and largest
shapes) → autotune every node → prepare the chosen tactics → plan memory → Engine with its
build report.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from farm.compiler import __version__ as COMPILER_VERSION
from farm.compiler.engine.fingerprint import device_fingerprint, fingerprint_id
from farm.compiler.engine.runtime import Binding, Engine, Kernel
from farm.compiler.ir import Graph
from farm.compiler.kernels.registry import get_tactic
from farm.compiler.kernels.threads import available_cores
from farm.compiler.memory import MemoryPlan, plan_memory
from farm.compiler.precision.half_model import widen_half_model
from farm.compiler.tuner import (
    JsonTimingCache,
    MemoryTimingCache,
    NodeChoice,
    TimingCache,
    TimingRecord,
    TunerSettings,
    random_graph_inputs,
    timing_key,
    tune,
)
from farm.compiler.tuner.cold_cache import ColdCache
from farm.compiler.tuner.in_engine import InEngineResult, refine_in_engine
from farm.compiler.tuner.threads import choose_thread_counts, parse_thread_label, thread_label

# (min, opt, max) batch when the model's batch dim is symbolic and no range is given.
DEFAULT_BATCH_RANGE = (1, 1, 8)
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "best")

Progress = Callable[[str, int, int, str], None]
"""``progress(stage, done, total, detail)``; stages: load, optimize, tune, plan."""


class BuildError(RuntimeError):
    """The model cannot be built as asked (unresolved dims, unknown profile, bad config)."""


@dataclass
class BuilderConfig:
    """How to build an engine.

    ``tuning_level``: 0 = heuristic tactic choice, no timing; 1-3 = more timed runs per tactic.
    ``time_budget_s``: past this much tuning time the remaining nodes are chosen heuristically.
    ``timing_cache``: a :class:`TimingCache`, or a path to a JSON timing-cache file.
    ``batch_range``: (min, opt, max) for the models' symbolic batch dimension; tuned at opt,
    memory planned for max. ``input_shapes``: fixed shapes per input name (like ``--shapes``);
    a symbolic batch dim still follows ``batch_range`` when one is given.
    ``disabled_passes``: optimization passes to skip, by name. ``disabled_tactics``: tactic name
    globs the tuner never chooses for the graph's nodes (``"cpu.conv.winograd*"``; trtexec's
    ``--tacticSources``); a node left with none is an error. ``threads``: cores the engine
    runs on, in numba's pool with BLAS on the calling thread (default: every available core, and
    the builder times one pool against BLAS's own pool and one thread and keeps the fastest).
    ``cold_timing``: time each tactic with its weights out of the CPU's cache (True), hot
    (False), or cold exactly when the model's weights exceed the last-level cache (None, the
    default: then every run of the engine reads them from memory; see ``tuner.cold_cache``).
    ``in_engine_tuning``: settle close calls between a layer's tactics by timing them inside
    the whole engine (``tuner.in_engine``; on by default at tuning levels 1-3 on the CPU).

    Precision (see ``farm.compiler.precision`` and docs/PRECISION.md): ``precision`` allows that
    precision (TensorRT's meaning: the tuner picks the fastest allowed tactic per layer);
    ``strict`` obeys it exactly; ``layer_precision`` pins layers by name glob
    (``{"conv1*": "fp32"}`` or ``["conv1*=fp32"]``). INT8 scales come from ``calibration`` (an
    ``.npz`` path, a mapping of sample arrays, or an iterable of feed dicts) through
    ``calibrator`` (minmax, percentile, entropy, mse), cached in ``calibration_cache``;
    ``calibration_limit`` caps the samples used. ``accuracy_budget`` (e.g. ``"cosine>=0.999"``)
    with ``validation`` data makes the build keep the fewest layers in higher precision that
    meet it.
    """

    tuning_level: int = 1
    time_budget_s: float | None = None
    timing_cache: TimingCache | str | os.PathLike[str] | None = None
    disabled_passes: Sequence[str] = ()
    disabled_tactics: Sequence[str] = ()
    batch_range: tuple[int, int, int] | None = None
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    precision: str = "fp32"
    optimize: bool = True
    threads: int | None = None
    cold_timing: bool | None = None
    in_engine_tuning: bool = True
    seed: int = 0
    strict: bool = False
    layer_precision: Mapping[str, str] | Sequence[str] = field(default_factory=dict)
    calibration: Any = None
    calibrator: str = "entropy"
    calibration_cache: str | os.PathLike[str] | None = None
    calibration_limit: int | None = None
    accuracy_budget: str | None = None
    validation: Any = None

    def cache(self) -> TimingCache:
        """The timing cache object this config names."""
        if self.timing_cache is None:
            return MemoryTimingCache()
        if isinstance(self.timing_cache, str | os.PathLike):
            return JsonTimingCache(self.timing_cache)
        return self.timing_cache


def backend_for_profile(profile: str) -> str:
    """The kernel backend a hardware profile builds for (``cpu`` or ``cuda``)."""
    if profile == "cpu" or profile.startswith("cpu-"):
        return "cpu"
    if profile.startswith("nvidia-") or profile == "cuda":
        return "cuda"
    raise BuildError(f"unknown profile {profile!r}; use 'cpu' or an 'nvidia-*' profile")


def load_model(model: str | Path | bytes | Any) -> Graph:
    """The IR graph of ``model``: a path, ONNX bytes, an ``onnx.ModelProto`` or a Graph (copied)."""
    if isinstance(model, Graph):
        return model.copy()
    from farm.compiler.frontend import load_onnx

    if isinstance(model, str | Path):
        return load_onnx(model)
    if isinstance(model, bytes | bytearray):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise BuildError(
            f"cannot build from a {type(model).__name__}: give a path, bytes, a ModelProto or a Graph"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        return load_onnx(path)


def pin_static_inputs(graph: Graph, config: BuilderConfig) -> tuple[Graph, dict[str, list[int]]]:
    """When every input's shape range is one shape (``--shapes``, a batch range of one size), the
    graph with its symbolic input dims replaced by those sizes, and the pinned shapes.

    The shape arithmetic exporters leave in models (``Shape -> Gather -> Concat -> Expand`` for a
    ViT's class token, position ids sliced to the sequence length) then folds into constants
    before the passes run, as in TensorRT's static-shape engines, instead of running as a chain
    of small kernels on every inference. Kept symbolic (the graph returned unchanged): an engine
    whose ranges allow more than one shape; a build that calibrates INT8 or searches an accuracy
    budget (both run the graph on batches of their data, of any size); a graph whose ranges
    cannot be resolved (the build reports that later with its own message)."""
    if config.calibration is not None or config.accuracy_budget is not None:
        return graph, {}
    try:
        bindings = resolve_bindings(graph, config)
    except BuildError:
        return graph, {}
    if any(b.min_shape != b.max_shape for b in bindings):
        return graph, {}
    shapes = {b.name: list(b.min_shape) for b in bindings if list(b.shape) != list(b.min_shape)}
    if not shapes:
        return graph, {}
    from farm.compiler.frontend import infer_shapes

    infer_shapes(graph, {name: tuple(shape) for name, shape in shapes.items()})  # the build's own copy
    return graph, shapes


def _optimize(graph: Graph, disabled: Sequence[str]) -> tuple[Graph, dict[str, Any] | None]:
    from farm.compiler.passes import optimize

    params = inspect.signature(optimize).parameters
    if disabled and "disabled" not in params:
        raise BuildError("this compiler's optimize() cannot disable passes")
    result = optimize(graph, disabled=list(disabled)) if "disabled" in params else optimize(graph)
    new_graph, report = result
    return new_graph, dict(report.to_dict(), lines=report.lines())


def resolve_bindings(graph: Graph, config: BuilderConfig) -> list[Binding]:
    """Min/opt/max shapes of every graph input from the model, ``input_shapes`` and ``batch_range``.

    Symbolic dims are bound by name across all inputs: a symbol at axis 0 of some input is a batch
    symbol and follows ``batch_range`` (default 1:1:8) wherever it appears, e.g. at axis 1 of an
    RNN's initial state ``h0[layers, batch, hidden]``; a size given for a symbol by ``input_shapes``
    in one input binds it in the others. With both, ``batch_range`` wins for batch symbols.
    """
    unknown = sorted(set(config.input_shapes) - set(graph.inputs))
    if unknown:
        raise BuildError(f"--shapes names unknown input(s) {unknown}; the model's inputs are {graph.inputs}")
    if (
        config.batch_range is not None
        and not config.batch_range[0] <= config.batch_range[1] <= config.batch_range[2]
    ):
        raise BuildError(f"batch range {config.batch_range} must satisfy min <= opt <= max")
    declared_shapes: dict[str, list[int | str] | None] = {}
    bases: dict[str, list[int | str]] = {}
    for name in graph.inputs:
        value = graph.values[name]
        declared = list(value.shape) if value.shape is not None else None
        given = config.input_shapes.get(name)
        if declared is None and given is None:
            raise BuildError(f"input {name!r} has no known rank; give its shape with --shapes {name}:1x...")
        base: list[int | str] = list(given) if given is not None else list(declared or [])
        if declared is not None and len(base) != len(declared):
            raise BuildError(f"--shapes gives {name!r} rank {len(base)}, the model declares {declared}")
        if declared is not None and given is not None:
            clashes = [
                f"axis {axis} is {decl}, not {dim}"
                for axis, (dim, decl) in enumerate(zip(base, declared, strict=True))
                if isinstance(dim, int) and dim >= 0 and isinstance(decl, int) and decl >= 0 and dim != decl
            ]
            if clashes:
                shown = "x".join(str(d) for d in base)
                raise BuildError(
                    f"--shapes gives {name!r} the shape {shown}, but the model fixes {name!r} to "
                    f"{declared}: {'; '.join(clashes)}. Only its symbolic axes can be chosen."
                )
        declared_shapes[name], bases[name] = declared, base
    batch_symbols = {d[0] for d in declared_shapes.values() if d and isinstance(d[0], str)}
    bound: dict[str, tuple[int, int, int]] = {}
    if config.batch_range is not None:
        bound.update(dict.fromkeys(batch_symbols, config.batch_range))
    for name, base in bases.items():  # sizes given with --shapes bind their symbol everywhere
        for dim, decl in zip(base, declared_shapes[name] or [], strict=False):
            if isinstance(dim, int) and dim >= 0 and isinstance(decl, str) and decl not in bound:
                bound[decl] = (dim, dim, dim)
    for batch_symbol in batch_symbols:
        bound.setdefault(batch_symbol, DEFAULT_BATCH_RANGE)

    bindings = []
    for name in graph.inputs:
        declared, base = declared_shapes[name], bases[name]
        lo: list[int] = []
        opt: list[int] = []
        hi: list[int] = []
        for axis, dim in enumerate(base):
            declared_dim = declared[axis] if declared is not None else dim
            symbol = declared_dim if isinstance(declared_dim, str) else None
            if (
                symbol is not None
                and symbol in bound
                and (symbol in batch_symbols or not isinstance(dim, int))
            ):
                low, mid, high = bound[symbol]
            elif isinstance(dim, int) and dim >= 0:
                low = mid = high = dim
            else:
                example = "x".join(
                    str(d) if isinstance(d, int) else ("1" if i == 0 else f"<{d}>")
                    for i, d in enumerate(base)
                )
                raise BuildError(
                    f"input {name!r} has symbolic dim {dim!r} at axis {axis}; give its size with --shapes "
                    f"{name}:{example} (BuilderConfig.input_shapes)"
                )
            lo.append(low)
            opt.append(mid)
            hi.append(high)
        shape = declared if declared is not None else base
        bindings.append(Binding(name, graph.values[name].dtype or "float32", list(shape), lo, opt, hi))
    return bindings


def shaped_copy(graph: Graph, shapes: Mapping[str, Sequence[int]]) -> Graph:
    """A copy of ``graph`` with every value's shape inferred for concrete input ``shapes``."""
    copy = graph.copy()
    if all(tuple(copy.values[k].shape or ()) == tuple(v) for k, v in shapes.items()) and all(
        v.is_static for v in copy.values.values()
    ):
        return copy  # already concrete (e.g. a hand-built static graph)
    from farm.compiler.frontend import infer_shapes

    infer_shapes(copy, {k: tuple(v) for k, v in shapes.items()})  # in place
    return copy


def _output_bindings(graph: Graph, shaped: dict[str, Graph]) -> list[Binding]:
    bindings = []
    for name in graph.outputs:
        value = graph.values[name]
        # -1: a dim that depends on the data (a Loop's scan outputs, NonZero), known only at run time.
        per = {
            k: [d if isinstance(d, int) else -1 for d in g.values[name].shape or []]
            for k, g in shaped.items()
        }
        bindings.append(
            Binding(
                name,
                value.dtype or "float32",
                list(value.shape or per["max"]),
                per["min"],
                per["opt"],
                per["max"],
            )
        )
    return bindings


def build(
    model: str | Path | bytes | Any,
    profile: str = "cpu",
    config: BuilderConfig | None = None,
    *,
    progress: Progress | None = None,
) -> Engine:
    """Compile ``model`` (path, ONNX bytes, ModelProto or IR Graph) for ``profile``.

    Steps: load, optimize (the pass pipeline), resolve input shape ranges, autotune every node
    at the opt shapes (timing cache aware), prepare the chosen tactics, plan the arena for the
    max shapes. The returned engine carries a build report (``engine.report``).
    """
    config = config or BuilderConfig()
    from farm.compiler import precision as precision_lowering

    if config.accuracy_budget is not None:
        return precision_lowering.build_with_budget(model, profile, config, build, progress=progress)
    try:
        policy = precision_lowering.PrecisionPolicy(
            config.precision,
            config.strict,
            dict(precision_lowering.parse_layer_precision(config.layer_precision)),
        )
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    backend = backend_for_profile(profile)
    notify = progress or (lambda stage, done, total, detail: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    notify("load", 0, 1, "loading model")
    graph = load_model(model)
    explicit = precision_lowering.extract_qdq(graph)
    half_model = widen_half_model(graph) if backend == "cpu" else {}
    graph, pinned = pin_static_inputs(graph, config)
    timings["load_s"] = time.perf_counter() - started

    t = time.perf_counter()
    passes_report = None
    if config.optimize:
        notify("optimize", 0, 1, "optimizing")
        graph, passes_report = _optimize(graph, config.disabled_passes)
        # The pass manager has no callback; report each pass (and what it changed) as it finished.
        passes = (passes_report or {}).get("passes", [])
        for index, entry in enumerate(passes, 1):
            notify("optimize", index, len(passes), f"{entry['name']}: {entry.get('changed', 0)} changes")
    else:
        notify("optimize", 1, 1, "optimization disabled")
    timings["optimize_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        precision_plan = precision_lowering.plan_precisions(
            graph, policy, explicit=explicit, calibration=config.calibration, calibrator=config.calibrator,
            calibration_cache=config.calibration_cache, calibration_limit=config.calibration_limit,
        )  # fmt: skip
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    timings["calibrate_s"] = time.perf_counter() - t

    inputs = resolve_bindings(graph, config)
    shaped = {
        which: shaped_copy(graph, {b.name: getattr(b, f"{which}_shape") for b in inputs})
        for which in ("min", "opt", "max")
    }
    outputs = _output_bindings(graph, shaped)

    t = time.perf_counter()
    fingerprint = device_fingerprint(backend)
    from farm.compiler.kernels.threads import configure_threads

    configure_threads(1, config.threads)
    cache = config.cache()
    settings = TunerSettings(
        level=config.tuning_level,
        time_budget_s=config.time_budget_s,
        cache=cache,
        backend=backend,
        precisions=policy.allowed,
        fingerprint_id=fingerprint_id(fingerprint),
        node_precisions=precision_plan.node_precisions,
        reduced_reference=precision_lowering.emulated_reference,
        disabled_tactics=tuple(config.disabled_tactics),
    )
    tune_graph = shaped["opt"]
    settings.cold = ColdCache.for_graph(tune_graph, backend, config.cold_timing)
    plan_graph = shaped["max"]
    feeds = random_graph_inputs(tune_graph, {b.name: b.opt_shape for b in inputs}, seed=config.seed)
    # The runtime needs the graph with its symbolic shapes; dtypes come from inference.
    for name, value in graph.values.items():
        if value.dtype is None:
            value.dtype = plan_graph.values[name].dtype

    # (node, tactic) -> what ``prepare`` made: the engines in-engine tuning assembles share the
    # prepared weights of the layers they have in common (contexts keep their own scratch).
    prepared_by_choice: dict[tuple[str, str], Any] = {}

    def assemble(node_choices: list[NodeChoice]) -> tuple[list[Kernel], MemoryPlan]:
        """Prepare the chosen tactics and plan the arena for the max shapes."""
        tune_nodes = {n.name: n for n in tune_graph.nodes}
        kernels = []
        for node, choice in zip(graph.nodes, node_choices, strict=True):
            tactic = get_tactic(choice.tactic)
            prepared = prepared_by_choice.get((node.name, tactic.name))
            if prepared is None:
                prepared = tactic.prepare(tune_nodes[node.name], tune_graph)
                prepared.scratch.clear()
                prepared_by_choice[node.name, tactic.name] = prepared
            kernels.append(Kernel(node, tactic, prepared, dict(choice.timings_ms)))
        plan_nodes = {n.name: n for n in plan_graph.nodes}
        return kernels, plan_memory(plan_graph, [(plan_nodes[k.node.name], k.tactic) for k in kernels])

    def make_engine(kernels: list[Kernel], plan: MemoryPlan, report: dict[str, Any]) -> Engine:
        return Engine(graph=graph, kernels=kernels, plan=plan, inputs=inputs, outputs=outputs,
                      fingerprint=fingerprint, profile=profile, precision=config.precision, report=report,
                      threads=1, numba_threads=config.threads)  # fmt: skip

    # Tactics are timed under the default setting (one pool: numba at every core, BLAS on the
    # calling thread), then the tuned schedule is timed whole under each thread setting and the
    # fastest is kept. Choosing the setting first, on the heuristic schedule, picked BLAS's pool
    # for MobileNet at batch 1 (its heuristic tactics are BLAS GEMMs), and the tactics tuned under
    # that setting ran 5.9 ms where those tuned under one pool ran 3.8 ms.
    t = time.perf_counter()
    choices = tune(
        tune_graph,
        feeds,
        settings,
        progress=lambda done, total, name: notify("tune", done, total, name),
    )
    notify("tune", len(choices), len(choices), "tuned")
    timings["tune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    in_engine = InEngineResult("off")
    if config.time_budget_s is not None and timings["tune_s"] > config.time_budget_s:
        in_engine = InEngineResult("skipped: tuning used the time budget")
    elif config.in_engine_tuning and backend == "cpu" and config.tuning_level > 0:
        notify("in-engine", 0, 1, "timing close calls inside the engine")
        choices, in_engine = refine_in_engine(
            choices,
            make_engine=lambda node_choices: make_engine(*assemble(node_choices), {}),
            feeds=feeds,
            cache=settings.cache,
            fingerprint_id=settings.fingerprint_id,
            signature=_schedule_signature(choices, tune_graph),
            precision_of=lambda name: (get_tactic(name).precisions or ("fp32",))[0],
            level=config.tuning_level,
            heartbeat=lambda: notify("in-engine", 0, 1, "timing close calls inside the engine"),
        )
        notify("in-engine", 1, 1, f"{len(in_engine.changed)} layers changed ({in_engine.source})")
    timings["in_engine_s"] = time.perf_counter() - t

    precision_report = precision_plan.finalize(graph, choices, backend)

    t = time.perf_counter()
    kernels, plan = assemble(choices)
    notify("plan", 1, 1, "memory planned")
    timings["plan_s"] = time.perf_counter() - t

    t = time.perf_counter()
    notify("threads", 0, 1, "timing the whole schedule")
    thread_choice = _choose_threads(
        choices, config, settings, tune_graph, feeds, lambda: make_engine(kernels, plan, {})
    )
    configure_threads(thread_choice["blas"], thread_choice["numba"])
    notify("threads", 1, 1, thread_choice["source"])
    timings["threads_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    hits = sum(c.cache_hits for c in choices)
    misses = sum(c.cache_misses for c in choices)
    report = {
        "model": graph.name,
        "profile": profile,
        "backend": backend,
        "precision": config.precision,
        "tuning_level": config.tuning_level,
        "shapes": {b.name: {"min": b.min_shape, "opt": b.opt_shape, "max": b.max_shape} for b in inputs},
        "pinned_shapes": pinned,
        "passes": passes_report,
        "nodes": [c.to_json() for c in choices],
        "rejected": [
            {"node": c.node, "op_type": c.op_type, "tactic": tactic, "reason": reason}
            for c in choices
            for tactic, reason in c.rejected.items()
        ],
        "timing_cache": {"hits": hits, "misses": misses},
        "in_engine": in_engine.to_json(),
        "cache_state": settings.cold.describe(tune_graph) if settings.cold is not None else {"state": "warm"},
        "precision_layers": precision_report,
        "half_model": half_model,
        "memory": plan.summary(),
        "timings": timings,
    }
    report["threads"] = thread_choice
    engine = make_engine(kernels, plan, report)
    engine.threads, engine.numba_threads = thread_choice["blas"], thread_choice["numba"]
    return engine


# Rounds of whole-schedule runs per tuning level when choosing thread counts.
THREAD_ROUNDS = {1: 3, 2: 5, 3: 9}


def _schedule_signature(choices: Sequence[NodeChoice], tune_graph: Graph) -> dict[str, Any]:
    """What identifies a tuned schedule in the timing cache: each node's op, tactic and output
    shapes, and the cores it runs on."""
    nodes = {n.name: n for n in tune_graph.nodes}
    return {
        "schedule": [
            [
                c.op_type,
                c.tactic,
                [list(tune_graph.values[o].shape or []) for o in nodes[c.node].outputs if o],
            ]
            for c in choices
        ],
        "cores": available_cores(),
    }


def _choose_threads(
    choices: list[NodeChoice],
    config: BuilderConfig,
    settings: TunerSettings,
    tune_graph: Graph,
    feeds: dict[str, np.ndarray],
    make_engine: Callable[[], Engine],
) -> dict[str, Any]:
    """Pick BLAS/numba thread counts by timing the complete engine that ``choices`` make
    (cached like tactic timings: a warm rebuild neither builds nor runs it)."""
    cores = available_cores()
    if config.threads is not None or config.tuning_level <= 0 or cores <= 1:
        return {"blas": 1, "numba": config.threads, "source": "config"}
    key = timing_key(
        settings.fingerprint_id,
        COMPILER_VERSION,
        _schedule_signature(choices, tune_graph),
        "schedule.threads",
    )
    cached = settings.cache.get(key)
    if cached is not None and cached.valid:
        blas, numba = parse_thread_label(cached.tactic)
        return {"blas": blas, "numba": numba, "source": "cache", "timings_ms": {}}
    engine = make_engine()
    context = engine.create_context()

    def run_with(blas: int, numba: int) -> None:
        # a context applies its own setting before every run (fixed when it was created)
        context.threads = (blas, numba)
        context.run(feeds)

    choice = choose_thread_counts(
        run_with,
        cores,
        rounds=THREAD_ROUNDS.get(min(config.tuning_level, 3), 3),
        availability=_round_availability(cores),
    )
    (blas, numba), timings_ms = choice.setting, choice.timings_ms
    evidence = {"rounds": choice.rounds, "rounds_with_every_core": choice.clean_rounds}
    if choice.contended:
        # The machine lent a core elsewhere for the whole timing: keep the default, and cache
        # nothing, so that the next build on a quieter machine times the setting again.
        return {"blas": blas, "numba": numba, "source": "default (cores busy while timing)",
                "timings_ms": timings_ms, **evidence}  # fmt: skip
    # The record's tactic name is the chosen setting, e.g. "blas=1,numba=2".
    label = thread_label(blas, numba)
    settings.cache.put(key, TimingRecord(label, timings_ms[label], True, len(timings_ms)))
    settings.cache.flush()
    return {"blas": blas, "numba": numba, "source": "timed", "timings_ms": timings_ms, **evidence}


def _round_availability(cores: int) -> Callable[[], float]:
    """The CPU probe of how much of every core the machine lent over each round of thread timing
    (imported late: it compiles a numba kernel, which a build without thread timing never needs)."""
    from farm.compiler.kernels.cpu._core_probe import round_availability

    return round_availability(cores)


def batch_axes(inputs: Sequence[Binding]) -> dict[str, list[int]]:
    """The axes of each input that carry the batch: axis 0 wherever its size may vary, and every
    other axis declared with the same symbol (an RNN state ``h0[layers, batch, hidden]``)."""
    symbols = {
        b.shape[0]
        for b in inputs
        if b.shape and isinstance(b.shape[0], str) and b.min_shape[0] != b.max_shape[0]
    }
    axes: dict[str, list[int]] = {}
    for b in inputs:
        found = [
            axis
            for axis, dim in enumerate(b.shape)
            if b.min_shape[axis] != b.max_shape[axis]
            and (axis == 0 or (isinstance(dim, str) and dim in symbols))
        ]
        axes[b.name] = found
    return axes


def batched_shapes(inputs: Sequence[Binding], batch: int | None) -> dict[str, list[int]]:
    """Each input's opt shape, with its batch axes (:func:`batch_axes`) set to ``batch`` when given.
    Raises ValueError when ``batch`` is outside an input's declared range."""
    axes = batch_axes(inputs)
    shapes = {}
    for b in inputs:
        shape = list(b.opt_shape)
        if batch is None:
            shapes[b.name] = shape
            continue
        for axis in axes[b.name]:
            if not b.min_shape[axis] <= batch <= b.max_shape[axis]:
                raise ValueError(
                    f"batch {batch} is outside the engine's range {b.min_shape[axis]}..{b.max_shape[axis]} "
                    f"for {b.name!r} (axis {axis})"
                )
            shape[axis] = batch
        shapes[b.name] = shape
    return shapes


def random_feeds(engine: Engine, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``engine`` at its opt shapes (or with the batch axes set to ``batch``)."""
    return random_graph_inputs(engine.graph, batched_shapes(engine.inputs, batch), seed=seed)
