"""Compile the CPU backend's kernels before the first real build needs them.

numba compiles a kernel the first time it is called with a new signature and keeps the machine
code in its on-disk cache, keyed by the kernel's source and this CPU. On a new host, or after an
upgrade (a new cache folder: :mod:`farm.compiler.engine.numba_support`), the first build pays for
every kernel its tuner tries: about 4.5 minutes for a small ResNet on a 2-core host
(docs/KERNELS.md, "Compile time with a cold cache"), time that a CI pipeline waiting on the
job sees as a slow farm.

:func:`warm_up` builds each zoo model once, at batch 1 and tuning level 1, into an engine it
throws away. Level 1 validates every tactic that supports a node, so every such kernel is
compiled (or loaded from the cache) for the argument types real models give it: numba
specializes on dtypes, ranks and layouts, not on shapes. The timings go to a throwaway
in-memory timing cache, never to the farm's. INT8 builds calibrate on a few random samples
(their scales are not kept). ``farm warmup`` runs it from the command line; a worker runs it
before it serves jobs when ``FARM_WORKER_WARMUP`` is set (docker-compose.yml sets it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODELS = ("mlp", "resnet", "mobilenet", "bert", "vit", "crnn", "gru_stream")
DEFAULT_PRECISIONS = ("fp32", "int8")
CALIBRATION_SAMPLES = 4


@dataclass
class WarmupStep:
    """One throwaway build: which model and precision, how long, and what numba did."""

    model: str
    precision: str
    seconds: float
    compiled: int  # kernel signatures numba compiled (not found in its cache)
    loaded: int  # kernel signatures numba loaded from its cache
    error: str | None = None


@dataclass
class WarmupReport:
    """Every step of a warm-up, in order."""

    steps: list[WarmupStep] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def compiled(self) -> int:
        return sum(s.compiled for s in self.steps)

    @property
    def loaded(self) -> int:
        return sum(s.loaded for s in self.steps)

    @property
    def failed(self) -> list[WarmupStep]:
        return [s for s in self.steps if s.error is not None]


def _kernel_dispatchers() -> Iterator[Any]:
    """Every numba dispatcher defined at module level in the compiler's loaded modules."""
    from numba.core.dispatcher import Dispatcher

    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("farm.compiler"):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and id(value) not in seen:
                seen.add(id(value))
                yield value


def numba_cache_counts() -> tuple[int, int]:
    """(signatures compiled, signatures loaded from the cache) over the compiler's kernels so far."""
    compiled = loaded = 0
    for dispatcher in _kernel_dispatchers():
        stats = dispatcher.stats
        compiled += sum(stats.cache_misses.values())
        loaded += sum(stats.cache_hits.values())
    return compiled, loaded


def _calibration(model: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    from farm import zoo

    return [zoo.sample_inputs(model, 1, seed=1 + i, options=options) for i in range(CALIBRATION_SAMPLES)]


def warm_up(
    models: Sequence[str] = DEFAULT_MODELS,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    *,
    profile: str = "cpu",
    tuning_level: int = 1,
    model_options: dict[str, dict[str, Any]] | None = None,
    on_step: Callable[[str, str], None] | None = None,
    on_done: Callable[[WarmupStep], None] | None = None,
) -> WarmupReport:
    """Build each of ``models`` (zoo names) in each of ``precisions`` once and discard the engines.

    ``model_options`` overrides a zoo model's build options (``{"resnet": {"image_size": 64}}``).
    A build that fails is recorded in the report with its error and the warm-up goes on: a
    warm-up never stops a worker from starting. ``on_step(model, precision)`` runs before each
    build and ``on_done(step)`` after it (for progress bars and logs).
    """
    from farm import zoo
    from farm.compiler.builder import BuilderConfig, build
    from farm.compiler.tuner import MemoryTimingCache

    unknown = sorted(set(models) - set(zoo.MODELS))
    if unknown:
        raise ValueError(f"unknown zoo model(s) {unknown}; known: {sorted(zoo.MODELS)}")
    report = WarmupReport()
    for name in models:
        options = dict((model_options or {}).get(name, {}))
        onnx_bytes = zoo.build_model(name, **options).SerializeToString()
        feeds = zoo.sample_inputs(name, 1, seed=0, options=options)
        for precision in precisions:
            if on_step is not None:
                on_step(name, precision)
            config = BuilderConfig(
                tuning_level=tuning_level,
                timing_cache=MemoryTimingCache(),
                batch_range=(1, 1, 1),
                input_shapes={k: list(v.shape) for k, v in feeds.items()},
                precision=precision,
                calibration=_calibration(name, options) if precision in ("int8", "best") else None,
            )
            before = numba_cache_counts()
            started = time.perf_counter()
            error = None
            try:
                build(onnx_bytes, profile, config)
            except Exception as exc:  # recorded, never raised: see the docstring
                error = f"{type(exc).__name__}: {exc}"
            after = numba_cache_counts()
            step = WarmupStep(
                model=name,
                precision=precision,
                seconds=time.perf_counter() - started,
                compiled=after[0] - before[0],
                loaded=after[1] - before[1],
                error=error,
            )
            report.steps.append(step)
            if on_done is not None:
                on_done(step)
    return report
