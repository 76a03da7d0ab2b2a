"""A cheaper first numba call for a loaded engine.

The first time a process compiles a numba function or loads one from numba's cache, numba's CPU
target imports its implementation registries. One of them (``numba.np.arraymath``) checks for a
BLAS with ``import scipy.linalg.cython_blas``, and importing that submodule runs
``scipy.linalg``'s package ``__init__``, which imports most of scipy.linalg (and, through scipy's
array-API layer, ``numpy.f2py``): about half of numba's whole first-call setup (0.2-0.4 s of 0.4-0.8
s measured on the development machine), for a module the runtime never uses.

numba only needs the extension module itself (it takes the BLAS function pointers of
``np.dot``/``@`` in nopython code from its ``__pyx_capi__``). :func:`preload_numba_support` loads
that extension alone under its own name, so numba's import finds it in ``sys.modules`` and the
package ``__init__`` does not run. A later ``import scipy.linalg`` in the same process imports the
package as usual; ``import scipy.linalg.cython_blas`` then gives the same extension module.

Skipped when ``scipy.linalg`` is already imported, when ``FARM_PRELOAD_CYTHON_BLAS=0``, and on any
failure (numba then imports scipy.linalg itself, exactly as without this).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

CYTHON_BLAS = "scipy.linalg.cython_blas"

_attempted = False


def _extension_path() -> str | None:
    spec = importlib.util.find_spec("scipy")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "linalg", "cython_blas" + suffix)
            if os.path.isfile(path):
                return path
    return None


def preload_numba_support() -> bool:
    """Load ``scipy.linalg.cython_blas`` without its package (see the module docstring). Returns
    whether this call loaded it; cheap after the first call."""
    global _attempted
    if _attempted:
        return False
    _attempted = True
    if os.environ.get("FARM_PRELOAD_CYTHON_BLAS", "1") == "0":
        return False
    if "scipy.linalg" in sys.modules or CYTHON_BLAS in sys.modules:
        return False
    try:
        path = _extension_path()
        if path is None:
            return False
        spec = importlib.util.spec_from_file_location(CYTHON_BLAS, path)
        if spec is None or spec.loader is None:
            return False
        module = importlib.util.module_from_spec(spec)
        sys.modules[CYTHON_BLAS] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(CYTHON_BLAS, None)
            raise
    except Exception:  # any surprise: leave it to numba's own import
        return False
    return True
