"""Structure-aware mutations of ONNX models, shared by the atheris harness and the pytest fuzz tests.

Random bytes rarely survive protobuf parsing, so besides byte-level mutation the fuzzer rewrites one
thing inside a parsed model: a node's op type, an input name, an attribute value, a dimension, an
initializer's dims or data type, the opset. Each result still parses, which takes the fuzzer past
the protobuf decoder into the frontend's checks, canonicalization and shape inference.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from onnx import AttributeProto, ModelProto

OP_TYPES = (
    "Add", "Mul", "MatMul", "Gemm", "Conv", "Relu", "Reshape", "Transpose", "Concat", "Split", "Slice",
    "Gather", "Softmax", "LayerNormalization", "If", "Loop", "Expand", "Range", "ConstantOfShape", "Resize",
    "Squeeze", "Unsqueeze", "Where", "Cast", "ReduceMean", "Pad", "Tile", "TopK", "NonZero", "Einsum",
)  # fmt: skip
INTS = (0, 1, -1, 2, 3, 7, -(2**31), 2**31 - 1, 2**40, -(2**62), 2**62)
NAMES = ("", "x", "y", "w", "r", "missing", "../../etc/passwd", "\x00", "a" * 300)


def _pick_node(model: ModelProto, rng: random.Random):  # type: ignore[no-untyped-def]
    nodes = list(model.graph.node)
    return rng.choice(nodes) if nodes else None


def _op_type(model: ModelProto, rng: random.Random) -> str:
    node = _pick_node(model, rng)
    if node is None:
        return "no node"
    node.op_type = rng.choice(OP_TYPES)
    return f"op_type -> {node.op_type}"


def _io_name(model: ModelProto, rng: random.Random) -> str:
    node = _pick_node(model, rng)
    if node is None:
        return "no node"
    names = node.input if (rng.random() < 0.5 or not node.output) else node.output
    choice = rng.choice([*NAMES, *(v.name for v in model.graph.input), *(n for n in node.output)])
    if names and rng.random() < 0.7:
        names[rng.randrange(len(names))] = choice
    else:
        names.append(choice)
    return f"node io name -> {choice!r}"


def _attribute(model: ModelProto, rng: random.Random) -> str:
    node = _pick_node(model, rng)
    if node is None:
        return "no node"
    if not node.attribute or rng.random() < 0.3:
        attribute = node.attribute.add()
        attribute.name = rng.choice(
            ("axis", "perm", "pads", "kernel_shape", "group", "to", "mode", "strides")
        )
        attribute.type = AttributeProto.INT
        attribute.i = rng.choice(INTS)
        return f"new attribute {attribute.name}"
    attribute = rng.choice(list(node.attribute))
    if attribute.ints:
        attribute.ints[rng.randrange(len(attribute.ints))] = rng.choice(INTS)
    elif attribute.type == AttributeProto.FLOAT:
        attribute.f = rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e38))
    else:
        attribute.type = AttributeProto.INT
        attribute.i = rng.choice(INTS)
    return f"attribute {attribute.name}"


def _dim(model: ModelProto, rng: random.Random) -> str:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if not values:
        return "no value"
    shape = rng.choice(values).type.tensor_type.shape
    if not shape.dim:
        shape.dim.add().dim_value = rng.choice(INTS)
        return "new dim"
    dim = shape.dim[rng.randrange(len(shape.dim))]
    if rng.random() < 0.3:
        dim.dim_param = rng.choice(("batch", "", "n+1", "\x00"))
    else:
        dim.dim_value = rng.choice(INTS)
    return "dim"


def _initializer(model: ModelProto, rng: random.Random) -> str:
    if not model.graph.initializer:
        return "no initializer"
    tensor = rng.choice(list(model.graph.initializer))
    roll = rng.random()
    if roll < 0.4 and tensor.dims:
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(INTS)
    elif roll < 0.7:
        tensor.data_type = rng.choice((0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 23, 99))
    else:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
    return f"initializer {tensor.name}"


def _opset(model: ModelProto, rng: random.Random) -> str:
    opset = model.opset_import[0] if model.opset_import else model.opset_import.add()
    opset.version = rng.choice((1, 10, 11, 13, 17, 21, 22, 10**9))
    return "opset"


def _drop_node(model: ModelProto, rng: random.Random) -> str:
    if not model.graph.node:
        return "no node"
    del model.graph.node[rng.randrange(len(model.graph.node))]
    return "dropped node"


def _duplicate_node(model: ModelProto, rng: random.Random) -> str:
    node = _pick_node(model, rng)
    if node is None:
        return "no node"
    model.graph.node.append(node)
    return "duplicated node"


MUTATIONS: tuple[Callable[[ModelProto, random.Random], str], ...] = (
    _op_type, _io_name, _attribute, _dim, _initializer, _opset, _drop_node, _duplicate_node,
)  # fmt: skip


def mutate_model(model: ModelProto, rng: random.Random, rounds: int = 1) -> list[str]:
    """Apply ``rounds`` random structural mutations to ``model`` in place; what changed."""
    return [rng.choice(MUTATIONS)(model, rng) for _ in range(rounds)]
