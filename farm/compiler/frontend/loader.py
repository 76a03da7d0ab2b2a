"""ONNX model -> IR :class:`Graph`.

``load_onnx`` reads the protobuf, checks the opsets (default domain 7 to the newest onnx knows:
7-10 are first upgraded to 11 by :mod:`farm.compiler.frontend.upgrade`, op versions above 21 are
checked by :mod:`farm.compiler.frontend.versions`), expands function ops it does not run natively
into their ONNX function bodies (:mod:`farm.compiler.frontend.functions`), lists every
unsupported op type at once, converts initializers and Constant nodes into constants, loads
external data confined to the model's folder, converts attributes (GRAPH attributes become nested
Graphs), rewrites nodes into the canonical forms of :mod:`farm.compiler.frontend.canonical`, infers
dtypes and shapes, resolves ``auto_pad`` and finally verifies the graph. Every problem with the
model surfaces as :class:`ModelError` (or :class:`UnsupportedModelError`), never as an internal
exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto

from farm.compiler.frontend.attributes import convert_attribute, sparse_to_array
from farm.compiler.frontend.canonical import (
    PADDED_OPS,
    SOFTMAX_OPS,
    canonicalize_legacy_softmax,
    canonicalize_node,
    resolve_auto_pad,
)
from farm.compiler.frontend.contrib import expand_contrib_ops
from farm.compiler.frontend.errors import ModelError, UnsupportedModelError
from farm.compiler.frontend.functions import expand_function_ops, value_types
from farm.compiler.frontend.shape_inference import infer_shapes
from farm.compiler.frontend.tensors import MAX_DIM, tensor_to_array
from farm.compiler.frontend.upgrade import upgrade_opset
from farm.compiler.frontend.versions import NEWEST_OPSET, runs_natively
from farm.compiler.ir.dtypes import ONNX_TO_NAME
from farm.compiler.ir.graph import Dim, Graph, Node
from farm.compiler.ir.verify import GraphError, verify

MIN_OPSET = 11
OLDEST_OPSET = 7  # opsets OLDEST_OPSET..MIN_OPSET-1 are upgraded to MIN_OPSET (frontend/upgrade.py)
DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit for one message

# Ops handled entirely by the frontend (no reference implementation needed).
FRONTEND_OPS = frozenset({"Constant", "Upsample", "Scatter"})


def supported_op_types() -> frozenset[str]:
    """Every ONNX op type (default domain) that ``load_onnx`` accepts."""
    from farm.compiler.reference.registry import onnx_op_types

    return frozenset(onnx_op_types()) | FRONTEND_OPS


ModelSource = str | Path | bytes | ModelProto


def load_onnx(model: ModelSource, *, input_shapes: dict[str, Sequence[int | str]] | None = None) -> Graph:
    """Load an ONNX model (path, serialized bytes or ModelProto) into a verified IR Graph.

    ``input_shapes`` overrides the declared shapes of graph inputs (ints or symbolic names).
    Raises :class:`ModelError` for a malformed model and :class:`UnsupportedModelError` (naming
    every unsupported op type and the first node of each) for one the compiler cannot run.
    """
    proto, base_dir = _read_model(model)
    try:
        return _load(proto, base_dir, input_shapes)
    except ModelError:
        raise
    except RecursionError:
        raise ModelError("the model nests subgraphs too deeply") from None
    except Exception as exc:  # hostile input must never surface as an internal exception
        raise ModelError(f"malformed model: {type(exc).__name__}: {exc}") from None


def _read_model(model: ModelSource) -> tuple[ModelProto, Path | None]:
    if isinstance(model, ModelProto):
        proto = ModelProto()
        proto.CopyFrom(model)
        return proto, None
    base_dir: Path | None = None
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model file {str(path)!r} does not exist or is not a file")
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise ModelError(f"model file {str(path)!r} is larger than 2 GiB; store the weights as external data")
        data = path.read_bytes()
        base_dir = path.resolve().parent
    else:
        raise TypeError(f"load_onnx expects a path, bytes or onnx.ModelProto, not {type(model).__name__}")
    proto = ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"not a valid ONNX protobuf: {exc}") from None
    return proto, base_dir


def _load(proto: ModelProto, base_dir: Path | None, input_shapes: dict[str, Sequence[int | str]] | None) -> Graph:
    if not proto.HasField("graph"):
        raise ModelError("the model has no graph (not an ONNX model?)")
    if proto.ir_version < 3:
        raise ModelError(f"IR version {proto.ir_version} is too old (or missing); opset imports need IR >= 3")
    opsets = _check_opsets(proto)
    if len(proto.functions):
        try:
            from onnx import inliner

            proto = inliner.inline_local_functions(proto)
        except Exception as exc:
            raise ModelError(f"cannot inline the model's local functions: {exc}") from None
    source_opset = opsets[""]
    if source_opset < MIN_OPSET:
        _check_supported(proto.graph, opsets)
        proto = upgrade_opset(proto, source_opset)
        opsets[""] = MIN_OPSET
    proto = expand_contrib_ops(proto, opsets[""], value_types)
    proto = expand_function_ops(proto, opsets[""], supported_op_types())
    _check_supported(proto.graph, opsets)
    loader = _GraphLoader(opsets, base_dir)
    graph = loader.load(proto.graph, outer_scope=frozenset())
    graph.metadata.update(
        {
            "producer_name": proto.producer_name,
            "producer_version": proto.producer_version,
            "ir_version": str(proto.ir_version),
            **({"source_opset": str(source_opset)} if source_opset != opsets[""] else {}),
            **{p.key: p.value for p in proto.metadata_props},
        }
    )
    if input_shapes:
        _apply_input_shapes(graph, input_shapes)
    infer_shapes(graph)
    loader.finish(graph)
    try:
        verify(graph)
    except GraphError as exc:
        raise ModelError(str(exc)) from None
    return graph


def _check_opsets(proto: ModelProto) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for imp in proto.opset_import:
        domain = "" if imp.domain in DEFAULT_DOMAINS else imp.domain
        opsets[domain] = int(imp.version)
    if "" not in opsets:
        raise ModelError("the model imports no default-domain (ai.onnx) opset")
    version = opsets[""]
    if not OLDEST_OPSET <= version <= NEWEST_OPSET:
        raise ModelError(f"opset {version} is not supported: the compiler accepts ai.onnx opsets {OLDEST_OPSET} to {NEWEST_OPSET}")
    return opsets


def _walk_nodes(graph: GraphProto, depth: int = 0) -> Iterator[NodeProto]:
    if depth > 64:
        raise ModelError("the model nests subgraphs more than 64 levels deep")
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk_nodes(attr.g, depth + 1)
            for g in attr.graphs:
                yield from _walk_nodes(g, depth + 1)


def _op_key(node: NodeProto) -> str:
    domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
    return f"{domain}.{node.op_type}" if domain else node.op_type


def _check_supported(graph: GraphProto, opsets: dict[str, int]) -> None:
    """Raise one UnsupportedModelError naming every unsupported op type and its first node."""
    supported = supported_op_types()
    first: dict[str, str] = {}
    missing_schema: dict[str, str] = {}
    for index, node in enumerate(_walk_nodes(graph)):
        key = _op_key(node)
        label = node.name or f"#{index} ({node.op_type})"
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        if domain or node.op_type not in supported:
            first.setdefault(key, label)
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets[""], "")
        except onnx.defs.SchemaError:
            missing_schema.setdefault(key, label)
            continue
        if not runs_natively(node.op_type, opsets[""], supported):  # a newer version not reviewed
            first.setdefault(f"{key}-{schema.since_version}", label)
            continue
        _check_against_schema(node, schema, label)
    if first:
        listed = ", ".join(f"{op} (first node: {name!r})" for op, name in first.items())
        raise UnsupportedModelError(
            f"the model uses {len(first)} unsupported op type(s): {listed}", unsupported=first
        )
    if missing_schema:
        listed = ", ".join(f"{op} (first node: {name!r})" for op, name in missing_schema.items())
        raise ModelError(f"op type(s) not defined in ai.onnx opset {opsets['']}: {listed}")


def _check_against_schema(node: NodeProto, schema: onnx.defs.OpSchema, label: str) -> None:
    """Input/output counts, required attributes and attribute types as the op's schema says."""
    where = f"node {label!r} ({node.op_type}-{schema.since_version})"
    if not schema.min_input <= len(node.input) <= schema.max_input:
        raise ModelError(
            f"{where} has {len(node.input)} inputs; it takes {schema.min_input} to {schema.max_input}"
        )
    if not schema.min_output <= len(node.output) <= schema.max_output:
        raise ModelError(
            f"{where} has {len(node.output)} outputs; it takes {schema.min_output} to {schema.max_output}"
        )
    given = {a.name: a for a in node.attribute}
    for name, spec in schema.attributes.items():
        if spec.required and name not in given:
            raise ModelError(f"{where} lacks its required attribute {name!r}")
    for name, attr in given.items():
        found = schema.attributes.get(name)
        if found is None:
            raise ModelError(f"{where} has attribute {name!r}, which {node.op_type} does not define")
        expected = str(found.type).rsplit(".", 1)[-1]  # "AttrType.INTS" -> "INTS"
        if attr.type != AttributeProto.UNDEFINED and AttributeProto.AttributeType.Name(attr.type) != expected:
            raise ModelError(
                f"{where}: attribute {name!r} is {AttributeProto.AttributeType.Name(attr.type)}, expected {expected}"
            )
        if attr.type == AttributeProto.GRAPH and not attr.HasField("g"):
            raise ModelError(f"{where}: graph attribute {name!r} holds no graph")


