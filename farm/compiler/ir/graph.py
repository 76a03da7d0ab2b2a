"""The compiler's intermediate representation: a Graph of Nodes connected by named Values.

Edges are value names, as in ONNX. Every value has exactly one producer: a graph input, a
constant (``Value.const`` set) or one node output. The empty name ``""`` stands for an omitted
optional input. ``Graph.nodes`` is kept in topological order; passes that add nodes out of order
call :meth:`Graph.toposort`.

Shapes are tuples whose entries are ``int`` (static) or ``str`` (symbolic, e.g. ``"batch"``);
``shape is None`` means the rank itself is unknown.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.compiler.ir.dtypes import dtype_name

Dim = int | str
Shape = tuple[Dim, ...]


@dataclass
class Value:
    """A tensor in the graph: name, element type, shape, and the data when it is a constant."""

    name: str
    dtype: str | None = None
    shape: Shape | None = None
    const: np.ndarray | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when the shape is fully known as integers."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __repr__(self) -> str:
        kind = "const " if self.is_const else ""
        return f"Value({kind}{self.name}: {self.dtype}{list(self.shape) if self.shape is not None else '?'})"


@dataclass
class Node:
    """One operation. ``op_type`` is an ONNX op name or one of the fused ops in ``fused.py``.

    ``attrs`` maps attribute names to python values (int, float, str, list, np.ndarray, or a
    :class:`Graph` for control-flow bodies). ``precision`` is set by precision lowering
    (``None`` = the graph's default, FP32).
    """

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""
    precision: str | None = None

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> str:
        """The i-th input name, or "" when absent or omitted."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def __repr__(self) -> str:
        return f"Node({self.op_type} {self.name!r}: {self.inputs} -> {self.outputs})"


class Graph:
    """A dataflow graph: values by name, nodes in topological order, graph inputs and outputs."""

    def __init__(
        self,
        name: str = "graph",
        *,
        opset: int = 17,
        opsets: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.opset = opset
        self.opsets: dict[str, int] = dict(opsets or {"": opset})
        self.metadata: dict[str, str] = {}
        self._names = itertools.count()

    # ------------------------------------------------------------------ building
    def add_value(self, name: str, dtype: str | None = None, shape: Iterable[Dim] | None = None) -> Value:
        """Declare (or update) a value. Existing fields are kept where the new ones are None."""
        v = self.values.get(name)
        if v is None:
            v = Value(name, dtype, tuple(shape) if shape is not None else None)
            self.values[name] = v
        else:
            if dtype is not None:
                v.dtype = dtype
            if shape is not None:
                v.shape = tuple(shape)
        return v

    def add_input(self, name: str, dtype: str, shape: Iterable[Dim]) -> Value:
        v = self.add_value(name, dtype, shape)
        self.inputs.append(name)
        return v

    def add_const(self, name: str | None, data: np.ndarray | Any) -> Value:
        """Add a constant value (an initializer). A fresh name is made when ``name`` is None."""
        arr = np.asarray(data)
        name = name or self.fresh_name("const")
        v = self.values.get(name) or Value(name)
        v.const = arr
        v.dtype = dtype_name(arr.dtype)
        v.shape = tuple(int(d) for d in arr.shape)
        self.values[name] = v
        return v

    def add_node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str] | int = 1,
        attrs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        domain: str = "",
        index: int | None = None,
    ) -> Node:
        """Append a node (or insert it at ``index``). ``outputs`` may be a count of fresh names."""
        if isinstance(outputs, int):
            outputs = [self.fresh_name(f"{op_type.lower()}_out") for _ in range(outputs)]
        node = Node(
            op_type, list(inputs), list(outputs), dict(attrs or {}), name or self.fresh_name(op_type), domain
        )
        for o in outputs:
            if o:
                self.add_value(o)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def fresh_name(self, hint: str = "t") -> str:
        """A value/node name not used in this graph."""
        taken = self.values.keys() | {n.name for n in self.nodes}
        while True:
            candidate = f"{hint}_{next(self._names)}"
            if candidate not in taken:
                return candidate

    # ------------------------------------------------------------------ queries
    def producer(self, name: str) -> Node | None:
        """The node that outputs ``name`` (None for graph inputs and constants)."""
        for n in self.nodes:
            if name in n.outputs:
                return n
        return None

    def producers(self) -> dict[str, Node]:
        """Map of every node output name to its node (build once when looking up many)."""
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self, name: str) -> list[Node]:
        """Nodes that read ``name`` (including inside nested subgraphs' outer-scope reads)."""
        return [n for n in self.nodes if name in n.inputs or name in _outer_reads(n)]

    def consumer_map(self) -> dict[str, list[Node]]:
        """Map of every value name to the nodes that read it."""
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in dict.fromkeys(list(n.inputs) + sorted(_outer_reads(n))):
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def value(self, name: str) -> Value:
        return self.values[name]

    def const(self, name: str) -> np.ndarray | None:
        """The constant data of ``name``, or None when it is not a constant."""
        v = self.values.get(name)
        return None if v is None else v.const

    def is_output(self, name: str) -> bool:
        return name in self.outputs

    def find(self, op_type: str) -> list[Node]:
        return [n for n in self.nodes if n.op_type == op_type]

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for n in self.nodes:
            hist[n.op_type] = hist.get(n.op_type, 0) + 1
        return dict(sorted(hist.items()))

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}: {len(self.nodes)} nodes, inputs={self.inputs}, outputs={self.outputs})"

    # ------------------------------------------------------------------ rewriting
    def replace_all_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` (and the graph outputs) read ``new`` instead."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
            for sub in subgraphs(n):
                rename_outer_reads(sub, old, new)
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_nodes(self, nodes: Iterable[Node]) -> None:
        drop = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in drop]

    def prune(self) -> int:
        """Drop values that nothing defines or reads any more. Returns how many were dropped."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(n.inputs)
            used.update(n.outputs)
            used.update(_outer_reads(n))
        dead = [k for k in self.values if k not in used]
        for k in dead:
            del self.values[k]
        return len(dead)

    def toposort(self) -> None:
        """Reorder nodes topologically (stable). Raises ValueError on a cycle."""
        produced_by = self.producers()
        order: list[Node] = []
        state: dict[int, int] = {}  # 1 = visiting, 2 = done
        for root in self.nodes:
            if state.get(id(root)) == 2:
                continue
            stack: list[tuple[Node, Iterator[str]]] = [(root, iter(_all_reads(root)))]
            state[id(root)] = 1
            while stack:
                node, it = stack[-1]
                advanced = False
                for name in it:
                    p = produced_by.get(name)
                    if p is None or state.get(id(p)) == 2:
                        continue
                    if state.get(id(p)) == 1:
                        raise ValueError(f"graph has a cycle through node {p.name!r} ({p.op_type})")
                    state[id(p)] = 1
                    stack.append((p, iter(_all_reads(p))))
                    advanced = True
                    break
                if not advanced:
                    stack.pop()
                    state[id(node)] = 2
                    order.append(node)
        self.nodes = order

    def copy(self) -> Graph:
        """A deep copy (constants are shared: they are treated as immutable)."""
        memo: dict[int, Any] = {}
        for v in self.values.values():
            if v.const is not None:
                memo[id(v.const)] = v.const
        return copy.deepcopy(self, memo)


def subgraphs(node: Node) -> list[Graph]:
    """The control-flow bodies held in a node's attributes (If branches, Loop/Scan bodies)."""
    out: list[Graph] = []
    for a in node.attrs.values():
        if isinstance(a, Graph):
            out.append(a)
        elif isinstance(a, list) and a and isinstance(a[0], Graph):
            out.extend(a)
    return out


def scope_reads(node: Node) -> list[str]:
    """The enclosing-scope values a node's subgraphs read (If/Loop/Scan bodies), sorted by name;
    empty for a node without subgraphs."""
    return sorted(_outer_reads(node)) if subgraphs(node) else []


def run_inputs(node: Node) -> list[str]:
    """Every value a node reads when it runs: its inputs, then :func:`scope_reads`. The runtime
    passes a tactic one array per name, in this order."""
    return [*node.inputs, *scope_reads(node)]


def _outer_reads(node: Node) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope."""
    reads: set[str] = set()
    for g in subgraphs(node):
        local = set(g.inputs) | {k for k, v in g.values.items() if v.const is not None}
        for n in g.nodes:
            local.update(n.outputs)
        for n in g.nodes:
            reads.update(i for i in n.inputs if i and i not in local)
            reads.update(r for r in _outer_reads(n) if r not in local)
        reads.update(o for o in g.outputs if o not in local)
    return reads


def _all_reads(node: Node) -> list[str]:
    return [i for i in node.inputs if i] + sorted(_outer_reads(node))


def rename_outer_reads(g: Graph, old: str, new: str) -> None:
    """Make ``g`` (a body) and the bodies nested in it read ``new`` wherever they read the
    enclosing-scope value ``old``; a body that defines ``old`` itself keeps it."""
    local = (
        set(g.inputs)
        | {o for n in g.nodes for o in n.outputs}
        | {k for k, v in g.values.items() if v.const is not None}
    )
    if old in local:
        return
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        for sub in subgraphs(n):
            rename_outer_reads(sub, old, new)
    g.outputs = [new if o == old else o for o in g.outputs]
