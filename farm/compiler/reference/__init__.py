"""The numpy reference implementation: the oracle for every test and the engine of constant folding.

``run(graph, feeds)`` executes any IR graph (ONNX ops in canonical form, fused ops, If/Loop/Scan
bodies); ``run_node(node, inputs)`` computes one node. One module per op family registers its ops
in the table of :mod:`farm.compiler.reference.registry`.
"""

from farm.compiler.reference.interpreter import ReferenceError, run, run_graph, run_node
from farm.compiler.reference.registry import Context, OpNotImplementedError, available_ops, lookup

__all__ = [
    "Context",
    "OpNotImplementedError",
    "ReferenceError",
    "available_ops",
    "lookup",
    "run",
    "run_graph",
    "run_node",
]