def _value_type(info: ValueInfoProto, what: str) -> tuple[str | None, tuple[Dim, ...] | None]:
    """dtype and shape of a graph input/output; unknown dims get a symbolic name."""
    tp: TypeProto = info.type
    kind = tp.WhichOneof("value")
    if kind is None:
        return None, None
    if kind != "tensor_type":
        raise UnsupportedModelError(f"{what} is a {kind.replace('_type', '')}, only tensors are supported")
    tt = tp.tensor_type
    dtype = None
    if tt.elem_type:
        if tt.elem_type not in ONNX_TO_NAME:
            raise UnsupportedModelError(f"{what} has an element type the compiler does not support ({tt.elem_type})")
        dtype = ONNX_TO_NAME[tt.elem_type]
    if not tt.HasField("shape"):
        return dtype, None
    dims: list[Dim] = []
    for axis, d in enumerate(tt.shape.dim):
        which = d.WhichOneof("value")
        if which == "dim_value" and d.dim_value == -1:
            # paddle2onnx and older converters write -1 for a dynamic dimension (ONNX Runtime
            # accepts it): read as a symbolic one; any other negative value is an error
            dims.append(f"{info.name}_dim{axis}")
        elif which == "dim_value":
            if d.dim_value < 0 or d.dim_value > MAX_DIM:
                raise ModelError(f"{what} has an invalid dimension {d.dim_value}")
            dims.append(int(d.dim_value))
        elif which == "dim_param" and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(f"{info.name}_dim{axis}")
    return dtype, tuple(dims)


