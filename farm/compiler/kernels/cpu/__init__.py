"""The CPU backend: numpy (BLAS) and numba tactics.

Importing this package registers every tactic defined in its modules.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
