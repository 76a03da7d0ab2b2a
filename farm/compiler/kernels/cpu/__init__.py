"""The CPU backend: numpy (BLAS) and numba tactics.

Importing this package registers nothing (importing a tactic module builds its numba dispatchers,
which a loaded engine should pay for only for the tactics its schedule names). ``load_tactics()``
imports every module of this package whose name does not start with ``_``: a new tactic module is
registered by adding its file here, nothing else. ``farm.compiler.kernels.registry.load_backend``
calls it whenever the whole backend is needed (the builder and tuner, ``all_tactics``,
``candidates``).
"""

import importlib
import pkgutil


def load_tactics() -> None:
    """Import (and so register) every tactic module of the CPU backend."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
