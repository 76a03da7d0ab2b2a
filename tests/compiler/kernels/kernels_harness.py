"""Harness of the CPU kernel tests: build a one-node graph, run a tactic, compare.

The oracle is ``farm.compiler.reference.run_node``; each test also passes its own plain numpy
oracle (float64, written for clarity, not speed), which must agree with the reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numba import njit

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels import get_tactic

# the store form of vmaskmovps (the memory operand last, AT&T order): microcoded on AMD, and what
# LLVM makes of a store of a select on AVX hosts without AVX-512 (``_simd16.HALVES_MAX_MIN``)
MASKED_STORE = re.compile(r"vmaskmovps\s+%ymm\d+,\s*%ymm\d+,\s*\S*\(")


def machine_code(fn: Callable[..., Any], *args: Any) -> str:
    """The assembly of ``fn`` compiled afresh (no cache) for ``args`` and run once on them; the
    numba functions it calls are linked into it."""
    compiled = njit(cache=False)(fn)
    compiled(*args)
    return "".join(compiled.inspect_asm().values())


def reference_run_node() -> Callable[..., Any] | None:
    """The reference interpreter's single-node entry point, when it exists."""
    try:
        from farm.compiler.reference import run_node
    except (ImportError, AttributeError):
        return None
    return run_node


def activation_oracle(name: str, x: np.ndarray, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """fused.py's activation table, in float64 numpy."""
    x = x.astype(np.float64)
    erf = np.vectorize(math.erf)
    table: dict[str, Callable[[], np.ndarray]] = {
        "": lambda: x,
        "Relu": lambda: np.maximum(x, 0),
        "LeakyRelu": lambda: np.where(x >= 0, x, alpha * x),
        "Clip": lambda: np.minimum(np.maximum(x, alpha), beta),
        "Sigmoid": lambda: 1 / (1 + np.exp(-x)),
        "Tanh": lambda: np.tanh(x),
        "HardSigmoid": lambda: np.clip(alpha * x + beta, 0, 1),
        "HardSwish": lambda: x * np.clip(x / 6 + 0.5, 0, 1),
        "Silu": lambda: x / (1 + np.exp(-x)),
        "Gelu": lambda: 0.5 * x * (1 + erf(x / math.sqrt(2))),
        "GeluTanh": lambda: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    }
    return table[name]()


def epilogue_oracle(z: np.ndarray, node: Node, residual: np.ndarray | None) -> np.ndarray:
    """act(z + R) / act(z) + R / act(z) as fused.py defines them."""
    act = node.attr("activation", "")
    alpha, beta = node.attr("alpha", 0.0), node.attr("beta", 0.0)
    if residual is not None and node.attr("residual", "pre") == "pre":
        return activation_oracle(act, z + residual, alpha, beta)
    y = activation_oracle(act, z, alpha, beta)
    return y + residual if residual is not None else y


class OneNode:
    """A graph holding one node, with its feeds and constants, ready to run through a tactic."""

    def __init__(self, op_type: str, attrs: dict[str, Any] | None = None) -> None:
        self.graph = Graph("one_node")
        self.op_type = op_type
        self.attrs = dict(attrs or {})
        self.input_names: list[str] = []
        self.feeds: dict[str, np.ndarray] = {}

    def feed(self, name: str, data: np.ndarray, *, const: bool = False) -> OneNode:
        data = np.array(data, order="C")  # a copy; keeps 0-d arrays 0-d
        if const:
            self.graph.add_const(name, data)
        else:
            self.graph.add_input(name, str(data.dtype), data.shape)
            self.feeds[name] = data
        self.input_names.append(name)
        return self

    def skip(self) -> OneNode:
        """An omitted optional input."""
        self.input_names.append("")
        return self

    def build(self, out_shape: Sequence[int], out_dtype: str = "float32") -> Node:
        node = self.graph.add_node(self.op_type, self.input_names, ["y"], self.attrs, name="node")
        self.graph.add_value("y", out_dtype, tuple(out_shape))
        self.graph.outputs = ["y"]
        self.node = node
        return node

    def arrays(self) -> list[np.ndarray | None]:
        return [
            None if not n else (self.feeds[n] if n in self.feeds else self.graph.const(n))
            for n in self.input_names
        ]

    def run_tactic(self, tactic_name: str, repeat: int = 2) -> np.ndarray:
        """Run the tactic (twice by default, to exercise its cached scratch) and return the output."""
        tactic = get_tactic(tactic_name)
        assert tactic.supports(self.node, self.graph), f"{tactic_name} declined {self.node}"
        prepared = tactic.prepare(self.node, self.graph)
        inputs = [None if i in prepared.replaces else a for i, a in enumerate(self.arrays())]
        y = self.graph.values["y"]
        assert y.shape is not None and y.dtype is not None
        out: np.ndarray = np.empty(tuple(int(d) for d in y.shape), np.dtype(y.dtype))
        for _ in range(repeat):
            out.fill(np.nan)
            tactic.run(self.node, inputs, [out], prepared)
        return out

    def expected(self, oracle: Callable[..., np.ndarray]) -> np.ndarray:
        """The expected output: the reference interpreter's (``reference.run_node``), checked
        against this test's own float64 numpy oracle ``oracle(*arrays)`` so that the two
        independent definitions must agree. Without a reference for the op, the oracle's."""
        mine = oracle(*self.arrays())
        run_node = reference_run_node()
        if run_node is None:
            return mine
        try:
            theirs = np.asarray(run_node(self.node, self.arrays(), self.graph)[0])
        except NotImplementedError:
            return mine
        assert_close(theirs, mine)
        return theirs


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """FP32 tolerance: relative L2 <= 1e-5, or elementwise allclose(rtol 1e-4, atol 1e-5)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), "non-finite output (an element was not written?)"
    expected = expected.astype(np.float64)
    diff = actual.astype(np.float64) - expected
    rel_l2 = float(np.linalg.norm(diff)) / max(float(np.linalg.norm(expected)), 1e-30)
    if rel_l2 <= 1e-5:
        return
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
