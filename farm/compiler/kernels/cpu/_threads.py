"""How the CPU tactics use the two thread pools (numba's and OpenBLAS's).

The counts and numba's threading layer are set by the runtime (``farm.compiler.kernels.threads``);
this module holds what the kernels themselves must do so that the two pools never fight
(FACTS.md: one conv layer 2.5 ms alone, 8.6 ms when the pools alternate):

* Every tactic runs on the caller's thread and returns before the next one starts, so at most one
  pool has work at any moment. A GEMM tactic runs BLAS (BLAS's pool), then its epilogue
  (numba's pool); each tactic's docstring names the pool it uses.
* Parallel work runs in numba's pool; BLAS runs on the calling thread unless the builder chose
  BLAS threads with numba single-threaded (``farm.compiler.kernels.threads``). numba's workers
  therefore spin between kernels: ``GOMP_SPINCOUNT=300000`` (libgomp's own default, made explicit
  because libgomp takes it over ``OMP_WAIT_POLICY``). A sleeping worker took
  40-200 us to wake on the VMs measured (bench_pool_wakeup.py), a spinning one 2-5 us. The spin
  count must be in the environment before libgomp loads, hence at import of this module, which
  every numba tactic module imports first; a value the user set wins. (Until compiler 0.2 the
  count was 1000, so that a spinning numba pool would not take the cores from OpenBLAS's threads
  between kernels: bench_thread_pools.py measured 52 ms instead of 2.3 ms for one conv layer with
  both pools at two threads. One pool avoids that fight instead.)
* Starting a parallel loop costs a few microseconds even with spinning workers, and much more
  when the workers were descheduled on a loaded VM, more than a small kernel's work, so kernels
  run single-threaded below :data:`PARALLEL_MIN_ELEMENTS` (:func:`threads_for`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("GOMP_SPINCOUNT", "300000")

import numba  # noqa: E402
from threadpoolctl import ThreadpoolController  # noqa: E402

# Below this many output elements (about 10-20 us of memory-bound work) a numba kernel runs on
# the calling thread alone.
PARALLEL_MIN_ELEMENTS = 1 << 15
# Below this many flops (2*M*N*K; ~100 us on one core) a GEMM runs BLAS on the calling thread: a
# mobilenet 1x1 conv (48x120x784, 9 MFLOP) took 16.8 ms median with BLAS's second thread waiting
# for a core on the shared host, 0.2-0.4 ms on one thread; on a quiet host two threads save at
# most ~50 us there. The tuner times each tactic alone, with BLAS's threads already awake, so it
# cannot see this cost.
BLAS_PARALLEL_MIN_FLOPS = 1 << 23
# OpenBLAS itself runs GEMMs with M*N*K < 65536 * 4 on one thread: no switch needed below that.
BLAS_SINGLE_THREAD_BELOW_FLOPS = 2 * 65536 * 4


_numba_switches: tuple[Any, Any] | None = None


def _numba_threads() -> tuple[Any, Any]:
    """(get, set) of the calling thread's numba thread count.

    The C functions of numba's threading layer when its internals are as expected: the public
    ``numba.get_num_threads``/``set_num_threads`` add Python checks (measured on the 2-core EPYC:
    5.3 us per get, 7.8 us per set, so 21 us per single-threaded region, more than many small
    kernels take), the C calls ~1.5-2 us each. Both act on the same per-thread setting.
    """
    global _numba_switches
    if _numba_switches is None:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        get = getattr(parallel, "_get_num_threads", None)
        put = getattr(parallel, "_set_num_threads", None)
        if callable(get) and callable(put) and get() == numba.get_num_threads():
            _numba_switches = (get, put)
        else:
            _numba_switches = (numba.get_num_threads, numba.set_num_threads)
    return _numba_switches


def numba_thread_count() -> int:
    """The calling thread's numba thread count, read through the cheap C call."""
    return int(_numba_threads()[0]())


@contextmanager
def threads_for(elements: int) -> Iterator[None]:
    """Run the numba kernels inside single-threaded when ``elements`` is small, else unchanged."""
    if elements >= PARALLEL_MIN_ELEMENTS:
        yield
        return
    get, put = _numba_threads()
    previous = int(get())
    if previous == 1:
        yield
        return
    put(1)
    try:
        yield
    finally:
        put(previous)


def bound_call(kernel: Callable[..., Any], args: tuple[Any, ...], elements: int) -> Callable[[], None]:
    """``kernel(*args)`` as a call for ``Tactic.bind``, run as :func:`threads_for` would run it:
    on the calling thread alone when ``elements`` is small (bind inside ``threads_for(elements)``
    too, so that task plans see the thread count the kernel will run with)."""
    if elements >= PARALLEL_MIN_ELEMENTS or numba_thread_count() == 1:
        return functools.partial(kernel, *args)
    get, put = _numba_threads()

    def single_threaded() -> None:
        previous = get()
        put(1)
        try:
            kernel(*args)
        finally:
            put(previous)

    return single_threaded


