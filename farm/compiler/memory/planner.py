"""Memory planning: liveness over the final schedule, then an arena with offsets.

Rules, in the order they are applied:

1. *Graph outputs* get a fresh array per run (the caller keeps them), never arena memory.
2. *Concat elision*: a Concat marked ``elide=1`` by the passes gets one buffer; each input whose
   producer's tactic ``accepts_strided_output``, which only that Concat reads (once) and which is
   not a graph output, is written by its producer straight into its slice of that buffer. The
   Concat then copies only the remaining inputs (or does nothing).
3. *Zero-copy views*: Reshape / Flatten / Squeeze / Unsqueeze / Identity of a contiguous value
   are views of their input's storage; no kernel runs.
4. *In place*: a node whose tactic declares ``inplace=(i, o)`` writes output ``o`` into input
   ``i``'s buffer when that buffer is not read after this node and shapes and dtypes agree.
5. Every remaining node output gets its own buffer, live from its first write to its last read.

Buffers are placed in one arena, each at the best-fitting gap (64-byte aligned) among the buffers
whose lifetimes overlap its own; several placement orders are tried (largest first, largest
size x lifetime first, ...) and the smallest arena is kept. The plan is made for the largest shapes of the
declared range; smaller runs use the same offsets (their tensors are never larger).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.compiler.ir import Graph, Node, numpy_dtype, run_inputs
from farm.compiler.kernels.registry import Tactic

ALIGNMENT = 64
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})

# How a value's memory is found at run time.
INPUT, CONST, OUTPUT, ARENA, ALIAS, SLICE, DYNAMIC = (
    "input",
    "const",
    "output",
    "arena",
    "alias",
    "slice",
    "dynamic",
)


def align(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """``nbytes`` rounded up to a multiple of ``alignment``."""
    return (nbytes + alignment - 1) // alignment * alignment


@dataclass
class Buffer:
    """One region of the arena: its size, the schedule steps it is live over, and its offset."""

    index: int
    size: int
    first: int
    last: int
    offset: int = -1
    values: list[str] = field(default_factory=list)

    def overlaps(self, other: Buffer) -> bool:
        """Whether the two buffers are live at a common step."""
        return self.first <= other.last and other.first <= self.last


@dataclass
class ValuePlacement:
    """Where one value lives: ``kind`` is one of input/const/output/arena/alias/slice/dynamic.

    arena: ``buffer`` (whole-buffer view); alias: a reshaped view of value ``of``; slice: the
    ``index``-th input's slice along ``axis`` of Concat output ``of``.
    """

    kind: str
    buffer: int | None = None
    of: str | None = None
    axis: int | None = None
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @staticmethod
    def from_json(data: dict[str, Any]) -> ValuePlacement:
        return ValuePlacement(**data)


@dataclass
class MemoryPlan:
    """The arena layout of a schedule plus the facts the build report shows."""

    alignment: int
    arena_size: int
    buffers: list[Buffer]
    values: dict[str, ValuePlacement]
    view_nodes: list[str]  # nodes that run as zero-copy views (no kernel)
    elided_concats: dict[str, list[int]]  # concat node -> input positions written in place by producers
    inplace_nodes: list[str]
    naive_bytes: int
    lower_bound_bytes: int

    def summary(self) -> dict[str, Any]:
        """The figures for the build report."""
        return {
            "arena_bytes": self.arena_size,
            "naive_bytes": self.naive_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "arena_over_lower_bound": round(self.arena_size / self.lower_bound_bytes, 4)
            if self.lower_bound_bytes
            else 1.0,
            "buffers": len(self.buffers),
            "zero_copy_views": len(self.view_nodes),
            "inplace_nodes": len(self.inplace_nodes),
            "elided_concats": len(self.elided_concats),
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for the engine manifest."""
        return {
            "alignment": self.alignment,
            "arena_size": self.arena_size,
            "buffers": [
                {"index": b.index, "size": b.size, "first": b.first, "last": b.last, "offset": b.offset,
                 "values": b.values}
                for b in self.buffers
            ],
            "values": {k: v.to_json() for k, v in self.values.items()},
            "view_nodes": self.view_nodes,
            "elided_concats": self.elided_concats,
            "inplace_nodes": self.inplace_nodes,
            "naive_bytes": self.naive_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
        }  # fmt: skip

    @staticmethod
    def from_json(data: dict[str, Any]) -> MemoryPlan:
        """Inverse of :meth:`to_json`."""
        return MemoryPlan(
            alignment=int(data["alignment"]),
            arena_size=int(data["arena_size"]),
            buffers=[Buffer(**b) for b in data["buffers"]],
            values={k: ValuePlacement.from_json(v) for k, v in data["values"].items()},
            view_nodes=list(data["view_nodes"]),
            elided_concats={k: list(v) for k, v in data["elided_concats"].items()},
            inplace_nodes=list(data["inplace_nodes"]),
            naive_bytes=int(data["naive_bytes"]),
            lower_bound_bytes=int(data["lower_bound_bytes"]),
        )


