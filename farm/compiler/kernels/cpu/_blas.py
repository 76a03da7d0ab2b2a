"""Single-threaded SGEMM callable from numba kernels (numpy's own OpenBLAS, raw pointers).

Why: a conv or GEMM tactic that calls BLAS from Python hands the cores from numba's thread pool
(im2col, epilogue) to OpenBLAS's and back, and on a 2-core host the two pools taking turns cost
more than the second core gains (ResNet-18 at batch 1: 86 ms with both pools at 2 threads, 74-78
ms with either pool at 1). Calling ``sgemm`` *inside* a numba ``prange`` body, one output tile per
task and BLAS on the calling thread, keeps every core in numba's pool for the whole layer: im2col,
GEMM and epilogue of a tile run back to back on one core while the tile is in its cache.

How: the C symbol of numpy's BLAS is registered with LLVM under a fixed name
(``llvmlite.binding.add_symbol``) and declared to numba as an ``ExternalFunction``, so compiled
kernels refer to it by name and stay cacheable (``cache=True``); a ctypes function pointer would
be baked into the machine code as an address and could not be cached. The pointer arguments are
passed as ``uintp`` (``array.ctypes.data`` plus a byte offset), which the x86-64 and AArch64 C
calling conventions pass exactly like pointers.

:data:`AVAILABLE` is False when numpy's BLAS exposes no CBLAS ``sgemm`` this module recognizes;
tactics built on :func:`sgemm_rows` must then decline (``supports`` returns False). Callers must
hold BLAS to one thread around the kernel (``_threads.blas_single_thread``): a multithreaded
OpenBLAS called from two numba threads at once would start its own pool inside each.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import numpy as np
from llvmlite import binding
from numba import njit, types

_SYMBOL = "farm_cblas_sgemm"

# (symbol, integer width) in the order tried: numpy >= 2 wheels ship scipy-openblas64 (ILP64,
# prefixed names); other builds export plain CBLAS with 64- or 32-bit integers.
_CANDIDATES = (
    ("scipy_cblas_sgemm64_", 64),
    ("cblas_sgemm64_", 64),
    ("scipy_cblas_sgemm", 32),
    ("cblas_sgemm", 32),
)


def _blas_paths() -> list[str]:
    """Files of the BLAS numpy loaded (threadpoolctl), then numpy's bundled libraries."""
    paths: list[str] = []
    try:
        from threadpoolctl import ThreadpoolController

        paths += [lib.filepath for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    except Exception:  # noqa: BLE001 - best effort: fall back to the bundled folder
        pass
    bundled = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    paths += sorted(glob.glob(os.path.join(bundled, "*openblas*.so*")))
    return paths


def _register() -> int:
    """Register numpy's CBLAS sgemm as :data:`_SYMBOL`; its integer width, or 0 if none found."""
    for path in _blas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name, width in _CANDIDATES:
            fn = getattr(lib, name, None)
            if fn is not None:
                binding.add_symbol(_SYMBOL, ctypes.cast(fn, ctypes.c_void_p).value)
                return width
    return 0


INT_BITS = _register()
AVAILABLE = INT_BITS != 0
_INT = types.int64 if INT_BITS != 32 else types.int32

# cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
_cblas_sgemm: Any = types.ExternalFunction(
    _SYMBOL,
    types.void(
        types.intc, types.intc, types.intc, _INT, _INT, _INT,
        types.float32, types.uintp, _INT, types.uintp, _INT,
        types.float32, types.uintp, _INT,
    ),
)  # fmt: skip

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_F32 = 4  # bytes


@njit(cache=True, nogil=True, inline="always")
def sgemm_at(trans_b, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """``C = alpha * A @ op(B) + beta * C`` on row-major sub-matrices of C-contiguous float32
    arrays of any rank: A starts at flat element ``a_off`` of ``a`` with leading dimension
    ``lda`` (likewise B, C); ``op(B)`` is B transposed when ``trans_b``. Nothing is copied."""
    if m <= 0 or n <= 0:
        return
    _cblas_sgemm(
        ROW_MAJOR, NO_TRANS, TRANS if trans_b else NO_TRANS, m, n, k, np.float32(alpha),
        a.ctypes.data + np.uint64(a_off * _F32), lda,
        b.ctypes.data + np.uint64(b_off * _F32), ldb,
        np.float32(beta), c.ctypes.data + np.uint64(c_off * _F32), ldc,
    )  # fmt: skip


@njit(cache=True, nogil=True, inline="always")
def sgemm_tile(a, a_row, b, b_row, b_col, c, c_row, c_col, m, n, k, beta):
    """``C[c_row:+m, c_col:+n] = A[a_row:+m, :k] @ B[b_row:+k, b_col:+n] (+ beta * C)`` for
    C-contiguous 2-D float32 arrays (leading dimension = row length)."""
    lda, ldb, ldc = a.shape[1], b.shape[1], c.shape[1]
    sgemm_at(
        False, m, n, k, 1.0, a, a_row * lda, lda, b, b_row * ldb + b_col, ldb,
        beta, c, c_row * ldc + c_col, ldc,
    )  # fmt: skip
