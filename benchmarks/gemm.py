"""GEMM throughput: our tuned GEMM tactic (through a one-node engine) against numpy's BLAS, and
the same product as a strict INT8 engine (calibrated on random rows; the VNNI tiles where the
CPU has AVX-512 VNNI), all timed in one interleaved loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.ir import Graph

SIZES = ((256, 256, 256), (512, 512, 512), (1024, 1024, 1024))


@dataclass
class GemmResult:
    """GFLOP/s of ours and numpy on one M x K x N product (median times)."""

    m: int
    k: int
    n: int
    tactic: str
    ours_gflops: float
    numpy_gflops: float
    int8_tactic: str
    int8_gops: float

    @property
    def ratio(self) -> float:
        return self.ours_gflops / self.numpy_gflops

    @property
    def int8_ratio(self) -> float:
        """INT8 multiply-adds per second over numpy's FP32 ones."""
        return self.int8_gops / self.numpy_gflops


def gemm_graph(m: int | str, k: int, n: int, seed: int = 0) -> Graph:
    """``y = x @ W`` with a constant weight: the shape every Gemm/MatMul layer has (``m`` may be
    a symbol, as calibration needs: its samples are rows)."""
    g = Graph(f"gemm_{m}x{k}x{n}")
    g.add_input("x", "float32", (m, k))
    g.add_const("w", np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32))
    g.add_node("MatMul", ["x", "w"], ["y"])
    g.values["y"].dtype, g.values["y"].shape = "float32", (m, n)
    g.outputs = ["y"]
    return g


def compare_gemm(m: int, k: int, n: int, *, duration_s: float, tuning_level: int) -> GemmResult:
    """Time the engine's chosen tactic against ``np.matmul`` into a preallocated output."""
    graph = gemm_graph(m, k, n)
    engine = build(graph, "cpu", BuilderConfig(tuning_level=tuning_level, optimize=False))
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    w = graph.values["w"].const
    out = np.empty((m, n), np.float32)
    context = engine.create_context()
    calib = {"x": np.random.default_rng(2).standard_normal((64, k)).astype(np.float32)}
    int8 = build(
        gemm_graph("rows", k, n), "cpu",
        BuilderConfig(tuning_level=tuning_level, optimize=False, precision="int8", strict=True,
                      calibration=calib, calibrator="minmax", input_shapes={"x": [m, k]}),
    )  # fmt: skip
    int8_context = int8.create_context()
    stats = measure_interleaved(
        {
            "ours": lambda: context.run({"x": x}),
            "numpy": lambda: np.matmul(x, w, out=out),
            "int8": lambda: int8_context.run({"x": x}),
        },
        duration_s=duration_s,
        iterations=20,
    )
    flops = 2.0 * m * k * n
    return GemmResult(
        m, k, n, engine.kernels[0].tactic.name,
        flops / stats["ours"].median_ms / 1e6, flops / stats["numpy"].median_ms / 1e6,
        int8.kernels[0].tactic.name, flops / stats["int8"].median_ms / 1e6,
    )  # fmt: skip