class _GraphLoader:
    """Converts GraphProtos (the main graph and control-flow bodies) into IR Graphs."""

    def __init__(self, opsets: dict[str, int], base_dir: Path | None) -> None:
        self.opsets = opsets
        self.opset = opsets[""]
        self.base_dir = base_dir
        self.legacy_softmax: list[tuple[Graph, Node]] = []
        self.graphs: list[Graph] = []

    def load(self, proto: GraphProto, outer_scope: frozenset[str]) -> Graph:
        graph = Graph(proto.name or "graph", opset=self.opset, opsets=self.opsets)
        self.graphs.append(graph)
        for init in proto.initializer:
            if not init.name:
                raise ModelError("an initializer has no name")
            if init.name in graph.values:
                raise ModelError(f"initializer {init.name!r} is defined twice")
            graph.add_const(init.name, tensor_to_array(init, self.base_dir, f"initializer {init.name!r}"))
        for sparse in proto.sparse_initializer:
            name = sparse.values.name
            if not name or name in graph.values:
                raise ModelError(f"sparse initializer {name!r} has no name or is defined twice")
            graph.add_const(name, sparse_to_array(sparse, self.base_dir, f"sparse initializer {name!r}"))
        for info in proto.input:
            if not info.name:
                raise ModelError("a graph input has no name")
            if info.name in graph.inputs:
                raise ModelError(f"graph input {info.name!r} is declared twice")
            dtype, shape = _value_type(info, f"graph input {info.name!r}")
            if info.name in graph.values:  # an initializer that doubles as an overridable input
                graph.inputs.append(info.name)
            else:
                graph.add_input(info.name, dtype, shape)  # type: ignore[arg-type]
        defined = set(outer_scope) | set(graph.values)
        produced_here = {o for n in proto.node for o in n.output if o}
        scope_for_bodies = frozenset(defined | produced_here)
        for index, node_proto in enumerate(proto.node):
            self._add_node(graph, node_proto, index, scope_for_bodies)
        self._check_names(graph, outer_scope)
        for info in proto.output:
            if not info.name:
                raise ModelError("a graph output has no name")
            dtype, shape = _value_type(info, f"graph output {info.name!r}")
            if info.name not in graph.values and info.name not in outer_scope:
                raise ModelError(f"graph output {info.name!r} is not produced by any node, input or initializer")
            value = graph.add_value(info.name)
            if value.dtype is None:
                value.dtype = dtype
            if value.shape is None and value.const is None:
                value.shape = shape
            graph.outputs.append(info.name)
        return graph

    def _add_node(self, graph: Graph, proto: NodeProto, index: int, scope: frozenset[str]) -> None:
        where = f"node {proto.name or index!r} ({proto.op_type})"
        attrs = {
            a.name: convert_attribute(a, self.base_dir, lambda g: self.load(g, scope), where) for a in proto.attribute
        }
        for name in proto.output:
            if name and name in graph.values and (graph.values[name].const is not None or name in graph.inputs):
                raise ModelError(f"{where} writes {name!r}, which is already a graph input or initializer")
        if proto.op_type == "Constant":
            if len(proto.output) != 1 or not proto.output[0]:
                raise ModelError(f"{where} must have exactly one output")
            graph.add_const(proto.output[0], _constant_value(attrs, where))
            return
        taken = {n.name for n in graph.nodes}
        name = proto.name if proto.name and proto.name not in taken else graph.fresh_name(proto.name or proto.op_type)
        node = Node(proto.op_type, list(proto.input), list(proto.output), attrs, name)
        for o in node.outputs:
            if o:
                graph.add_value(o)
        for new in canonicalize_node(node, graph, self.opset):
            if new.op_type in SOFTMAX_OPS and self.opset < 13:
                self.legacy_softmax.append((graph, new))
            graph.nodes.append(new)

    def _check_names(self, graph: Graph, outer_scope: frozenset[str]) -> None:
        produced: set[str] = set()
        for node in graph.nodes:
            for o in node.outputs:
                if not o:
                    continue
                if o in produced:
                    raise ModelError(f"value {o!r} is produced twice (again by node {node.name!r})")
                produced.add(o)
        known = produced | set(graph.inputs) | {k for k, v in graph.values.items() if v.const is not None}
        known |= outer_scope
        for node in graph.nodes:
            for i in node.inputs:
                if i and i not in known:
                    raise ModelError(
                        f"node {node.name!r} ({node.op_type}) reads {i!r}, which no node, input or initializer defines"
                    )
        try:
            graph.toposort()
        except ValueError as exc:
            raise ModelError(str(exc)) from None

    def finish(self, graph: Graph) -> None:
        """Shape-dependent canonicalization, then a final shape inference."""
        changed = False
        for owner, node in self.legacy_softmax:
            replacement = canonicalize_legacy_softmax(node, owner)
            if len(replacement) > 1:
                at = next(i for i, n in enumerate(owner.nodes) if n is node)
                owner.nodes[at : at + 1] = replacement
                changed = True
        for owner in self.graphs:
            for node in owner.nodes:
                if node.op_type in PADDED_OPS:
                    resolve_auto_pad(node, owner)
        if changed:
            infer_shapes(graph)


