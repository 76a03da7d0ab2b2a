"""An ONNX graph builder that names things the way PyTorch's TorchScript exporter does.

The exporter names a node after the module path that produced it and its op type
(``/layer1/layer1.0/conv1/Conv``; a second node of the same type in the same module gets ``_1``),
names each output ``<node name>_output_0``, and emits scalar and shape constants as ``Constant``
nodes next to their consumer. Parameters keep their ``state_dict`` names (``fc.weight``) unless the
exporter had to transform them (a Linear's transposed weight becomes ``onnx::MatMul_<n>``). Keeping
the same conventions makes zoo models read like real exports in logs, reports and diffs.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from farm.zoo.spec import Dim

PRODUCER_NAME = "farm.zoo"
PRODUCER_VERSION = "1"

ONNX_DTYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


EXPORTERS = ("torchscript", "dynamo")


class OnnxGraphBuilder:
    """Collects nodes, initializers, inputs and outputs of one graph, with seeded random weights.

    Use :meth:`module` to enter a module scope (``with b.module("layer1", "layer1.0"):``), then
    :meth:`op` to add nodes; :meth:`param` adds a named parameter, :meth:`derived_param` a
    parameter the exporter renamed, :meth:`const` a constant the way ``exporter`` writes it.

    ``exporter`` names the PyTorch exporter being imitated: ``"torchscript"``
    (``dynamo=False``: constants are ``Constant`` nodes) or ``"dynamo"`` (``dynamo=True``: constants
    are initializers named ``val_<n>``, one per distinct value, and the IR version is 10).
    """

    def __init__(self, *, seed: int, opset: int, exporter: str = "torchscript") -> None:
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
        if exporter == "dynamo" and opset < 18:
            raise ValueError(f"the dynamo exporter writes opset 18 or newer, not {opset}")
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.exporter = exporter
        self._shared_constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._scope: list[str] = []
        self._names_in_scope: Counter[str] = Counter()
        self._anonymous_ids = itertools.count(1)

    # ------------------------------------------------------------------ scopes and names

    @contextmanager
    def module(self, *names: str) -> Iterator[None]:
        """Enter a module scope for the nodes added inside (one level per name)."""
        self._scope.extend(names)
        try:
            yield
        finally:
            del self._scope[len(self._scope) - len(names) :]

    @property
    def scope_path(self) -> str:
        """The current module path as the exporter writes it, e.g. ``/encoder/layer.0/attention``."""
        return "".join(f"/{name}" for name in self._scope)

    def param_name(self, leaf: str) -> str:
        """The ``state_dict`` name of parameter ``leaf`` of the current module.

        Children of a Sequential or ModuleList appear in node scopes as ``<parent>.<index>``
        (``/layer1/layer1.0/conv1``), so such a component replaces its parent in the dotted
        name (``layer1.0.conv1.weight``).
        """
        parts: list[str] = []
        for name in self._scope:
            if parts and name.startswith(parts[-1] + "."):
                parts[-1] = name
            else:
                parts.append(name)
        return ".".join([*parts, leaf])

    def _node_name(self, op_type: str) -> str:
        base = f"{self.scope_path}/{op_type}"
        count = self._names_in_scope[base]
        self._names_in_scope[base] += 1
        return base if count == 0 else f"{base}_{count}"

    def anonymous_name(self, kind: str) -> str:
        """A fresh exporter-style name for a transformed value, e.g. ``onnx::MatMul_12``."""
        return f"onnx::{kind}_{next(self._anonymous_ids)}"

    # ------------------------------------------------------------------ graph pieces

    def input(self, name: str, dtype: str, shape: Sequence[Dim]) -> str:
        """Declare a graph input."""
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], list(shape)))
        return name

    def output(self, value: str, name: str, dtype: str, shape: Sequence[Dim | None]) -> str:
        """Declare ``value`` as the graph output ``name`` (renaming the producing node's output)."""
        for node in reversed(self.nodes):
            if value in node.output:
                node.output[list(node.output).index(value)] = name
                break
        else:
            raise ValueError(f"no node produces {value!r}")
        for node in self.nodes:
            for i, inp in enumerate(node.input):
                if inp == value:
                    node.input[i] = name
        self.outputs.append(helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], list(shape)))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], *, num_outputs: int = 1, **attrs: Any
    ) -> str:
        """Add a node in the current scope and return its (first) output name."""
        return self.op_multi(op_type, inputs, num_outputs=num_outputs, **attrs)[0]

    def op_multi(self, op_type: str, inputs: Sequence[str], *, num_outputs: int, **attrs: Any) -> list[str]:
        """Add a node with several outputs and return all output names."""
        name = self._node_name(op_type)
        outputs = [f"{name}_output_{i}" for i in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs

    @property
    def dynamo(self) -> bool:
        """Whether the dynamo exporter's patterns are being written."""
        return self.exporter == "dynamo"

    def const(self, value: Any, dtype: str = "float32") -> str:
        """A constant holding ``value``: a ``Constant`` node in the current scope (TorchScript) or
        a shared ``val_<n>`` initializer (dynamo)."""
        array = np.asarray(value, dtype=dtype)
        if self.dynamo:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key not in self._shared_constants:
                self._shared_constants[key] = self.param(f"val_{next(self._anonymous_ids)}", array)
            return self._shared_constants[key]
        name = self._node_name("Constant")
        output = f"{name}_output_0"
        self.nodes.append(
            helper.make_node("Constant", [], [output], name=name, value=numpy_helper.from_array(array))
        )
        return output

    def named_const(self, name: str, value: Any, dtype: str = "float32") -> str:
        """An initializer constant with a fixed name, added once and shared (the dynamo exporter's
        ``min_val_cast`` / ``max_val_cast`` Clip bounds)."""
        if name not in self.initializers:
            self.param(name, np.asarray(value, dtype=dtype))
        return name

    def anonymous_const(self, value: Any, dtype: str, kind: str) -> str:
        """A ``Constant`` node outside any scope with an ``onnx::<kind>_<n>`` output, as the
        exporter emits for constants it creates while lowering (Unsqueeze axes, buffers)."""
        array = np.asarray(value, dtype=dtype)
        output = self.anonymous_name(kind)
        name = f"Constant_{next(self._anonymous_ids)}"
        self.nodes.append(
            helper.make_node("Constant", [], [output], name=name, value=numpy_helper.from_array(array))
        )
        return output

    def param(self, name: str, array: np.ndarray) -> str:
        """Add an initializer under its ``state_dict`` name."""
        if name in self.initializers:
            raise ValueError(f"duplicate initializer {name!r}")
        self.initializers[name] = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
        return name

    def derived_param(self, kind: str, array: np.ndarray) -> str:
        """Add an initializer the exporter computed from a parameter (``onnx::<kind>_<n>``, or
        ``val_<n>`` from the dynamo exporter)."""
        if self.dynamo:
            return self.param(f"val_{next(self._anonymous_ids)}", array)
        return self.param(self.anonymous_name(kind), array)

    # ------------------------------------------------------------------ seeded weights

    def normal(self, shape: Sequence[int], std: float, mean: float = 0.0) -> np.ndarray:
        """Float32 samples from N(mean, std^2)."""
        return (self.rng.standard_normal(tuple(shape)) * std + mean).astype(np.float32)

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        """Float32 samples from U(low, high)."""
        return self.rng.uniform(low, high, tuple(shape)).astype(np.float32)

    # ------------------------------------------------------------------ result

    def model(self, graph_name: str, *, doc: str = "") -> onnx.ModelProto:
        """The finished, checked model (opset ``self.opset``, IR version ONNX Runtime accepts)."""
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            self.inputs,
            self.outputs,
            initializer=[numpy_helper.from_array(a, name) for name, a in self.initializers.items()],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name=PRODUCER_NAME,
            producer_version=PRODUCER_VERSION,
            doc_string=doc,
        )
        model.ir_version = 10 if self.dynamo else ir_version_for_opset(self.opset)
        onnx.checker.check_model(model, full_check=True)
        return model


def ir_version_for_opset(opset: int) -> int:
    """The IR version PyTorch writes for ``opset`` (8 up to opset 18, then 9 / 10)."""
    if opset <= 18:
        return 8
    if opset <= 20:
        return 9
    return 10