def value_nbytes(graph: Graph, name: str) -> int | None:
    """Bytes of a value with a static shape, or None when its shape is not known."""
    v = graph.values[name]
    if not v.is_static or v.dtype is None or v.dtype == "string":
        return None
    assert v.shape is not None
    return math.prod(int(d) for d in v.shape) * numpy_dtype(v.dtype).itemsize


def plan_memory(
    graph: Graph, steps: Sequence[tuple[Node, Tactic]], *, alignment: int = ALIGNMENT
) -> MemoryPlan:
    """Plan the arena for ``steps`` (the schedule, in order, with each node's chosen tactic).

    ``graph`` must carry the shapes to plan for (the largest of the declared range).
    """
    nodes = [n for n, _ in steps]
    tactic_of = {n.name: t for n, t in steps}
    step_of: dict[str, int] = {n.name: i for i, n in enumerate(nodes)}
    outputs = set(graph.outputs)
    consts = {k for k, v in graph.values.items() if v.is_const and k not in graph.inputs}

    readers: dict[str, list[tuple[int, Node]]] = {}
    for i, n in enumerate(nodes):
        for name in run_inputs(n):  # If/Loop/Scan bodies' scope reads keep values alive too
            if name:
                readers.setdefault(name, []).append((i, n))
    producer: dict[str, tuple[int, Node]] = {o: (i, n) for i, n in enumerate(nodes) for o in n.outputs if o}

    def last_read(name: str) -> int:
        uses = [i for i, _ in readers.get(name, [])]
        return max(uses) if uses else producer[name][0]

    placements: dict[str, ValuePlacement] = {}
    for name in graph.inputs:
        placements[name] = ValuePlacement(INPUT)
    for name in consts:
        placements[name] = ValuePlacement(CONST)

    # Rule 2: concat elision (decided first: it turns producers' outputs into slices).
    elided: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        if n.op_type != "Concat" or not int(n.attr("elide", 0)):
            continue
        out = n.outputs[0]
        if value_nbytes(graph, out) is None:
            continue
        positions = []
        for pos, name in enumerate(n.inputs):
            if name not in producer or name in outputs or name in placements:
                continue
            p_step, p_node = producer[name]
            only_reader = [r for _, r in readers.get(name, [])] == [n] and n.inputs.count(name) == 1
            if (
                only_reader
                and tactic_of[p_node.name].accepts_strided_output
                and p_node.op_type not in VIEW_OPS
                and p_step < i
                and value_nbytes(graph, name) is not None
            ):
                positions.append(pos)
        if positions:
            elided[n.name] = positions
            axis = int(n.attr("axis", 0))
            rank = len(graph.values[out].shape or ())
            for pos in positions:
                placements[n.inputs[pos]] = ValuePlacement(SLICE, of=out, axis=axis % rank, index=pos)

    buffers: list[Buffer] = []
    buffer_of: dict[str, Buffer] = {}  # value -> the buffer it views wholly (arena or alias)
    view_nodes: list[str] = []
    inplace_nodes: list[str] = []
    naive = 0

    def new_buffer(name: str, size: int, first: int) -> Buffer:
        buf = Buffer(len(buffers), align(size, alignment), first, max(first, last_read(name)))
        buf.values.append(name)
        buffers.append(buf)
        return buf

    for i, n in enumerate(nodes):
        # Rule 3: zero-copy views of contiguous storage.
        if n.op_type in VIEW_OPS and n.outputs and n.outputs[0] not in outputs:
            src, dst = n.input(0), n.outputs[0]
            src_kind = placements.get(src, ValuePlacement(DYNAMIC)).kind
            if (
                src_kind in (INPUT, CONST, OUTPUT, ARENA, ALIAS)
                and graph.values[src].dtype == graph.values[dst].dtype
                and value_nbytes(graph, dst) is not None
            ):
                placements[dst] = ValuePlacement(ALIAS, of=src)
                view_nodes.append(n.name)
                if src in buffer_of:
                    buf = buffer_of[src]
                    buf.last = max(buf.last, last_read(dst))
                    buf.values.append(dst)
                    buffer_of[dst] = buf
                continue
        tactic = tactic_of[n.name]
        for o_pos, out in enumerate(n.outputs):
            if not out or out in placements:
                continue  # omitted, or already a concat slice
            nbytes = value_nbytes(graph, out)
            if nbytes is None:
                placements[out] = ValuePlacement(DYNAMIC)
                continue
            if out in outputs:
                placements[out] = ValuePlacement(OUTPUT)
                continue
            naive += align(nbytes, alignment)
            # Rule 4: in place.
            reused = None
            for in_pos, pair_out in tactic.inplace:
                if pair_out != o_pos or in_pos >= len(n.inputs):
                    continue
                src = n.inputs[in_pos]
                shared = buffer_of.get(src)
                if (
                    shared is not None
                    and shared.last == i
                    and graph.values[src].shape == graph.values[out].shape
                    and graph.values[src].dtype == graph.values[out].dtype
                    and all(buffer_of.get(x) is not shared for x in n.outputs[:o_pos])
                ):
                    reused = shared
                    break
            if reused is not None:
                reused.last = max(reused.last, last_read(out))
                reused.values.append(out)
                buffer_of[out] = reused
                placements[out] = ValuePlacement(ARENA, buffer=reused.index)
                inplace_nodes.append(n.name)
                continue
            buf = new_buffer(out, nbytes, i)
            buffer_of[out] = buf
            placements[out] = ValuePlacement(ARENA, buffer=buf.index)

    def first_write(name: str) -> int:
        step, p_node = producer[name]
        if p_node.name in elided:  # a nested elided concat: its own producers write earlier
            return min([step] + [first_write(p_node.inputs[p]) for p in elided[p_node.name]])
        return step

    # Elided concat outputs must be live from the first producer that writes a slice.
    for cname, positions in elided.items():
        c_node = nodes[step_of[cname]]
        out = c_node.outputs[0]
        first = min(first_write(c_node.inputs[p]) for p in positions)
        if out in buffer_of:
            buffer_of[out].first = min(buffer_of[out].first, first)
        for p in positions:
            naive += align(value_nbytes(graph, c_node.inputs[p]) or 0, alignment)

    arena_size = _place(buffers, alignment)
    lower_bound = 0
    for step in range(len(nodes)):
        lower_bound = max(lower_bound, sum(b.size for b in buffers if b.first <= step <= b.last))
    return MemoryPlan(
        alignment=alignment,
        arena_size=arena_size,
        buffers=buffers,
        values=placements,
        view_nodes=view_nodes,
        elided_concats=elided,
        inplace_nodes=inplace_nodes,
        naive_bytes=naive,
        lower_bound_bytes=lower_bound,
    )


