"""Streaming state: run an engine whose model carries a state between calls (a recurrent state
input and the output that holds its next value, e.g. gru_stream's ``h0`` -> ``h``).

A :class:`StreamingSession` owns one execution context and the current state. Each
:meth:`StreamingSession.step` feeds the new chunk together with the state and keeps the state
outputs for the next call. Nothing is copied: the runtime hands back a fresh array for each graph
output, and that very array is the next call's state input (the runtime takes contiguous feeds as
they are).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from farm.compiler.ir import numpy_dtype

if TYPE_CHECKING:
    from farm.compiler.engine.runtime import Binding, Engine, ExecutionContext


class StateError(ValueError):
    """The state pairs asked for (or detected) do not fit the engine's bindings."""


def parse_state_pairs(text: str) -> dict[str, str]:
    """``"h0=h,c0=c"`` -> ``{"h0": "h", "c0": "c"}`` (state input -> output with its next value)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise StateError(f"state pair {item!r} must read INPUT=OUTPUT (e.g. h0=h)")
        source, target = (s.strip() for s in item.split("=", 1))
        pairs[source] = target
    return pairs


def _same_binding(a: Binding, b: Binding) -> bool:
    return a.dtype == b.dtype and list(a.shape) == list(b.shape)


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def detect_state_pairs(engine: Engine) -> dict[str, str]:
    """Pair every input with the output of the same dtype and (symbolic) shape; when several
    outputs fit one input, the one sharing the longest name prefix wins (``h0`` -> ``h``,
    ``state_in`` -> ``state_out``). Inputs no output fits are not state."""
    pairs: dict[str, str] = {}
    taken: set[str] = set()
    for source in engine.inputs:
        fits = [o for o in engine.outputs if o.name not in taken and _same_binding(source, o)]
        if not fits:
            continue
        best = max(fits, key=lambda o: _shared_prefix(source.name, o.name))
        if len(fits) > 1 and _shared_prefix(source.name, best.name) == 0:
            continue  # several candidates and no name to choose by: do not guess
        pairs[source.name] = best.name
        taken.add(best.name)
    return pairs


def check_state_pairs(engine: Engine, pairs: Mapping[str, str]) -> None:
    """Raise :class:`StateError` unless every pair names an input and an output of the same
    dtype and shape."""
    inputs = {b.name: b for b in engine.inputs}
    outputs = {b.name: b for b in engine.outputs}
    problems = []
    for source, target in pairs.items():
        if source not in inputs:
            problems.append(f"{source!r} is not an input (inputs: {sorted(inputs)})")
        elif target not in outputs:
            problems.append(f"{target!r} is not an output (outputs: {sorted(outputs)})")
        elif not _same_binding(inputs[source], outputs[target]):
            problems.append(
                f"{source!r} ({inputs[source].dtype} {inputs[source].shape}) and {target!r} "
                f"({outputs[target].dtype} {outputs[target].shape}) differ in dtype or shape"
            )
    if problems:
        raise StateError("invalid state pairs: " + "; ".join(problems))


class StreamingSession:
    """Calls an engine chunk after chunk, carrying the state outputs into the next call.

    ``pairs`` maps state inputs to the outputs holding their next value (default: detected,
    :func:`detect_state_pairs`); ``initial`` gives the first state (default: zeros shaped like
    the first chunk's batch, i.e. the binding's shape with symbolic dims taken from the feeds).
    """

    def __init__(
        self,
        engine: Engine,
        pairs: Mapping[str, str] | None = None,
        initial: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.engine = engine
        self.pairs = dict(pairs) if pairs is not None else detect_state_pairs(engine)
        if not self.pairs:
            raise StateError(
                f"engine has no state input/output pair (inputs {engine.input_names}, outputs "
                f"{engine.output_names}); name them, e.g. h0=h"
            )
        check_state_pairs(engine, self.pairs)
        self.context = engine.create_context()
        self.state: dict[str, np.ndarray] = dict(initial or {})
        self.steps = 0

    def reset(self, initial: Mapping[str, np.ndarray] | None = None) -> None:
        """Start a new stream (zero state unless ``initial`` is given)."""
        self.state = dict(initial or {})
        self.steps = 0

    def _zero_state(self, name: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        binding = next(b for b in self.engine.inputs if b.name == name)
        # A symbolic dim (the batch) takes its size from a fed input that has the same dim name.
        sizes = {}
        for other in self.engine.inputs:
            if other.name in feeds:
                for dim, size in zip(other.shape, np.shape(feeds[other.name]), strict=False):
                    if isinstance(dim, str):
                        sizes[dim] = size
        shape = [
            dim if isinstance(dim, int) else sizes.get(dim, binding.opt_shape[i])
            for i, dim in enumerate(binding.shape)
        ]
        return np.zeros(shape, numpy_dtype(binding.dtype))

    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one chunk; the state outputs become the next call's state inputs (no copy)."""
        full = dict(feeds)
        for source in self.pairs:
            if source in full:  # an explicit state overrides the carried one
                continue
            if source not in self.state:
                self.state[source] = self._zero_state(source, feeds)
            full[source] = self.state[source]
        outputs = self.context.run(full)
        for source, target in self.pairs.items():
            self.state[source] = outputs[target]
        self.steps += 1
        return outputs


def streaming_runner(
    engine: Engine, feeds: Mapping[str, np.ndarray], spec: str
) -> tuple[Callable[[], dict[str, np.ndarray]], ExecutionContext]:
    """For ``farm bench --state``: a callable that runs one chunk of a stream per call, and the
    context it runs in. ``spec`` is ``"auto"`` (detected pairs) or ``"h0=h,c0=c"``; the state
    inputs in ``feeds`` are the first state, the other feeds are the chunk fed every call."""
    pairs = detect_state_pairs(engine) if spec.strip() == "auto" else parse_state_pairs(spec)
    session = StreamingSession(engine, pairs, initial={k: feeds[k] for k in pairs if k in feeds})
    chunk = {k: v for k, v in feeds.items() if k not in session.pairs}
    return (lambda: session.step(chunk)), session.context
