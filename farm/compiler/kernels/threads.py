"""Thread pools of the CPU backend: BLAS (through threadpoolctl) and numba.

One pool does the parallel work: numba's. BLAS runs on the calling thread by default, and the
GEMMs that need every core run inside numba's pool (``cpu/_blas.py``: the ``tiled`` tactics call
BLAS on tiles from numba's workers). Two pools that each keep their own threads fight on a small
machine (FACTS.md: a conv layer went from 2.5 ms to 8.6 ms when numba and OpenBLAS alternated), and
keeping both cheap to hand over meant letting numba's workers sleep after every kernel, which cost
a 40-200 us wake-up per parallel kernel on the VMs we measured (docs/KERNELS.md). With one pool
numba's workers spin between kernels (libgomp's default ``GOMP_SPINCOUNT=300000``, set by
``cpu/_threads.py``) and a parallel kernel starts in 2-5 us.

The builder may still pick BLAS threads with numba single-threaded, or everything on one thread,
when timing the whole schedule says so (``farm.compiler.tuner.threads``); it never runs both pools
with several threads. numba's threading layer is ``omp``; override with
``FARM_NUMBA_THREADING_LAYER``. The layer and its spin count are part of the device fingerprint.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

DEFAULT_THREADING_LAYER = "omp"

_requested: tuple[int, int] | None = None
_applied = (0, 0)


def threading_layer() -> str:
    """The numba threading layer this process runs with."""
    return os.environ.get("FARM_NUMBA_THREADING_LAYER", DEFAULT_THREADING_LAYER)


def threading_description() -> str:
    """The threading layer with what decides its kernels' start-up cost: ``"omp spin=300000"``
    (libgomp's spin count; numba's other layers have no such setting)."""
    layer = threading_layer()
    if layer != "omp":
        return layer
    importlib.import_module("farm.compiler.kernels.cpu._threads")
    return f"omp spin={os.environ.get('GOMP_SPINCOUNT', '')}"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(blas: int | None, numba_threads: int | None) -> tuple[int, int]:
    """(BLAS, numba) thread counts with the defaults filled in: BLAS on the calling thread (one
    pool), numba on every available core."""
    return max(1, blas or 1), max(1, numba_threads or available_cores())


def configure_threads(blas: int | None = None, numba_threads: int | None = None) -> int:
    """Give BLAS ``blas`` threads (default 1: one pool) and numba ``numba_threads`` (default every
    available core), and select numba's threading layer. Cheap when nothing changes, so the
    runtime calls it before every run. Returns the number of cores in use (the larger count)."""
    global _requested, _applied
    wanted = resolve_threads(blas, numba_threads)
    if _requested == wanted:
        return max(_applied)
    # The CPU backend's thread module sets GOMP_SPINCOUNT; it must run before libgomp loads.
    importlib.import_module("farm.compiler.kernels.cpu._threads")
    import numba
    from threadpoolctl import threadpool_limits

    numba.config.THREADING_LAYER = threading_layer()  # type: ignore[attr-defined]
    numba_count = min(wanted[1], numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    numba.set_num_threads(numba_count)
    threadpool_limits(limits=wanted[0], user_api="blas")
    _requested, _applied = wanted, (wanted[0], numba_count)
    return max(_applied)


def threading_info() -> dict[str, Any]:
    """numba version, threading layer and the BLAS libraries, for the device fingerprint."""
    import numba
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    numpys = [pool for pool in pools if _is_numpys(str(pool.get("filepath", "")))]
    return {
        "numba_version": numba.__version__,
        "numba_threading_layer": threading_description(),
        "blas": [
            {"library": str(pool.get("internal_api", "")), "version": str(pool.get("version", ""))}
            for pool in (numpys or pools)
        ],
    }


def _is_numpys(filepath: str) -> bool:
    """Whether a loaded BLAS is the one numpy's wheel bundles (the one every BLAS tactic calls).

    Other packages bring their own copies (scipy ships a second OpenBLAS); which of those happen to
    be loaded depends on what the process imported, so they must not enter the fingerprint: an
    engine built in a worker would otherwise refuse to load in a process that imported scipy.
    A numpy linked against a system BLAS has no bundled copy; then every loaded BLAS counts.
    """
    import os

    import numpy as np

    folder = os.path.dirname(filepath)
    return os.path.basename(folder) in ("numpy.libs", ".dylibs") or folder.startswith(
        os.path.dirname(np.__file__)
    )
