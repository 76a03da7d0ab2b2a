"""The tactic registry.

A *tactic* is one implementation of one (fused) op for one backend and precision. Tactics are
classes registered with :func:`register_tactic`; the autotuner asks :func:`candidates` for every
tactic that supports a node, times each, validates each against the reference, and records the
winner's ``name`` in the engine's schedule. At load time the runtime looks the name up again with
:func:`get_tactic`.

Life of a tactic for one node:

1. ``supports(node, graph)``: may this tactic run this node (attributes, dtypes, constant weights)?
2. ``prepare(node, graph) -> Prepared``: done once at build time. Repacks or quantizes constant
   weights into ``Prepared.tensors`` (stored in the engine file) and records JSON-able
   ``Prepared.params`` (stored in the manifest). Input positions listed in ``Prepared.replaces``
   are not needed raw at run time: the runtime passes ``None`` there and the engine does not store
   that constant unless another node needs it.
3. ``run(node, inputs, outputs, prepared)``: computes the node. ``inputs`` holds one array (or None)
   per node input, ``""`` inputs as None; ``outputs`` holds preallocated arrays of the exact output
   shapes and dtypes, which ``run`` fills. ``prepared.scratch`` is a per-node dict for workspaces
   that survives between runs and is never serialized.

Loading: a backend package (``farm.compiler.kernels.cpu``) registers nothing when imported; its
``load_tactics()`` imports every tactic module it holds. :func:`candidates`, :func:`all_tactics`
and :func:`load_backend` load a whole backend (the builder needs every tactic); the runtime asks
:func:`get_tactic` for the tactics of one schedule with the module each was defined in
(:func:`tactic_module`, recorded in the engine file), so loading an engine imports only those
modules (numba builds a dispatcher per ``@njit`` function at import).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from farm.compiler.ir import Graph, Node

BACKEND_MODULES: dict[str, str] = {
    "cpu": "farm.compiler.kernels.cpu",
    "cuda": "farm.compiler.kernels.cuda",
}


@dataclass
class Prepared:
    """What ``Tactic.prepare`` produced for one node."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    replaces: frozenset[int] = frozenset()
    scratch: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class Tactic:
    """Base class of every tactic. Subclasses set the class variables and override ``run``."""

    name: ClassVar[str] = ""
    op_types: ClassVar[tuple[str, ...]] = ()
    backend: ClassVar[str] = "cpu"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # Heuristic rank used when the tuner does not time (tuning level 0): higher is preferred.
    priority: ClassVar[int] = 0
    # True when ``run`` can write into non-contiguous output views (used by concat elision).
    accepts_strided_output: ClassVar[bool] = False
    # (input index, output index) pairs that may share one buffer (the op works in place).
    inplace: ClassVar[tuple[tuple[int, int], ...]] = ()
    # False when this CPU lacks an instruction the tactic's kernels are compiled with (AVX-512
    # VNNI): an engine naming it cannot load here even with the device-mismatch override.
    host_ok: ClassVar[bool] = True

    def supports(self, node: Node, graph: Graph) -> bool:
        """Whether this tactic can run ``node`` of ``graph``. Default: any node of its op types."""
        return True

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        """Build-time work (weight repacking, quantization). Default: nothing."""
        return Prepared()

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        """Compute ``node``, writing into ``outputs``."""
        raise NotImplementedError(f"tactic {self.name} does not implement run()")

    def bind(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> Callable[[], None] | None:
        """A call that computes ``node`` on exactly these arrays, with the Python ``run`` does per
        call (shapes, views, task plans) done once, or None (the default: the runtime calls
        ``run``). The runtime binds a step whose arrays are the same every run (arena views,
        constants) once per shape signature and thread setting, and calls the result every run:
        at batch 1 that Python was ~5 us a step, 11 % of MobileNet's run. The call must compute
        what ``run`` computes; it may keep references to the arrays and to scratch it makes."""
        return None

    def __repr__(self) -> str:
        return f"<tactic {self.name}>"


def binds(tactic: Tactic) -> bool:
    """Whether the runtime may call ``tactic.bind``: its class's ``bind`` must be defined where
    its ``run`` is or below, so that a subclass that wraps ``run`` (``SingleThreadBlas``) is
    never bypassed by a ``bind`` it inherited from the class whose ``run`` it wraps."""
    mro = type(tactic).__mro__
    run_owner = next(c for c in mro if "run" in c.__dict__)
    bind_owner = next(c for c in mro if "bind" in c.__dict__)
    return bind_owner is not Tactic and issubclass(bind_owner, run_owner)


class BackendUnavailableError(RuntimeError):
    """A profile names a backend this installation does not have."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


_TACTICS: dict[str, Tactic] = {}
_BY_OP: dict[str, list[Tactic]] = {}


def register_tactic(cls: type[Tactic]) -> type[Tactic]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name or not cls.op_types:
        raise ValueError(f"tactic {cls.__qualname__} must set name and op_types")
    if cls.name in _TACTICS and type(_TACTICS[cls.name]) is not cls:
        raise ValueError(f"two tactics are named {cls.name!r}")
    tactic = cls()
    _TACTICS[cls.name] = tactic
    for op in cls.op_types:
        bucket = _BY_OP.setdefault(op, [])
        bucket[:] = [t for t in bucket if t.name != cls.name] + [tactic]
    return cls


_LOADED_BACKENDS: set[str] = set()
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _backend_package(backend: str) -> str:
    try:
        return BACKEND_MODULES[backend]
    except KeyError:
        raise ValueError(
            f"unknown backend {backend!r}; known: {', '.join(sorted(BACKEND_MODULES))}"
        ) from None


def _import_backend(backend: str) -> Any:
    """The backend's package (imported; cheap: it registers nothing by itself)."""
    module = _backend_package(backend)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # a dependency of the backend is missing: keep that message
        available = ", ".join(b for b, m in BACKEND_MODULES.items() if _importable(m))
        raise BackendUnavailableError(
            f"the {backend!r} backend is not part of this version of Engine Farm (available: {available})"
        ) from None


def load_backend(backend: str) -> None:
    """Import all of a backend's tactic modules (CuPy is imported only when ``cuda`` is asked for)."""
    if backend in _LOADED_BACKENDS:
        return
    package = _import_backend(backend)
    load_tactics = getattr(package, "load_tactics", None)
    if load_tactics is not None:
        load_tactics()
    # Marked only when complete: a tactic module that asks for the whole backend while it is being
    # imported (reduced_float's twins) loads the rest instead of seeing a partial registry.
    _LOADED_BACKENDS.add(backend)


def tactic_module(name: str) -> str:
    """The module that defines the tactic ``name`` (what an engine file records to load it)."""
    return type(get_tactic(name)).__module__


def _module_hints(name: str, module: str | None) -> list[str]:
    """Modules that probably define tactic ``name``: the recorded ``module`` if it lies inside the
    tactic's backend package (a manifest never makes us import anything else), then the naming
    convention ``<backend>.<module>.<tactic>``."""
    backend, _, rest = name.partition(".")
    package = BACKEND_MODULES.get(backend)
    if package is None:
        return []
    hints = []
    if module and module.startswith(package + ".") and _MODULE_NAME.fullmatch(module):
        hints.append(module)
    part = rest.split(".", 1)[0]
    if part.isidentifier():
        hints.append(f"{package}.{part}")
    return hints


def get_tactic(name: str, module: str | None = None) -> Tactic:
    """The tactic registered under ``name``. Imports ``module`` (where an engine file says the
    tactic is defined) or the module its name suggests first, and the whole backend if that does
    not register it."""
    if name not in _TACTICS:
        backend = name.split(".", 1)[0]
        if backend in BACKEND_MODULES and backend not in _LOADED_BACKENDS:
            _import_backend(backend)
            for hint in _module_hints(name, module):
                if _importable(hint):
                    importlib.import_module(hint)
                if name in _TACTICS:
                    break
        if name not in _TACTICS:
            load_backend(backend)
    try:
        return _TACTICS[name]
    except KeyError:
        raise KeyError(f"no tactic named {name!r} is registered") from None


def candidates(
    node: Node, graph: Graph, *, backend: str = "cpu", precisions: Sequence[str] = ("fp32",)
) -> list[Tactic]:
    """Every registered tactic of ``backend`` that supports ``node`` in one of ``precisions``,
    highest heuristic priority first."""
    load_backend(backend)
    found = [
        t
        for t in _BY_OP.get(node.op_type, [])
        if t.backend == backend and any(p in t.precisions for p in precisions) and t.supports(node, graph)
    ]
    # Ties broken by name, so the order never depends on which modules happened to load first.
    return sorted(found, key=lambda t: (-t.priority, t.name))


def all_tactics(backend: str | None = None) -> list[Tactic]:
    """All registered tactics (of one backend when given), by name."""
    if backend is not None:
        load_backend(backend)
    return sorted(
        (t for t in _TACTICS.values() if backend is None or t.backend == backend), key=lambda t: t.name
    )