# Orders in which buffers are placed; the planner keeps the one that gives the smallest arena.
PLACEMENT_ORDERS: dict[str, Any] = {
    "size": lambda b: (-b.size, b.first, b.index),
    "size_x_lifetime": lambda b: (-b.size * (b.last - b.first + 1), -b.size, b.index),
    "lifetime": lambda b: (-(b.last - b.first), -b.size, b.index),
    "first_use": lambda b: (b.first, -b.size, b.index),
}


def _place(buffers: list[Buffer], alignment: int) -> int:
    """Assign offsets, trying each order of :data:`PLACEMENT_ORDERS` and keeping the best.

    In one order, each buffer goes into the tightest gap (best fit) left by the already placed
    buffers whose lifetimes overlap its own, or above them all."""
    best_size, best_offsets = None, None
    for key in PLACEMENT_ORDERS.values():
        offsets = _place_in_order(sorted(buffers, key=key), alignment)
        size = max((offsets[b.index] + b.size for b in buffers), default=0)
        if best_size is None or size < best_size:
            best_size, best_offsets = size, offsets
    for b in buffers:
        b.offset = best_offsets[b.index] if best_offsets else 0
    return best_size or 0


def _place_in_order(ordered: list[Buffer], alignment: int) -> dict[int, int]:
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[int, int] = {}
    for buf in ordered:
        busy = sorted(((off, b) for off, b in placed if b.overlaps(buf)), key=lambda item: item[0])
        best_offset, best_gap = None, None
        cursor = 0
        for off, other in busy:
            gap = off - cursor
            if gap >= buf.size and (best_gap is None or gap < best_gap):
                best_offset, best_gap = cursor, gap
            cursor = max(cursor, align(off + other.size, alignment))
        offset = cursor if best_offset is None else best_offset
        offsets[buf.index] = offset
        placed.append((offset, buf))
    return offsets


def check_no_overlap(plan: MemoryPlan) -> None:
    """Raise AssertionError when two buffers live at a common step share arena bytes."""
    for a in plan.buffers:
        assert a.offset % plan.alignment == 0, f"buffer {a.index} is misaligned"
        assert a.offset + a.size <= plan.arena_size, f"buffer {a.index} overruns the arena"
        for b in plan.buffers:
            if a.index < b.index and a.overlaps(b):
                disjoint = a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
                assert disjoint, f"buffers {a.index} and {b.index} are live together and overlap"
