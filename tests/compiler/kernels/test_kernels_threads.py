"""The kernels' thread helpers: single-threaded regions restore what they changed."""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_info

from farm.compiler.kernels.cpu import _threads
from farm.compiler.kernels.cpu._threads import (
    BLAS_PARALLEL_MIN_FLOPS,
    BLAS_SINGLE_THREAD_BELOW_FLOPS,
    PARALLEL_MIN_ELEMENTS,
    blas_single_thread,
    blas_threads_for,
    threads_for,
)


def _blas_threads() -> list[int]:
    _threads._blas()  # loads numba's BLAS (scipy's) first, as any single-thread region does
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_single_thread_regions_know_every_loaded_blas_numba_s_included() -> None:
    """numba's kernels call scipy's BLAS, loaded on numba's first compile: the regions hold it too."""
    _blas_threads()
    loaded = {i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"}
    assert {lib.filepath for lib in _threads._blas()} == loaded
    with blas_single_thread():
        assert all(n == 1 for n in _blas_threads())


def test_blas_single_thread_is_one_thread_inside_and_restores() -> None:
    before = _blas_threads()
    with blas_single_thread():
        assert all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before


def test_threads_for_small_work_runs_numba_on_one_thread() -> None:
    before = numba.get_num_threads()
    with threads_for(PARALLEL_MIN_ELEMENTS - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(PARALLEL_MIN_ELEMENTS):
        assert numba.get_num_threads() == before


def test_threads_for_restores_a_count_set_through_the_public_api() -> None:
    """The C-level switch and numba's public API act on the same per-thread setting."""
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        with threads_for(0):
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(before)


def test_threads_for_through_the_public_api_when_no_raw_switch(monkeypatch) -> None:
    monkeypatch.setattr(_threads, "_numba_switches", (numba.get_num_threads, numba.set_num_threads))
    test_threads_for_small_work_runs_numba_on_one_thread()


def test_blas_single_thread_through_threadpoolctl_when_no_raw_switch(monkeypatch) -> None:
    """The public threadpoolctl path (used when its internals are not as expected) also works."""
    monkeypatch.setattr(_threads, "_blas_switches", [])
    test_blas_single_thread_is_one_thread_inside_and_restores()


def test_blas_threads_for_holds_small_gemms_to_one_thread() -> None:
    before = _blas_threads()
    with blas_threads_for(BLAS_PARALLEL_MIN_FLOPS - 1):
        assert all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before
    for flops in (BLAS_PARALLEL_MIN_FLOPS, BLAS_SINGLE_THREAD_BELOW_FLOPS - 1):
        with blas_threads_for(flops):
            assert _blas_threads() == before
