"""Thread counts for a whole schedule, chosen by timing it.

Kernels timed alone do not show how the two thread pools (BLAS and numba) interact; the whole
schedule does (FACTS.md: a conv layer took 2.5 ms step by step and 8.6 ms in sequence). On a
loaded machine a multi-threaded BLAS call can be 100x slower than a single-threaded one. So the
builder times the tactics under the default setting (one pool, :func:`thread_candidates`' first),
then runs the complete tuned engine with each candidate setting (BLAS threads, numba threads), in
turns, and keeps the setting whose best turn was fastest.

(Until compiler 0.2 the setting was chosen first, on the engine of the heuristic tactics, and
the tactics were then timed under it. The heuristic tactics are mostly BLAS GEMMs, so that picked
BLAS's pool for MobileNet at batch 1, whose tactics tuned under it ran 5.9 ms against 3.8 ms
for the tactics tuned under one pool.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple


def thread_candidates(cores: int) -> list[tuple[int, int]]:
    """(BLAS threads, numba threads) settings worth trying on ``cores`` cores: one pool (numba's,
    BLAS on the calling thread; the default), BLAS's pool alone, and one thread.

    Never both pools with several threads: numba's workers spin between kernels
    (``kernels/cpu/_threads.py``) and would take the cores from BLAS's threads (BERT at batch 1
    took 164-189 ms that way instead of 13-16 ms, measured on the 2-core EPYC)."""
    if cores <= 1:
        return [(1, 1)]
    return [(1, cores), (cores, 1), (1, 1)]


# Each turn times runs for at least this long (and at least ``runs_per_turn`` runs): one run of a
# 0.1 ms engine is at the mercy of a single timer tick or hiccup, and the pools a setting uses take
# more than one run to settle after a switch. The MLP at batch 8 (0.08 ms at 2 threads, 0.15 ms
# at one) was built for one thread with one timed run per turn (measured on the 2-core Xeon).
TURN_MS = 20.0

# After a setting with BLAS threads, the next setting runs untimed for this long first:
# OpenBLAS's idle workers keep spinning for ~2^28 cycles (its THREAD_TIMEOUT, ~0.1 s) and take a
# core from numba's workers meanwhile (one MobileNet run at one pool took 65-87 ms instead of 4).
BLAS_POOL_SETTLE_MS = 150.0


# A round of turns counts only when the probe before it and the one after it found every core
# at least this available (``core_availability``: ~0.95-1.0 on a quiet machine, ~0.3-0.5 while
# another guest holds one of two vCPUs).
MIN_AVAILABILITY = 0.8
# Rounds that must count before a setting other than the default may be chosen.
MIN_CLEAN_ROUNDS = 2
# How long the timing may go on past its planned rounds waiting for rounds that count.
EXTRA_WAIT_S = 2.0


class ThreadChoice(NamedTuple):
    """What :func:`choose_thread_counts` decided and on what evidence."""

    setting: tuple[int, int]
    # each setting's time in ms (keyed ``"blas=B,numba=N"``), over the rounds that counted, or
    # over every round when none did
    timings_ms: dict[str, float]
    rounds: int
    clean_rounds: int
    needed: int  # rounds that had to count for a timed choice

    @property
    def contended(self) -> bool:
        """Whether too few rounds had every core: the setting is then the default, untimed."""
        return self.clean_rounds < self.needed


def choose_thread_counts(
    run: Callable[[int, int], Any],
    cores: int,
    *,
    rounds: int = 5,
    runs_per_turn: int = 1,
    turn_ms: float = TURN_MS,
    settle_ms: float = BLAS_POOL_SETTLE_MS,
    availability: Callable[[], float] | None = None,
    extra_wait_s: float | None = None,
) -> ThreadChoice:
    """Time ``run(blas_threads, numba_threads)`` (one inference with that setting) for each
    candidate setting and return the fastest setting with every setting's time in ms: the median
    of its runs in its best turn.

    The settings take turns over ``rounds`` rounds; a turn is one untimed run (or untimed runs for
    ``settle_ms`` when the previous turn ran BLAS threads, see ``BLAS_POOL_SETTLE_MS``), then
    timed runs for ``turn_ms`` (at least ``runs_per_turn`` of them, see ``TURN_MS``). A setting's
    time is the median of its best turn: another process taking a core only ever slows a turn,
    and on a VM whose second vCPU the hypervisor took away for half a second a median over all
    turns built MobileNet at batch 1 for one thread (7.1 ms where two threads run it in 4.8 ms;
    2-core EPYC, 2026-11-23). The first run after a switch pays for the switch (the pools a
    setting uses were idle or sized for the previous setting, and a sleeping worker on a VM took
    100-200 us to wake, measured on the 2-core EPYC); a serving engine runs one setting run after
    run, so timing only that first run (round-robin run by run) favoured the single-threaded
    setting: BERT at batch 1 was built for (1, 1), 18.5 ms, where (2, 1) runs it in 13.7 ms.

    A best turn does not help when the stretch without a core outlasts every round: the 2-core
    EPYC built MobileNet for one thread that way again (4.4 against 5.3 ms while it lasted, then
    4.7-4.9 ms on the quiet machine where two threads run it in 2.7-3.0). So with
    ``availability`` (a probe returning the share of a core the slowest thread gets, see
    ``kernels/cpu/_core_probe.py``), a round counts only when the probes before and after it both
    read at least ``MIN_AVAILABILITY``; rounds go on for up to ``extra_wait_s`` (default
    ``EXTRA_WAIT_S``) past ``rounds``
    until ``MIN_CLEAN_ROUNDS`` count. When they never do, the machine is busy now, not the
    schedule slow: the result is the default setting (the first candidate) and ``contended``.
    """
    settings = thread_candidates(cores)
    turns: dict[tuple[int, int], list[float]] = {s: [] for s in settings}  # each turn's median
    clean: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    previous_blas = 1
    needed = min(MIN_CLEAN_ROUNDS, rounds)
    before = availability() if availability else 1.0
    done = clean_rounds = 0
    deadline: float | None = None
    while True:
        if done >= rounds:
            if clean_rounds >= needed:
                break
            if deadline is None:
                deadline = time.perf_counter() + (EXTRA_WAIT_S if extra_wait_s is None else extra_wait_s)
            if time.perf_counter() >= deadline:
                break
        shift = done % len(settings)
        medians: dict[tuple[int, int], float] = {}
        for blas, numba in settings[shift:] + settings[:shift]:
            switched = time.perf_counter()
            run(blas, numba)  # the switch
            if previous_blas > 1:
                while (time.perf_counter() - switched) * 1e3 < settle_ms:
                    run(blas, numba)
            previous_blas = blas
            turn: list[float] = []
            timed = 0
            turn_started = time.perf_counter()
            while timed < runs_per_turn or (time.perf_counter() - turn_started) * 1e3 < turn_ms:
                start = time.perf_counter()
                run(blas, numba)
                turn.append((time.perf_counter() - start) * 1e3)
                timed += 1
            medians[(blas, numba)] = statistics.median(turn)
        after = availability() if availability else 1.0
        counts = min(before, after) >= MIN_AVAILABILITY
        for setting, ms in medians.items():
            turns[setting].append(ms)
            if counts:
                clean[setting].append(ms)
        clean_rounds += counts
        before = after
        done += 1
    times = {s: min(v) for s, v in (clean if clean_rounds else turns).items()}
    best = min(settings, key=lambda s: times[s]) if clean_rounds >= needed else settings[0]
    return ThreadChoice(
        best, {thread_label(b, n): ms for (b, n), ms in times.items()}, done, clean_rounds, needed
    )


def thread_label(blas: int, numba: int) -> str:
    """``"blas=B,numba=N"``: how a setting is named in reports and the timing cache."""
    return f"blas={blas},numba={numba}"


def parse_thread_label(label: str) -> tuple[int, int]:
    """Inverse of :func:`thread_label`."""
    parts = dict(item.split("=") for item in label.split(","))
    return int(parts["blas"]), int(parts["numba"])
