"""How much of the machine's cores a parallel kernel can have right now.

On a shared VM the hypervisor lends a vCPU to other guests for stretches of seconds, and a
static parallel loop then waits for the thread whose core is gone. Timing thread settings in
such a stretch is timing the neighbour: the 2-core EPYC built MobileNet at batch 1 for one
thread (4.4 ms in that stretch against 5.3 ms on two) and the engine then ran 4.7-4.9 ms on the
quiet machine, where two threads run it in 2.7-3.0 ms (2026-11-24). The builder asks
:func:`core_availability` around each round of its thread timing and keeps only the rounds the
machine gave all its cores (``farm.compiler.tuner.threads``).

The probe is a fixed scalar multiply-add chain per thread: no memory traffic and no vector
width, so its time per thread depends only on whether the thread had a core.
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np
from numba import prange

from farm.compiler.kernels.cpu import _threads  # noqa: F401  (GOMP_SPINCOUNT before libgomp loads)

# Steps of the chain per thread: ~0.1 ms at 4 cycles a step and ~3.5 GHz, long next to a parallel
# launch (2-5 us with spinning workers) and short next to a thread-timing turn (20 ms).
PROBE_STEPS = 100_000
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
