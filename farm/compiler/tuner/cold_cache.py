"""Timing a tactic with its weights out of the cache, as the engine runs it when they do not fit.

An engine whose weights exceed the CPU's last-level cache reads every layer's weights from memory
on every run: by the time a run comes back to a layer, the other layers' weights have evicted its
own, along with its scratch and its output buffer. The tuner's turns (an untimed run, then the
timed one) time each candidate with all of that hot, which favours tactics that trade memory for
arithmetic. ResNet-18 at batch 1 on a 2-core Zen 5 (32 MiB L3, 47 MB of weights; 2026-11-24):
the Winograd convs, whose transformed weights are 1.8-4x the plain ones, timed 0.33-0.55 ms hot
and ran 0.57-0.74 ms in the engine, where ``channel_lanes`` timed and ran 0.55-0.65 ms; an engine
tuned cold ran the whole model 7-8 % faster.

**Rule.** When the graph's constants exceed the last-level cache, each timed run of a candidate
is preceded by an eviction (a read of 1.5x the last-level cache, on numba's pool so that its
workers stay awake as they are between layers) and then a read of the node's non-constant
inputs (in the engine the layer before has just written them). Otherwise the tuner times warm.
The state is part of each timing's cache key (:func:`cold_signature`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph

LINE_BYTES = 64
# The eviction reads this many times the last-level cache: LRU-like policies keep little of
# what was there after one and a half capacities of other lines.
EVICT_FACTOR = 1.5
# The cache size a forced cold build assumes where the CPU does not report one.
DEFAULT_LAST_LEVEL_BYTES = 32 << 20


@njit(parallel=True, cache=True, nogil=True)
def _read_lines(data, step):  # pragma: no cover - numba
    """Read one byte of every ``step``-th byte of ``data`` (uint8), in parallel chunks; returns
    their sum so that the reads are not optimized away."""
    n = data.shape[0]
    chunks = 64
    per = (n + chunks - 1) // chunks
    per = (per + step - 1) // step * step
    total = 0
    for c in prange(chunks):
        partial = 0
        for i in range(c * per, min(n, (c + 1) * per), step):
            partial += data[i]
        total += partial
    return total


def cache_sizes() -> dict[int, int]:
    """{level: bytes} of the first CPU's data and unified caches, from sysfs (Linux; empty
    elsewhere). Python's ``os.sysconf`` knows no cache names (``SC_LEVEL3_CACHE_SIZE`` is glibc's
    C name only)."""
    sizes: dict[int, int] = {}
    for entry in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind = (entry / "type").read_text().strip()
            level = int((entry / "level").read_text())
            text = (entry / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if kind != "Instruction" and digits.isdigit():
            sizes[level] = int(digits) * scale
    return sizes


def last_level_cache_bytes() -> int | None:
    """The size of the CPU's last-level cache (its highest data or unified level) in bytes, or
    None when unknown."""
    sizes = cache_sizes()
    return sizes[max(sizes)] if sizes else None


def constant_bytes(graph: Graph) -> int:
    """Bytes of the graph's constants (the weights the engine reads every run)."""
    return sum(int(v.const.nbytes) for v in graph.values.values() if v.const is not None)


def cold_signature(signature: dict[str, Any]) -> dict[str, Any]:
    """A timing's op signature marked as timed cold (warm signatures stay as they were, so
    caches written before cold timing existed still hit)."""
    return {**signature, "cache": "cold"}


class ColdCache:
    """Puts the caches in the state a layer of a too-large engine finds them in (module rule)."""

    def __init__(self, last_level_bytes: int) -> None:
        self.last_level_bytes = int(last_level_bytes)
        self._buffer: np.ndarray | None = None

    @classmethod
    def for_graph(cls, graph: Graph, backend: str, mode: bool | None = None) -> ColdCache | None:
        """A ColdCache when ``mode`` is True, or when it is None (automatic) and ``graph``'s
        constants exceed this CPU's last-level cache; None (time warm) otherwise or on a
        backend other than the CPU."""
        if backend != "cpu" or mode is False:
            return None
        llc = last_level_cache_bytes()
        if mode:
            return cls(llc or DEFAULT_LAST_LEVEL_BYTES)
        if llc is not None and constant_bytes(graph) > llc:
            return cls(llc)
        return None

    def evict(self) -> None:
        """Read ``EVICT_FACTOR`` x the last-level cache of other data."""
        if self._buffer is None:
            self._buffer = np.ones(int(EVICT_FACTOR * self.last_level_bytes), np.uint8)
        _read_lines(self._buffer, LINE_BYTES)

    def warm(self, arrays: Sequence[np.ndarray | None]) -> None:
        """Read ``arrays`` (C-contiguous ones; others are left as they are) into the cache."""
        for x in arrays:
            if x is not None and x.size and x.flags.c_contiguous:
                _read_lines(x.reshape(-1).view(np.uint8), LINE_BYTES)

    def prepare_timed_run(self, hot_inputs: Sequence[np.ndarray | None]) -> None:
        """Evict, then bring back the inputs the layer before would just have written."""
        self.evict()
        self.warm(hot_inputs)

    def describe(self, graph: Graph) -> dict[str, Any]:
        """What the build report says about the choice."""
        return {
            "state": "cold",
            "constants_bytes": constant_bytes(graph),
            "last_level_cache_bytes": self.last_level_bytes,
        }
