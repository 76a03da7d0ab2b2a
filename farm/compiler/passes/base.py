"""What every pass is built from: the :class:`Pass` interface, a read-only :class:`GraphView` for
matching, and a :class:`GraphEdit` that collects a pass's changes and applies them to the graph once.

A rewrite pass (:class:`RewritePass`) is written as two methods, in the style of onnxruntime's
fusions: ``match`` is the guard (pure: it inspects the graph and returns a match or ``None`` to
decline), ``rewrite`` records the replacement in the edit. Matches never overlap: nodes a match
consumes are claimed and later matches that touch them are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from farm.compiler.ir import Graph, Node, Value
from farm.compiler.ir.dtypes import FLOAT_TYPES
from farm.compiler.ir.graph import Dim, Shape


@dataclass
class PassResult:
    """What one run of one pass changed: counts keyed by an action phrase.

    Keys read as "<verb> <object>", e.g. ``"fused LayerNorm"``; the report prints them as
    "fused 12 LayerNorm".
    """

    changes: dict[str, int] = field(default_factory=dict)

    def add(self, action: str, count: int = 1) -> None:
        if count:
            self.changes[action] = self.changes.get(action, 0) + count

    @property
    def changed(self) -> int:
        return sum(self.changes.values())


class Pass:
    """A graph transformation. Subclasses set ``name`` and implement :meth:`run`.

    The class docstring's first paragraph states the rule the pass applies, Hidet style
    (``pattern => replacement``).
    """

    name: ClassVar[str] = ""

    def run(self, graph: Graph) -> PassResult:
        """Transform ``graph`` in place and say what changed."""
        raise NotImplementedError

    @classmethod
    def rule(cls) -> str:
        """The rule from the class docstring: its first paragraph, joined into one line."""
        paragraph = (cls.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(line.strip() for line in paragraph.splitlines())


class GraphView:
    """Fast read-only lookups over a graph that does not change while a pass matches."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._producers = graph.producers()
        self._consumers = graph.consumer_map()
        self._outputs = set(graph.outputs)
        self._position = {id(n): i for i, n in enumerate(graph.nodes)}

    def producer(self, name: str) -> Node | None:
        """The node producing ``name`` (None for graph inputs, constants and "")."""
        return self._producers.get(name) if name else None

    def producer_of(self, name: str, op_types: str | Sequence[str]) -> Node | None:
        """The producer of ``name`` when its op type is one of ``op_types``."""
        node = self.producer(name)
        if node is None:
            return None
        wanted = (op_types,) if isinstance(op_types, str) else tuple(op_types)
        return node if node.op_type in wanted else None

    def consumers(self, name: str) -> list[Node]:
        return self._consumers.get(name, [])

    def is_output(self, name: str) -> bool:
        return name in self._outputs

    def position(self, node: Node) -> int:
        return self._position[id(node)]

    def only_consumer(self, name: str) -> Node | None:
        """The single node reading ``name``, when exactly one node reads it (once) and it is not a
        graph output; otherwise None. This is the guard that makes an intermediate value removable.
        """
        readers = self._consumers.get(name, [])
        if len(readers) != 1 or name in self._outputs:
            return None
        node = readers[0]
        return node if node.inputs.count(name) == 1 else None

    def is_internal(self, name: str, count: int = 1) -> bool:
        """Whether ``name`` is read by exactly ``count`` nodes and is not a graph output."""
        return name not in self._outputs and len(self._consumers.get(name, [])) == count

    def value(self, name: str) -> Value | None:
        return self.graph.values.get(name)

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.const(name) if name else None

    def scalar(self, name: str) -> float | None:
        """The value of a constant holding exactly one number (any rank), else None."""
        data = self.const(name)
        if data is None or data.size != 1 or data.dtype.kind not in "fiub":
            return None
        return float(data.reshape(-1)[0])

    def ints(self, name: str) -> list[int] | None:
        """A constant integer vector as a python list, else None."""
        data = self.const(name)
        if data is None or data.dtype.kind not in "iu" or data.ndim > 1:
            return None
        return [int(v) for v in data.reshape(-1)]

    def shape(self, name: str) -> Shape | None:
        v = self.graph.values.get(name)
        return None if v is None else v.shape

    def dtype(self, name: str) -> str | None:
        v = self.graph.values.get(name)
        return None if v is None else v.dtype

    def is_float(self, name: str) -> bool:
        return self.dtype(name) in FLOAT_TYPES

    def other_input(self, node: Node, name: str) -> str | None:
        """For a binary node reading ``name`` once, the other input."""
        if len(node.inputs) != 2 or node.inputs.count(name) != 1:
            return None
        return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


