"""Thread pools of the CPU backend: BLAS (through threadpoolctl) and numba.

Two pools that each keep their own threads fight on a small machine (FACTS.md: a conv layer went
from 2.5 ms to 8.6 ms when numba and OpenBLAS alternated). The runtime and the tuner therefore
give both pools the same thread count once, before running anything, and the kernels keep at
most one pool busy at a time (``cpu/_threads.py``).

numba's threading layer is chosen deliberately: ``omp`` with ``GOMP_SPINCOUNT=1000`` (set by
``cpu/_threads.py`` before libgomp loads). Measured by the kernels engineer on one 64x576x3136
conv layer (numba im2col -> BLAS GEMM -> numba epilogue): omp + short spin 2.3 ms, omp default
spin 52 ms, omp passive 13.7 ms, workqueue 2.9-24 ms. Override with
``FARM_NUMBA_THREADING_LAYER``. The layer is part of the device fingerprint.
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


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None, numba_threads: int | None = None) -> int:
    """Give BLAS ``threads`` threads (default: every available core) and numba ``numba_threads``
    (default: the same), and select numba's threading layer. Cheap when nothing changes, so the
    runtime calls it before every run. Returns the BLAS thread count applied."""
    global _requested, _applied
    blas = max(1, threads or available_cores())
    wanted = (blas, max(1, numba_threads or blas))
    if _requested == wanted:
        return _applied[0]
    # The CPU backend's thread module sets GOMP_SPINCOUNT; it must run before libgomp loads.
    importlib.import_module("farm.compiler.kernels.cpu._threads")
    import numba
    from threadpoolctl import threadpool_limits

    numba.config.THREADING_LAYER = threading_layer()  # type: ignore[attr-defined]
    numba_count = min(wanted[1], numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    numba.set_num_threads(numba_count)
    threadpool_limits(limits=wanted[0], user_api="blas")
    _requested, _applied = wanted, (wanted[0], numba_count)
    return wanted[0]


def threading_info() -> dict[str, Any]:
    """numba version, threading layer and the BLAS libraries, for the device fingerprint."""
    import numba
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    numpys = [pool for pool in pools if _is_numpys(str(pool.get("filepath", "")))]
    return {
        "numba_version": numba.__version__,
        "numba_threading_layer": threading_layer(),
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
