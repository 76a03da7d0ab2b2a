"""The CPU backend: numpy (BLAS) and numba tactics.

Importing this package registers nothing (importing a tactic module builds its numba dispatchers,
which a loaded engine should pay for only for the tactics its schedule names). ``load_tactics()``
imports every module of this package whose name does not start with ``_``: a new tactic module is
registered by adding its file here, nothing else. ``farm.compiler.kernels.registry.load_backend``
calls it whenever the whole backend is needed (the builder and tuner, ``all_tactics``,
``candidates``).
"""

import hashlib
import importlib
import os
import pkgutil
from pathlib import Path


def sources_digest(folder: Path) -> str:
    """16 hex digits of the sha256 over the names and bytes of the ``*.py`` files in ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _use_versioned_numba_cache() -> None:
    """Point numba's on-disk cache (``cache=True``) at a folder named for these sources.

    numba invalidates a cached kernel by its own file's timestamp and size only, so a kernel that
    inlines a helper from another module (``_vecmath``, ``_epilogue``, ``_windows``) keeps running the
    old helper after a change to that module alone: stale machine code, silently wrong results.
    Keying the folder by a hash of every source file of this backend makes any change start a fresh
    cache. The base folder is ``NUMBA_CACHE_DIR`` when set, else ``~/.cache/engine-farm/numba``
    (``XDG_CACHE_HOME`` honoured); each source version gets its own sub-folder there.
    """
    from numba.core import config

    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(cache_home, "engine-farm", "numba")
    config.CACHE_DIR = os.path.join(base, sources_digest(Path(__file__).parent))  # type: ignore[attr-defined]


_use_versioned_numba_cache()


def load_tactics() -> None:
    """Import (and so register) every tactic module of the CPU backend."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