@contextmanager
def blas_threads_for(flops: int) -> Iterator[None]:
    """Run the BLAS calls inside on the calling thread when the GEMM is small, else unchanged."""
    if flops >= BLAS_PARALLEL_MIN_FLOPS or flops < BLAS_SINGLE_THREAD_BELOW_FLOPS:
        yield
        return
    with blas_single_thread():
        yield


_blas_libraries: list | None = None
_blas_switches: list[tuple[Any, Any]] | None = None
_scanned_with_cython_blas = False


class SingleThreadBlas:
    """Mixin for a tactic class: run the parent tactic with BLAS held to the calling thread
    (see :func:`blas_single_thread`). ``class X(SingleThreadBlas, BlasGemm)``."""

    def run(self, node: Any, inputs: Any, outputs: Any, prepared: Any) -> None:
        """The parent tactic's ``run`` inside :func:`blas_single_thread`."""
        with blas_single_thread():
            super().run(node, inputs, outputs, prepared)  # type: ignore[misc]


def _blas() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries.

    numba loads a second BLAS, scipy's (through ``scipy.linalg.cython_blas``, for ``np.dot`` in
    nopython code), the first time it compiles or loads a kernel. That library is loaded first
    (:func:`~farm.compiler.engine.numba_support.preload_numba_support`), and the scan is redone
    when it appeared after one, so a single-thread region never misses the BLAS that numba's
    kernels call."""
    global _blas_libraries, _blas_switches, _scanned_with_cython_blas
    if _scanned_with_cython_blas and _blas_libraries is not None:
        return _blas_libraries  # numba's BLAS was in the scan: no other library comes later
    from farm.compiler.engine.numba_support import CYTHON_BLAS, preload_numba_support

    preload_numba_support()
    loaded = CYTHON_BLAS in sys.modules
    if _blas_libraries is None or loaded != _scanned_with_cython_blas:
        _blas_libraries = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        _blas_switches = None
        _scanned_with_cython_blas = loaded
    return _blas_libraries


def _raw_switches() -> list[tuple[Any, Any]]:
    """(get, set) thread-count C functions of each BLAS library, called directly: threadpoolctl's
    ``set_num_threads`` costs ~9 us per switch (Python bookkeeping), the C call well under 1 us,
    which matters for the tiny layers the ``*_1t`` tactics run. Empty when threadpoolctl's
    internals differ from what this expects (then :func:`blas_single_thread` uses its public API)."""
    global _blas_switches
    libraries = _blas()  # first: it resets the switches when the loaded libraries changed
    if _blas_switches is None:
        switches: list[tuple[Any, Any]] = []
        for lib in libraries:
            layer = getattr(lib, "threading_layer", None)
            lookup = getattr(lib, "_get_symbol", None)
            if lookup is None or layer == "openmp":
                switches = []
                break
            getter, setter = lookup("openblas_get_num_threads"), lookup("openblas_set_num_threads")
            if getter is None or setter is None:
                switches = []
                break
            switches.append((getter, setter))
        _blas_switches = switches if len(switches) == len(libraries) else []
    return _blas_switches


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run the BLAS calls inside on the calling thread only (restored after).

    The ``*_1t`` tactics use it: a small GEMM does not pay for waking BLAS's second thread, and
    on a busy host that thread may wait a whole scheduler slice for a core (measured: a
    128x256x768 GEMM 0.2 ms on one thread, 45 ms on two while other processes ran). The tuner
    times both forms and keeps the faster on the machine it builds for.
    """
    switches = _raw_switches()
    if switches:
        counts = [int(get()) for get, _ in switches]
        if all(c == 1 for c in counts):
            yield
            return
        for _, put in switches:
            put(1)
        try:
            yield
        finally:
            for (_, put), count in zip(switches, counts, strict=True):
                put(count)
        return
    libraries = _blas()
    previous = [lib.get_num_threads() for lib in libraries]
    if all(p == 1 for p in previous):
        yield
        return
    for lib in libraries:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, count in zip(libraries, previous, strict=True):
            lib.set_num_threads(count)


def blas_single_thread_call(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` as :func:`blas_single_thread` would run it, for ``Tactic.bind``: unchanged when
    every BLAS library already runs on the calling thread alone (the default setting, one pool),
    else inside :func:`blas_single_thread` on every call."""
    switches = _raw_switches()
    if switches:
        single = all(int(get()) == 1 for get, _ in switches)
    else:
        single = all(lib.get_num_threads() == 1 for lib in _blas())
    if single:
        return call

    def on_the_calling_thread() -> None:
        with blas_single_thread():
            call()

    return on_the_calling_thread