def _constant_value(attrs: dict, where: str) -> np.ndarray:
    if len(attrs) != 1:
        raise ModelError(f"{where} must have exactly one value attribute, has {sorted(attrs)}")
    key, value = next(iter(attrs.items()))
    if key in ("value", "sparse_value"):
        return np.asarray(value)
    if key == "value_float":
        return np.array(value, dtype=np.float32)
    if key == "value_floats":
        return np.array(value, dtype=np.float32).reshape(-1)
    if key == "value_int":
        return np.array(value, dtype=np.int64)
    if key == "value_ints":
        return np.array(value, dtype=np.int64).reshape(-1)
    if key == "value_string":
        return np.array(value, dtype=object)
    if key == "value_strings":
        return np.array(value, dtype=object).reshape(-1)
    raise ModelError(f"{where} has unknown value attribute {key!r}")


def _apply_input_shapes(graph: Graph, input_shapes: dict[str, Sequence[int | str]]) -> None:
    for name, shape in input_shapes.items():
        if name not in graph.inputs:
            raise ModelError(f"input_shapes names {name!r}, which is not a graph input (inputs: {graph.inputs})")
        dims: list[Dim] = []
        for d in shape:
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
                if d < 0 or d > MAX_DIM:
                    raise ModelError(f"input_shapes[{name!r}] has an invalid dimension {d}")
                dims.append(int(d))
            elif isinstance(d, str) and d:
                dims.append(d)
            else:
                raise ModelError(f"input_shapes[{name!r}] has an invalid dimension {d!r}")
        value = graph.values[name]
        if value.shape is not None and len(value.shape) != len(dims):
            raise ModelError(f"input_shapes[{name!r}] has rank {len(dims)} but the model declares rank {len(value.shape)}")
        value.shape = tuple(dims)


__all__ = ["load_onnx", "supported_op_types"]
