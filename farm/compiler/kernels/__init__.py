"""Kernels: the tactic registry and one sub-package per backend (cpu, cuda).

Only this package imports numba or cupy; cupy is imported lazily by the cuda backend.
"""

from farm.compiler.kernels.registry import (
    Prepared,
    Tactic,
    all_tactics,
    candidates,
    get_tactic,
    load_backend,
    register_tactic,
)

__all__ = ["Prepared", "Tactic", "all_tactics", "candidates", "get_tactic", "load_backend", "register_tactic"]