class GraphEdit:
    """The changes one pass makes, applied together by :meth:`apply`.

    New nodes are placed just before the node named as their anchor; removed nodes go; renamed
    values are rewired; then the graph is re-sorted topologically (stable) and pruned.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._claimed: set[int] = set()
        self._remove: list[Node] = []
        self._insert: dict[int, list[Node]] = {}
        self._renames: list[tuple[str, str]] = []

    def is_claimed(self, node: Node) -> bool:
        return id(node) in self._claimed

    def any_claimed(self, nodes: Iterable[Node]) -> bool:
        return any(id(n) in self._claimed for n in nodes)

    def claim(self, nodes: Iterable[Node]) -> None:
        self._claimed.update(id(n) for n in nodes)

    def remove(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self._claimed.add(id(n))
            self._remove.append(n)

    def new_node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str],
        attrs: dict[str, Any] | None = None,
        *,
        before: Node,
        name_hint: str | None = None,
    ) -> Node:
        """Create a node (not yet in the graph) that will be placed just before ``before``."""
        node = Node(
            op_type,
            list(inputs),
            list(outputs),
            dict(attrs or {}),
            self.graph.fresh_name(name_hint or op_type),
        )
        self._insert.setdefault(id(before), []).append(node)
        return node

    def new_value(self, hint: str, dtype: str | None, shape: Iterable[Dim] | None) -> str:
        """Declare a fresh intermediate value and return its name."""
        name = self.graph.fresh_name(hint)
        self.graph.add_value(name, dtype, shape)
        return name

    def new_const(self, hint: str, data: np.ndarray) -> str:
        """Add a fresh constant and return its name."""
        return self.graph.add_const(self.graph.fresh_name(hint), data).name

    def rename(self, old: str, new: str) -> None:
        """Make every reader of ``old`` read ``new`` (``old`` must not be a graph output)."""
        self._renames.append((old, new))

    @property
    def empty(self) -> bool:
        return not (self._remove or self._insert or self._renames)

    def apply(self) -> None:
        """Change the graph once: insert, remove, rewire, re-sort, prune."""
        if self.empty:
            return
        drop = {id(n) for n in self._remove}
        nodes: list[Node] = []
        for node in self.graph.nodes:
            nodes.extend(self._insert.get(id(node), []))
            if id(node) not in drop:
                nodes.append(node)
        self.graph.nodes = nodes
        for old, new in self._resolved_renames():
            self.graph.replace_all_uses(old, new)
        self.graph.toposort()
        self.graph.prune()

    def _resolved_renames(self) -> list[tuple[str, str]]:
        # Chains (a -> b, b -> c) are followed so that every reader ends at the final name.
        target = dict(self._renames)
        out = []
        for old in target:
            new = target[old]
            seen = {old}
            while new in target and new not in seen:
                seen.add(new)
                new = target[new]
            out.append((old, new))
        return out


M = TypeVar("M")


class RewritePass(Pass, Generic[M]):
    """A pass that matches at each node (the guard) and records a rewrite for each match.

    ``match`` returns a match object or None to decline; ``rewrite`` records the change in the
    edit and returns the action phrase to count (e.g. ``"fused LayerNorm"``), or None when it
    decided not to change anything after all.
    """

    anchor_ops: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: Graph) -> PassResult:
        result = PassResult()
        view = GraphView(graph)
        edit = GraphEdit(graph)
        for node in list(graph.nodes):
            if self.anchor_ops and node.op_type not in self.anchor_ops:
                continue
            if edit.is_claimed(node):
                continue
            found = self.match(node, view)
            if found is None or edit.any_claimed(self.nodes_of(found)):
                continue
            action = self.rewrite(found, view, edit)
            if action:
                edit.claim(self.nodes_of(found))
                result.add(action)
        edit.apply()
        return result

    def match(self, node: Node, view: GraphView) -> M | None:
        raise NotImplementedError

    def nodes_of(self, found: M) -> list[Node]:
        """The existing nodes a match touches (claimed so matches do not overlap)."""
        nodes = getattr(found, "nodes", None)
        return list(nodes) if nodes is not None else []

    def rewrite(self, found: M, view: GraphView, edit: GraphEdit) -> str | None:
        raise NotImplementedError


def broadcast_shapes(a: Shape, b: Shape) -> Shape | None:
    """Numpy broadcasting of two (possibly symbolic) shapes, or None when it cannot be decided."""
    rank = max(len(a), len(b))
    pa = (1,) * (rank - len(a)) + tuple(a)
    pb = (1,) * (rank - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(pa, pb, strict=True):
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            return None
    return tuple(out)


def fits_into(small: Shape | None, big: Shape | None) -> bool:
    """Whether ``small`` broadcasts to ``big`` without changing ``big`` (an in-place add)."""
    if small is None or big is None or len(small) > len(big):
        return False
    return broadcast_shapes(small, big) == tuple(big)


def channel_vector(data: np.ndarray, rank: int, axis: int) -> np.ndarray | None:
    """``data`` as a vector over ``axis`` of a rank-``rank`` tensor, when it broadcasts only along that
    axis (e.g. a Conv bias stored as ``[1, C, 1, 1]``); a size-1 ``data`` is returned as size 1."""
    if data.ndim > rank:
        return None
    full = (1,) * (rank - data.ndim) + data.shape
    axis = axis % rank
    if any(d != 1 for i, d in enumerate(full) if i != axis):
        return None
    return data.reshape(-1)


def is_close(value: float | None, target: float, rtol: float = 1e-4) -> bool:
    """Whether a scalar constant equals ``target`` up to float32 rounding of the exporter."""
    return value is not None and abs(value - target) <= rtol * abs(target) + 1e-7


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank


def reduce_axes(node: Node, view: GraphView) -> list[int] | None:
    """The ``axes`` of a Reduce* node (attribute in older opsets, input in newer), or None when
    they are not known (dynamic, or reduce-all by default)."""
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = view.ints(node.inputs[1])
    if axes is None:
        return None
    return [int(a) for a in axes]
