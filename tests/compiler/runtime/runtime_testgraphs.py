"""Small hand-built IR graphs for the runtime tests (no frontend needed)."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir import Graph


def _out(g: Graph, name: str, shape: tuple[int, ...], dtype: str = "float32") -> None:
    g.values[name].dtype = dtype
    g.values[name].shape = shape


def conv_mlp_graph(batch: int = 2, seed: int = 0) -> Graph:
    """Conv -> Relu -> Flatten -> Gemm, all static shapes."""
    rng = np.random.default_rng(seed)
    g = Graph("conv_mlp")
    g.add_input("x", "float32", (batch, 3, 8, 8))
    g.add_const("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    g.add_const("b", rng.standard_normal((4,)).astype(np.float32))
    g.add_node(
        "Conv", ["x", "w", "b"], ["c"], {"pads": [1, 1, 1, 1], "strides": [1, 1], "kernel_shape": [3, 3]}
    )
    _out(g, "c", (batch, 4, 8, 8))
    g.add_node("Relu", ["c"], ["r"])
    _out(g, "r", (batch, 4, 8, 8))
    g.add_node("Flatten", ["r"], ["f"], {"axis": 1})
    _out(g, "f", (batch, 256))
    g.add_const("w2", rng.standard_normal((10, 256)).astype(np.float32))
    g.add_const("b2", rng.standard_normal((10,)).astype(np.float32))
    g.add_node("Gemm", ["f", "w2", "b2"], ["y"], {"transB": 1})
    _out(g, "y", (batch, 10))
    g.outputs = ["y"]
    return g


def branchy_graph(seed: int = 0) -> Graph:
    """Two branches joined by an elidable Concat, a residual Add and two outputs."""
    rng = np.random.default_rng(seed)
    g = Graph("branchy")
    g.add_input("x", "float32", (2, 16))
    g.add_const("wa", rng.standard_normal((16, 8)).astype(np.float32))
    g.add_const("wb", rng.standard_normal((16, 8)).astype(np.float32))
    g.add_node("MatMul", ["x", "wa"], ["a"])
    _out(g, "a", (2, 8))
    g.add_node("MatMul", ["x", "wb"], ["b"])
    _out(g, "b", (2, 8))
    g.add_node("Tanh", ["b"], ["bt"])
    _out(g, "bt", (2, 8))
    g.add_node("Concat", ["a", "bt"], ["cat"], {"axis": 1, "elide": 1})
    _out(g, "cat", (2, 16))
    g.add_node("Add", ["cat", "x"], ["res"])
    _out(g, "res", (2, 16))
    g.add_node("Sigmoid", ["res"], ["s"])
    _out(g, "s", (2, 16))
    g.add_node("Reshape", ["s", "shape"], ["y"])
    g.add_const("shape", np.array([2, 4, 4], dtype=np.int64))
    _out(g, "y", (2, 4, 4))
    g.add_node("Exp", ["a"], ["z"])
    _out(g, "z", (2, 8))
    g.outputs = ["y", "z"]
    return g
