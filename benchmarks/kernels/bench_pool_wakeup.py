"""What a numba parallel kernel pays to wake the thread pool after the pool sat idle.

An empty ``prange`` over two iterations (two threads, numba's OpenMP layer) is timed right after
the calling thread busy-waited ``idle`` microseconds, for each idle time. libgomp's workers spin
``GOMP_SPINCOUNT`` iterations after a parallel region and then sleep; waking a sleeping worker on
a VM can cost far more than a small kernel's work. Run it once per spin count (the variable is
read when libgomp loads, so it must be set in the environment):

    for s in 1000 300000 3000000; do GOMP_SPINCOUNT=$s .venv/bin/python benchmarks/kernels/bench_pool_wakeup.py; done
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, nogil=True)
def _empty(x: np.ndarray) -> None:
    for t in prange(x.shape[0]):
        x[t] += 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-us", type=float, nargs="*", default=[0, 20, 100, 1000])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    numba.config.THREADING_LAYER = "omp"  # type: ignore[attr-defined]
    x = np.zeros(2)
    _empty(x)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    spin = os.environ.get("GOMP_SPINCOUNT", "(libgomp default)")
    for idle in args.idle_us:
        samples = []
        for _ in range(args.calls):
            start = time.perf_counter()
            while (time.perf_counter() - start) * 1e6 < idle:
                pass
            begin = time.perf_counter()
            _empty(x)
            samples.append(time.perf_counter() - begin)
        us = np.asarray(samples) * 1e6
        print(
            f"GOMP_SPINCOUNT={spin} idle {idle:g} us: median {np.median(us):.1f} us, p90 {np.percentile(us, 90):.1f} us"
        )


if __name__ == "__main__":
    main()
