"""How much of the machine's cores a parallel kernel can have right now.

On a shared VM the hypervisor lends a vCPU to other guests for stretches of seconds, and a
static parallel loop then waits for the thread whose core is gone. Timing thread settings in
such a stretch is timing the neighbour: the 2-core EPYC built MobileNet at batch 1 for one
thread (4.4 ms in that stretch against 5.3 ms on two) and the engine then ran 4.7-4.9 ms on the
quiet machine, where two threads run it in 2.7-3.0 ms (2026-11-24). The builder asks
:func:`core_availability` around each round of its thread timing and keeps only the rounds the
machine gave all its cores (``farm.compiler.tuner.threads``).

The probe is a fixed scalar multiply-add chain per thread: no memory traffic and no vector
width, so its time per thread depends only on whether the thread had a core. A process busy in
the same machine it can miss (:class:`OtherLoad`), so :func:`round_availability` also counts the
CPU time everything else took.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from farm.compiler.kernels.cpu import _threads  # noqa: F401  (GOMP_SPINCOUNT before libgomp loads)

# Steps of the chain per thread: ~2 ms at 4 cycles a step and ~3.5 GHz, long next to a parallel
# launch (2-5 us with spinning workers) and to the slices in which a hypervisor shares a vCPU:
# probes of ~0.1 ms read 0.98-1.0 through a stretch in which two threads ran MobileNet b1 in
# 5.0 ms instead of 2.4 (and one thread in 4.2), so the builder chose one thread four times in
# a row (2-core EPYC, 2026-11-24); probes of ~3.5 ms read 0.46-0.47 in such stretches.
PROBE_STEPS = 1_000_000
# Probes per measurement; the median drops one probe that met a timer tick or a worker waking.
PROBE_REPEATS = 3


@numba.njit(parallel=True, cache=True)
def _chains(out: np.ndarray, steps: int) -> None:
    """Each iteration (one per thread) runs ``steps`` dependent multiply-adds."""
    for t in prange(out.shape[0]):
        x = 1.0 + 0.001 * t
        for _ in range(steps):
            x = x * 0.999999 + 1e-6
        out[t] = x


def _median_time(out: np.ndarray, threads: int, steps: int, repeats: int) -> float:
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _chains(out[:threads], max(1, steps // 16))  # wakes the workers
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            _chains(out[:threads], steps)
            times.append(time.perf_counter() - started)
    finally:
        numba.set_num_threads(previous)
    return statistics.median(times)


def core_availability(cores: int, steps: int = PROBE_STEPS, repeats: int = PROBE_REPEATS) -> float:
    """The share of one core's speed that the slowest of ``cores`` threads got just now: the
    probe's time on one thread over its time on ``cores`` threads doing the same work each.

    About 1.0 when every core is free; about 0.5 when one of two cores is half taken by another
    guest or process; 1.0 for one core (nothing to share)."""
    cores = min(int(cores), numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if cores <= 1:
        return 1.0
    out = np.zeros(cores, dtype=np.float64)
    one = _median_time(out, 1, steps, repeats)
    many = _median_time(out, cores, steps, repeats)
    return float(min(1.0, one / max(many, 1e-9)))


class OtherLoad:
    """How much of a core everything but this process took (other processes, and time the
    hypervisor reports as stolen) between two calls of :meth:`since_last`, from ``/proc/stat``
    and ``os.times`` (10 ms ticks: read it over intervals of 100 ms or more).

    The probe alone misses a busy process inside the same machine: the kernel's scheduler runs a
    thread that slept (the probe's) ahead of one that kept a core busy, so a 4 ms probe found
    every core free while the whole-schedule turns ran beside a test suite and ViT at batch 1 was
    built for one thread (10.9 ms, where two threads run it in 7.5; 2-core EPYC, 2026-11-24)."""

    def __init__(self) -> None:
        self._last = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        """(busy CPU seconds of the whole machine, this process's CPU seconds, monotonic time),
        or None where ``/proc/stat`` cannot be read."""
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if len(fields) < 9 or fields[0] != "cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        hz = os.sysconf("SC_CLK_TCK")
        own = os.times()
        return (user + nice + system + irq + softirq + steal) / hz, own.user + own.system, time.monotonic()

    def since_last(self) -> float:
        """Cores' worth of time others took since the previous call (0.0 when unknown)."""
        now, last = self._snapshot(), self._last
        self._last = now
        if now is None or last is None or now[2] <= last[2]:
            return 0.0
        return max(0.0, ((now[0] - last[0]) - (now[1] - last[1])) / (now[2] - last[2]))


def round_availability(cores: int) -> Callable[[], float]:
    """The ``availability`` probe of ``choose_thread_counts``: the probe's reading, lowered by
    the share of a core other work took since the previous reading (the round just timed)."""
    others = OtherLoad()

    def availability() -> float:
        return max(0.0, min(core_availability(cores), 1.0 - others.since_last()))

    return availability
