"""Gemm canonicalization: every ONNX Gemm becomes a FusedGemm without alpha, beta or transA."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.ir import Node
from farm.compiler.passes.base import GraphEdit, GraphView, RewritePass, channel_vector

NO_EPILOGUE = {"activation": "", "alpha": 0.0, "beta": 0.0}


@dataclass
class GemmMatch:
    nodes: list[Node]


class GemmCanonicalization(RewritePass[GemmMatch]):
    """Gemm(A, B, C; alpha, beta, transA, transB) => FusedGemm(A', B', bias | R=C') with A' = Aᵀ when
    transA, alpha folded into a constant B (or A, or an explicit Mul), beta*C folded when constant
    (or an explicit Mul); C becomes the bias when it is per column, else a residual added "pre".
    """

    name = "gemm_canonicalization"
    anchor_ops = ("Gemm",)

    def match(self, node: Node, view: GraphView) -> GemmMatch | None:
        a, b = node.inputs[0], node.inputs[1]
        if view.shape(a) is None or view.shape(b) is None or not view.is_float(a):
            return None
        return GemmMatch([node])

    def rewrite(self, found: GemmMatch, view: GraphView, edit: GraphEdit) -> str:
        node = found.nodes[0]
        a, b, c = node.inputs[0], node.inputs[1], node.input(2)
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        trans_b = int(node.attr("transB", 0))
        dtype = view.dtype(a)
        out = node.outputs[0]
        if int(node.attr("transA", 0)):
            a_data = view.const(a)
            if a_data is not None:
                a = edit.new_const(f"{node.name}_A_t", np.ascontiguousarray(a_data.T))
            else:
                m, k = view.shape(a)  # type: ignore[misc]
                a_t = edit.new_value(f"{node.name}_A_t", dtype, (k, m))
                edit.new_node("Transpose", [a], [a_t], {"perm": [1, 0]}, before=node)
                a = a_t
        if alpha != 1.0:
            a, b = self._scale_operand(a, b, alpha, node, view, edit)
        bias, residual = "", ""
        if c:
            n_cols = view.shape(out)[-1] if view.shape(out) else None  # type: ignore[index]
            c_data = view.const(c)
            if c_data is not None:
                c_data = (c_data * beta).astype(c_data.dtype) if beta != 1.0 else c_data
                vector = channel_vector(c_data, 2, 1)
                if vector is not None and isinstance(n_cols, int) and vector.size in (1, n_cols):
                    bias = edit.new_const(f"{node.name}_bias", np.broadcast_to(vector, (n_cols,)).copy())
                else:
                    residual = c if beta == 1.0 else edit.new_const(f"{node.name}_C", c_data)
            elif beta != 1.0:
                residual = edit.new_value(f"{node.name}_C_scaled", view.dtype(c), view.shape(c))
                factor = edit.new_const(f"{node.name}_beta", np.array(beta, dtype=view.dtype(c)))
                edit.new_node("Mul", [c, factor], [residual], before=node)
            else:
                residual = c
        attrs: dict[str, object] = {"transB": trans_b, **NO_EPILOGUE}
        inputs = [a, b, bias]
        if residual:
            inputs.append(residual)
            attrs["residual"] = "pre"
        while inputs[-1] == "":
            inputs.pop()
        edit.remove([node])
        edit.new_node("FusedGemm", inputs, [out], attrs, before=node, name_hint=node.name)
        return "converted Gemm to FusedGemm"

    @staticmethod
    def _scale_operand(
        a: str, b: str, alpha: float, node: Node, view: GraphView, edit: GraphEdit
    ) -> tuple[str, str]:
        for which, name in (("B", b), ("A", a)):
            data = view.const(name)
            if data is not None:
                scaled = edit.new_const(f"{node.name}_{which}_alpha", (data * alpha).astype(data.dtype))
                return (a, scaled) if which == "B" else (scaled, b)
        scaled_a = edit.new_value(f"{node.name}_A_alpha", view.dtype(a), view.shape(a))
        factor = edit.new_const(f"{node.name}_alpha", np.array(alpha, dtype=view.dtype(a)))
        edit.new_node("Mul", [a, factor], [scaled_a], before=node)
        return scaled_a, b
