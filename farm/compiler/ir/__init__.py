"""The compiler's IR: :class:`Graph`, :class:`Node`, :class:`Value` and :func:`verify`."""

from farm.compiler.ir.dtypes import dtype_name, from_onnx, numpy_dtype, to_onnx
from farm.compiler.ir.fused import ACTIVATIONS, FUSED_OPS
from farm.compiler.ir.graph import Dim, Graph, Node, Shape, Value, run_inputs, scope_reads, subgraphs
from farm.compiler.ir.verify import GraphError, verify

__all__ = [
    "ACTIVATIONS",
    "FUSED_OPS",
    "Dim",
    "Graph",
    "GraphError",
    "Node",
    "Shape",
    "Value",
    "dtype_name",
    "from_onnx",
    "numpy_dtype",
    "run_inputs",
    "scope_reads",
    "subgraphs",
    "to_onnx",
    "verify",
]
