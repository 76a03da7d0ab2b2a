"""Engines keep their weights in one pool and their arena on 2 MiB-aligned mappings advised as
transparent huge pages, so that a run does not depend on which arrays numpy happened to madvise."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine.runtime import (
    HUGE_PAGE_BYTES,
    WEIGHT_ALIGNMENT,
    Engine,
    aligned_bytes,
    huge_page_bytes,
    pooled_weights,
)
from farm.compiler.ir import Graph

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_eligible(address: int) -> bool | None:
    """``THPeligible`` of the mapping holding ``address`` in /proc/self/smaps (None: not shown)."""
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        return None
    inside = False
    for line in smaps.read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "THPeligible:":
            return line.split()[1] == "1"
    return None


def _mlp_graph(width: int, seed: int = 0) -> Graph:
    """x[4, width] -> MatMul(width x width) -> Relu -> MatMul(width x 10)."""
    rng = np.random.default_rng(seed)
    g = Graph("wide_mlp")
    g.add_input("x", "float32", (4, width))
    g.add_const("w1", (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32))
    g.add_node("MatMul", ["x", "w1"], ["h"])
    g.values["h"].dtype, g.values["h"].shape = "float32", (4, width)
    g.add_node("Relu", ["h"], ["r"])
    g.values["r"].dtype, g.values["r"].shape = "float32", (4, width)
    g.add_const("w2", rng.standard_normal((width, 10)).astype(np.float32))
    g.add_node("MatMul", ["r", "w2"], ["y"])
    g.values["y"].dtype, g.values["y"].shape = "float32", (4, 10)
    g.outputs = ["y"]
    return g


def test_huge_page_buffer_is_aligned_zeroed_writable_and_advised() -> None:
    buf = huge_page_bytes(3 * HUGE_PAGE_BYTES + 123)
    assert buf.nbytes == 3 * HUGE_PAGE_BYTES + 123
    assert buf.ctypes.data % HUGE_PAGE_BYTES == 0
    assert not buf.any()
    buf[:] = 7
    assert int(buf[-1]) == 7
    mode = THP_MODE.read_text() if THP_MODE.exists() else ""
    if hasattr(mmap, "MADV_HUGEPAGE") and ("[madvise]" in mode or "[always]" in mode):
        assert _thp_eligible(buf.ctypes.data) is not False


def test_aligned_bytes_takes_huge_pages_from_two_mib_on() -> None:
    small = aligned_bytes(HUGE_PAGE_BYTES - 1, 64)
    big = aligned_bytes(HUGE_PAGE_BYTES, 64)
    assert small.ctypes.data % 64 == 0 and small.nbytes == HUGE_PAGE_BYTES - 1
    assert big.ctypes.data % HUGE_PAGE_BYTES == 0 and big.nbytes == HUGE_PAGE_BYTES


def test_pooled_weights_are_equal_read_only_aligned_views_of_one_buffer() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((513, 1031)).astype(np.float32),
        rng.integers(-128, 127, size=(7, 3), dtype=np.int8),
        rng.standard_normal((3,)).astype(np.float64),
    ]
    copies = pooled_weights(arrays)
    for original, copy in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(copy, original)
        assert copy.dtype == original.dtype and copy.shape == original.shape
        assert not copy.flags.writeable
        assert copy.ctypes.data % WEIGHT_ALIGNMENT == 0
    starts = [c.ctypes.data for c in copies]
    assert starts == sorted(starts) and starts[-1] - starts[0] < sum(a.nbytes for a in arrays) + 3 * 64


@pytest.mark.parametrize("width", [64, 1024])
def test_engine_weights_share_one_pool_once_they_reach_two_mib(tmp_path: Path, width: int) -> None:
    """A 1024 x 1024 weight (4 MiB) puts every prepared tensor in one huge-page pool; a small
    engine keeps its arrays; either way the engine, saved and loaded, computes the same."""
    graph = _mlp_graph(width)
    engine = build(graph, config=BuilderConfig(tuning_level=1, optimize=False))
    tensors = [a for k in engine.kernels for a in k.prepared.tensors.values() if isinstance(a, np.ndarray)]
    assert tensors and all(not a.flags.writeable for a in tensors)
    starts = sorted(a.ctypes.data for a in tensors)
    total = sum(a.nbytes for a in tensors)
    pooled = width == 1024
    if pooled:
        assert starts[0] % HUGE_PAGE_BYTES == 0
        assert starts[-1] - starts[0] < total + 64 * len(tensors)
    x = np.random.default_rng(1).standard_normal((4, width)).astype(np.float32)
    w1, w2 = (graph.const(n).astype(np.float64) for n in ("w1", "w2"))  # type: ignore[union-attr]
    expected = np.maximum(x.astype(np.float64) @ w1, 0) @ w2
    np.testing.assert_allclose(engine.run({"x": x})["y"], expected, rtol=1e-4, atol=1e-4)
    path = tmp_path / "wide.engine"
    engine.save(path)
    loaded = Engine.load(path)
    np.testing.assert_allclose(loaded.run({"x": x})["y"], expected, rtol=1e-4, atol=1e-4)
    if pooled:
        assert (
            min(a.ctypes.data for k in loaded.kernels for a in k.prepared.tensors.values()) % HUGE_PAGE_BYTES
            == 0
        )


def test_a_large_arena_starts_on_a_huge_page() -> None:
    graph = _mlp_graph(256)
    graph.values["x"].shape = (4096, 256)
    for name in ("h", "r"):
        graph.values[name].shape = (4096, 256)
    graph.values["y"].shape = (4096, 10)
    engine = build(graph, config=BuilderConfig(tuning_level=0, optimize=False))
    context = engine.create_context()
    if engine.plan.arena_size >= HUGE_PAGE_BYTES:
        assert context.arena.ctypes.data % HUGE_PAGE_BYTES == 0
    else:
        pytest.fail(f"the arena should be at least 2 MiB, planned {engine.plan.arena_size}")
