"""In-engine tuning: settle close calls between tactics by timing them inside the whole engine.

The autotuner times each node's candidates alone, with the node's weights and inputs in cache
(or, for a model too large for the cache, evicted: ``cold_cache``). Inside an engine a layer
finds neither state: its weights were evicted by the layers since its last run, its input was
just written by the layer before, part of it on the other core. Tactics that trade memory for
arithmetic lose most there. ResNet-18 at batch 1 on a 2-core AVX-512 Xeon (2026-11-25): the
128-channel 28x28 Winograd convs timed 0.37-0.42 ms alone and ran 0.78-0.81 ms in the engine,
where ``channel_lanes`` timed 0.62 alone and ran 0.66 in the engine.

**Rule.** A node is *contested* when its hot winner takes at least ``MIN_CONTESTED_MS`` and
other valid candidates of the winner's precision timed within ``CONTEST_RATIO`` of it (at most
``MAX_CONTENDERS`` in all, fastest first). Round ``r`` is the engine with every contested node
running its ``r``-th contender (its winner when it has fewer); round 0 is the tuner's schedule.
The rounds' engines run in turns, profiled per layer, and each contested node takes the tactic
with the lowest median time *in the engine*. The result is kept only when its whole runs are
faster than round 0's, timed in turns (a tactic also changes what its neighbours find in the
cache, which per-layer times do not see). The decision is cached under the schedule, the
contests and the core count, so a warm rebuild runs nothing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.compiler import __version__ as COMPILER_VERSION
from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.tuner.autotune import NodeChoice
from farm.compiler.tuner.cache import TimingCache, TimingRecord, timing_key

# A node whose hot winner is faster than this is not contested: a per-layer timer's noise
# (tens of microseconds on a VM) would decide it.
MIN_CONTESTED_MS = 0.05
# Candidates within this factor of the hot winner contest it.
CONTEST_RATIO = 2.0
# Contenders per node, the winner included (so rounds per build).
MAX_CONTENDERS = 3
# (warm-up runs per round, at least / at most profiled runs per round, seconds of profiled runs
# in all) per tuning level.
RUNS_PER_LEVEL: dict[int, tuple[int, int, int, float]] = {
    1: (3, 9, 41, 1.5),
    2: (5, 15, 81, 3.0),
    3: (10, 31, 161, 6.0),
}


# The report sources of a stage that ran and had layers to decide (a build report's
# ``in_engine.source`` in these: a rebuild of other layer precisions may find contests too).
CONTESTED_SOURCES = ("timed", "cache", "kept")


@dataclass
class InEngineResult:
    """What in-engine tuning did, for the build report."""

    # "timed", "cache", "none" (nothing contested), "kept" (the changes lost as a whole), "off",
    # or "skipped: ..." (why the stage did not run)
    source: str
    contests: dict[str, list[str]] = field(default_factory=dict)
    layer_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)  # node -> [hot winner, chosen]
    whole_ms: dict[str, float] = field(default_factory=dict)  # "tuned", "in_engine"
    runs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "contests": self.contests,
            "layer_ms": self.layer_ms,
            "changed": self.changed,
            "whole_ms": self.whole_ms,
            "runs": self.runs,
        }


def contests(
    choices: Sequence[NodeChoice], precision_of: Callable[[str], str], *, ratio: float = CONTEST_RATIO,
    min_ms: float = MIN_CONTESTED_MS, limit: int = MAX_CONTENDERS,
) -> dict[str, list[str]]:  # fmt: skip
    """{node: [winner, contenders...]} for the contested nodes (module rule), fastest first.
    ``precision_of`` gives a tactic's precision; only the winner's precision contests it."""
    found: dict[str, list[str]] = {}
    for choice in choices:
        best = choice.timings_ms.get(choice.tactic)
        if best is None or best < min_ms or choice.source == "heuristic":
            continue
        precision = precision_of(choice.tactic)
        others = sorted(
            (ms, name)
            for name, ms in choice.timings_ms.items()
            if name != choice.tactic
            and ms is not None
            and name not in choice.rejected
            and ms <= ratio * best
            and precision_of(name) == precision
        )
        if others:
            found[choice.node] = [choice.tactic] + [name for _, name in others[: limit - 1]]
    return found


def _with_tactics(choices: Sequence[NodeChoice], tactics: Mapping[str, str]) -> list[NodeChoice]:
    """Copies of ``choices`` with the nodes named in ``tactics`` switched to those tactics."""
    result = []
    for choice in choices:
        tactic = tactics.get(choice.node)
        if tactic is None or tactic == choice.tactic:
            result.append(choice)
            continue
        copy = NodeChoice(**{**choice.__dict__, "timings_ms": dict(choice.timings_ms)})
        copy.tactic = tactic
        copy.source = "in-engine"
        result.append(copy)
    return result


def _with_tactics_rounds(
    choices: Sequence[NodeChoice], contested: Mapping[str, Sequence[str]]
) -> list[list[NodeChoice]]:
    """The schedule of each round: round ``r`` gives every contested node its ``r``-th tactic (its
    winner, the first, when it has fewer)."""
    rounds = max(len(tactics) for tactics in contested.values())
    return [
        _with_tactics(choices, {n: t[min(r, len(t) - 1)] for n, t in contested.items()})
        for r in range(rounds)
    ]


def refine_in_engine(
    choices: list[NodeChoice],
    *,
    make_engine: Callable[[list[NodeChoice]], Any],
    feeds: Mapping[str, np.ndarray],
    cache: TimingCache,
    fingerprint_id: str,
    signature: dict[str, Any],
    precision_of: Callable[[str], str],
    level: int,
    heartbeat: Callable[[], None] = lambda: None,
) -> tuple[list[NodeChoice], InEngineResult]:
    """The schedule after in-engine tuning (module rule) and what was done.

    ``make_engine(choices)`` assembles an engine for a schedule; ``signature`` identifies the
    tuned schedule for the cache (the caller's, with shapes and cores). ``heartbeat`` runs
    between rounds (a cancelled build raises there)."""
    contested = contests(choices, precision_of)
    if not contested or level <= 0:
        return choices, InEngineResult("none")
    key = timing_key(
        fingerprint_id, COMPILER_VERSION, {**signature, "contests": contested}, "schedule.in_engine"
    )
    cached = cache.get(key)
    if cached is not None and cached.valid:
        try:
            changes = json.loads(cached.tactic)
        except ValueError:
            changes = None
        if isinstance(changes, dict) and all(
            node in contested and tactic in contested[node] for node, tactic in changes.items()
        ):
            changed = {node: [contested[node][0], tactic] for node, tactic in changes.items()}
            return _with_tactics(choices, changes), InEngineResult("cache", contested, changed=changed)
    warmup, least, most, seconds = RUNS_PER_LEVEL[min(level, 3)]
    rounds = max(len(tactics) for tactics in contested.values())
    engines = [make_engine(schedule) for schedule in _with_tactics_rounds(choices, contested)]
    contexts = [engine.create_context() for engine in engines]
    last_s = []
    for context in contexts:
        for _ in range(warmup):  # the first run binds the context; the last one is timed
            started = time.perf_counter()
            context.run(feeds)
        last_s.append(time.perf_counter() - started)
    per_run_s = max(sum(last_s) / rounds, 1e-6)
    runs = int(min(most, max(least, seconds / (per_run_s * rounds))))
    for index in range(runs):
        if index % 8 == 0:
            heartbeat()
        shift = index % rounds
        for which in list(range(shift, rounds)) + list(range(shift)):
            contexts[which].run(feeds, profile=True)
    layer_ms: dict[str, dict[str, float]] = {}
    chosen: dict[str, str] = {}
    for node, tactics in contested.items():
        if any(node not in contexts[r].layer_times_ms for r in range(len(tactics))):
            continue  # a layer some round runs as no step of its own (a view, an elided copy)
        times = {
            tactic: statistics.median(contexts[r].layer_times_ms[node]) for r, tactic in enumerate(tactics)
        }
        layer_ms[node] = times
        best = min(times, key=lambda t: times[t])
        if best != tactics[0]:
            chosen[node] = best
    result = InEngineResult("timed", contested, layer_ms, runs=runs)
    if chosen:
        heartbeat()
        refined = _with_tactics(choices, chosen)
        engine = engines[1] if rounds == 2 and len(chosen) == len(contested) else make_engine(refined)
        tuned_context, refined_context = contexts[0], engine.create_context()
        whole = measure_interleaved(
            {"tuned": lambda: tuned_context.run(feeds), "in_engine": lambda: refined_context.run(feeds)},
            warmup_ms=0.0,
            duration_s=0.0,
            iterations=max(least, runs // 2),
        )
        tuned_ms, refined_ms = whole["tuned"].median_ms, whole["in_engine"].median_ms
        result.whole_ms = {"tuned": tuned_ms, "in_engine": refined_ms}
        if refined_ms < tuned_ms:
            result.changed = {node: [contested[node][0], tactic] for node, tactic in chosen.items()}
        else:
            result.source = "kept"
            chosen = {}
    cache.put(
        key, TimingRecord(json.dumps(chosen, sort_keys=True), result.whole_ms.get("in_engine"), True, runs)
    )
    cache.flush()
    return _with_tactics(choices, chosen), result
