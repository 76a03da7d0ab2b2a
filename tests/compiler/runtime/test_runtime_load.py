"""Engine loading: manifest consistency checks (tampered files), recorded shapes, zero-copy tensors,
backward compatibility with files that predate them, and what loading imports."""

from __future__ import annotations

import json
import pkgutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farm.compiler import reference
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine import Engine, EngineFormatError
from farm.compiler.engine import format as engine_format
from farm.compiler.ir import Graph
from farm.compiler.kernels import registry

Manifest = dict[str, Any]


def _mlp_graph(width: int = 32) -> Graph:
    """x[batch, 16] -> MatMul -> Relu -> MatMul -> Tanh: symbolic batch, arena buffers."""
    from farm.compiler.frontend import infer_shapes

    rng = np.random.default_rng(7)
    g = Graph("sym_mlp")
    g.add_input("x", "float32", ("batch", 16))
    g.add_const("w1", rng.standard_normal((16, width)).astype(np.float32))
    g.add_const("w2", rng.standard_normal((width, 8)).astype(np.float32))
    g.add_node("MatMul", ["x", "w1"], ["h"])
    g.add_node("Relu", ["h"], ["r"])
    g.add_node("MatMul", ["r", "w2"], ["m"])
    g.add_node("Tanh", ["m"], ["y"])
    g.outputs = ["y"]
    infer_shapes(g, {"x": ("batch", 16)})
    return g


@pytest.fixture(scope="module")
def engine_bytes() -> bytes:
    config = BuilderConfig(tuning_level=0, optimize=False, batch_range=(1, 3, 4))
    return build(_mlp_graph(), config=config).to_bytes()


def _rewrite(data: bytes, change: Callable[[Manifest], None]) -> bytes:
    """``data`` with its manifest edited in place by ``change`` (tensors untouched)."""
    header_len, header, manifest = engine_format._split(data)
    change(manifest)
    header["__metadata__"] = {engine_format.MANIFEST_KEY: json.dumps(manifest)}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + header_len :]


def _arena_value(m: Manifest) -> str:
    return next(k for k, v in m["memory_plan"]["values"].items() if v["kind"] == "arena")


def _shrink_buffer(m: Manifest) -> None:
    buf = m["memory_plan"]["values"][_arena_value(m)]["buffer"]
    m["memory_plan"]["buffers"][buf]["size"] = 4


def _drop_step(m: Manifest) -> None:
    m["schedule"].pop(1)


def _reverse_schedule(m: Manifest) -> None:
    m["schedule"].reverse()


def _alias_cycle(m: Manifest) -> None:
    name = _arena_value(m)
    m["memory_plan"]["values"][name] = {"kind": "alias", "of": name}


def _recorded_shape(m: Manifest) -> None:
    entry = m["shapes"][0]
    name = next(iter(entry["values"]))
    entry["values"][name] = [*entry["values"][name], 1]


TAMPERED: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "buffer_beyond_arena": (
        lambda m: m["memory_plan"]["buffers"][0].update(offset=1 << 20),
        "beyond the arena",
    ),
    "misaligned_buffer": (lambda m: m["memory_plan"]["buffers"][0].update(offset=8), "alignment"),
    "huge_arena": (lambda m: m["memory_plan"].update(arena_size=1 << 50), "arena of"),
    "zero_alignment": (lambda m: m["memory_plan"].update(alignment=0), "power of two"),
    "value_bigger_than_buffer": (_shrink_buffer, "does not fit its buffer"),
    "missing_buffer": (
        lambda m: m["memory_plan"]["values"][_arena_value(m)].update(buffer=99),
        "buffer 99",
    ),
    "unknown_placement": (lambda m: m["memory_plan"]["values"][_arena_value(m)].update(kind="heap"), "kind"),
    "alias_cycle": (_alias_cycle, "view of itself"),
    "unplaced_value": (lambda m: m["memory_plan"]["values"].pop(_arena_value(m)), "no placement"),
    "step_missing": (_drop_step, "every node"),
    "schedule_out_of_order": (_reverse_schedule, "no earlier step writes"),
    "recorded_shape_rank": (_recorded_shape, "contradicts its graph shape"),
    "recorded_input_out_of_range": (
        lambda m: m["shapes"][0]["inputs"].update(x=[9, 16]),
        "outside",
    ),
    "bad_input_range": (lambda m: m["inputs"][0].update(min_shape=[5, 16]), "min/opt/max"),
}


@pytest.mark.parametrize("name", TAMPERED)
def test_tampered_manifest_is_refused_at_load(engine_bytes: bytes, name: str) -> None:
    change, message = TAMPERED[name]
    with pytest.raises(EngineFormatError, match=f"manifest.*{message}"):
        Engine.from_bytes(_rewrite(engine_bytes, change))


def _run_all(engine: Engine, batches: tuple[int, ...] = (3, 1, 4), width: int = 32) -> None:
    graph = _mlp_graph(width)
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        got, want = engine.run({"x": x})["y"], reference.run(graph, {"x": x})["y"]
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)  # FP32: relative L2


def test_recorded_shapes_match_inference_and_cover_opt_and_max(engine_bytes: bytes) -> None:
    manifest = engine_format.read_manifest(engine_bytes)
    assert [e["inputs"]["x"] for e in manifest["shapes"]] == [[3, 16], [4, 16]]
    engine = Engine.from_bytes(engine_bytes)
    seeded = dict(engine._shape_cache)
    assert sorted(seeded) == [(("x", (3, 16)),), (("x", (4, 16)),)]
    engine._shape_cache.clear()
    for key, shapes in seeded.items():
        assert engine.infer_shapes(dict(key)) == shapes
    _run_all(engine)


def test_files_without_module_or_shapes_still_load(engine_bytes: bytes) -> None:
    """Files written before the manifest recorded tactic modules and shapes (same format version)."""

    def strip(m: Manifest) -> None:
        m.pop("shapes")
        for entry in m["schedule"]:
            entry.pop("module")

    engine = Engine.from_bytes(_rewrite(engine_bytes, strip))
    assert engine._shape_cache == {}
    _run_all(engine)


def _root(array: np.ndarray) -> object:
    """The object that owns ``array``'s memory (for a view of a mapping: the mapping)."""
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_tensors_are_read_only_views_of_the_file_bytes(engine_bytes: bytes, tmp_path: Path) -> None:
    """Views of one buffer holding the file (the bytes themselves, copied once to a cache line
    when they do not start on one; a mapped file is used as it is), never a copy per tensor, and
    every prepared weight starts on a 64-byte line."""
    from farm.compiler.engine import format as engine_format

    big = tmp_path / "big.engine"
    config = BuilderConfig(tuning_level=0, optimize=False, batch_range=(1, 3, 4))
    build(_mlp_graph(width=12000), config=config).save(big)
    assert big.stat().st_size >= engine_format._MMAP_BYTES  # read_engine maps it
    for engine, width in ((Engine.from_bytes(engine_bytes), 32), (Engine.load(big), 12000)):
        prepared = [a for k in engine.kernels for a in k.prepared.tensors.values()]
        arrays = prepared + list(engine.constants.values())
        assert arrays
        roots = set()
        for array in arrays:
            assert not array.flags.writeable and array.flags.aligned and array.flags.c_contiguous
            roots.add(id(_root(array)))
        assert len(roots) == 1  # one buffer: the file's
        for array in prepared:
            assert array.nbytes < 64 or array.ctypes.data % 64 == 0
        _run_all(engine, (3,), width)


def test_engine_file_tensors_start_on_a_cache_line(engine_bytes: bytes) -> None:
    """Each tensor's data lies at a multiple of 64 bytes from the file's start; the gaps are
    ``__pad__/`` byte tensors, so the file is still one that safetensors itself reads."""
    import safetensors.numpy

    odd = {
        "a": np.arange(3, dtype=np.float32),
        "b": np.arange(5, dtype=np.int64),
        "c": np.ones((2, 3), np.float16),
    }
    data = engine_format.aligned_safetensors(odd, {"k": "v"})
    header_len = int.from_bytes(data[:8], "little")
    assert (8 + header_len) % 64 == 0
    header = json.loads(data[8 : 8 + header_len])
    assert [k for k in header if k.startswith(engine_format.PAD_PREFIX)]  # 12 and 40 bytes: gaps
    loaded = safetensors.numpy.load(data)
    for key, array in odd.items():
        assert header[key]["data_offsets"][0] % 64 == 0
        np.testing.assert_array_equal(loaded[key], array)
        assert loaded[key].dtype == array.dtype

    header_len, header, _ = engine_format._split(engine_bytes)
    assert (8 + header_len) % 64 == 0
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, info in tensors.items():
        if not key.startswith(engine_format.PAD_PREFIX):
            assert info["data_offsets"][0] % 64 == 0, key
    loaded = safetensors.numpy.load(engine_bytes)
    assert set(loaded) == set(tensors)
    engine = Engine.from_bytes(engine_bytes)
    for k in engine.kernels:
        for name, array in k.prepared.tensors.items():
            np.testing.assert_array_equal(loaded[f"prep/{k.node.name}/{name}"], array)


def test_weights_of_a_built_engine_start_on_a_cache_line() -> None:
    """numpy gives a large array 16-byte alignment; the engine moves such weights to a line."""
    from farm.compiler.engine.runtime import aligned_weight

    raw = np.zeros(1000 * 4 + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + 16
    misaligned = raw[start : start + 4000].view(np.float32)
    misaligned[:] = np.arange(1000)
    moved = aligned_weight(misaligned)
    assert moved.ctypes.data % 64 == 0 and not moved.flags.writeable
    np.testing.assert_array_equal(moved, np.arange(1000))
    engine = build(_mlp_graph(), config=BuilderConfig(tuning_level=0, optimize=False))
    for k in engine.kernels:
        for array in k.prepared.tensors.values():
            assert array.nbytes < 64 or not array.flags.c_contiguous or array.ctypes.data % 64 == 0


def test_tensor_table_that_does_not_tile_the_data_is_refused(engine_bytes: bytes) -> None:
    header_len, header, _ = engine_format._split(engine_bytes)
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [header[key]["data_offsets"][0], header[key]["data_offsets"][1] + 4]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    data = struct.pack("<Q", len(encoded)) + encoded + engine_bytes[8 + header_len :]
    with pytest.raises(EngineFormatError, match="corrupted or truncated"):
        Engine.from_bytes(data)


def test_a_manifest_cannot_make_the_loader_import_other_modules() -> None:
    assert registry._module_hints("cpu.numpy.Relu", "json.tool") == ["farm.compiler.kernels.cpu.numpy"]
    assert registry._module_hints("cpu.numpy.Relu", "farm.compiler.kernels.cpu.generic") == [
        "farm.compiler.kernels.cpu.generic",
        "farm.compiler.kernels.cpu.numpy",
    ]
    assert registry._module_hints("cpu.x", "farm.compiler.kernels.cpu.a b") == ["farm.compiler.kernels.cpu.x"]
    assert registry.get_tactic("cpu.numpy.Relu", "json.tool").name == "cpu.numpy.Relu"
    assert registry.tactic_module("cpu.numpy.Relu") == "farm.compiler.kernels.cpu.generic"


_CHILD = """
import json, sys
from farm.compiler.engine import Engine
from farm.compiler.kernels import registry
engine = Engine.load(sys.argv[1])
loaded = sorted(m for m in sys.modules if m.startswith("farm.compiler.kernels.cpu."))
heavy = sorted(m for m in ("onnx", "onnxruntime", "farm.compiler.frontend.loader", "farm.compiler.passes",
                           "farm.compiler.tuner", "farm.compiler.builder", "pydantic", "rich", "sqlalchemy")
               if m in sys.modules)
full = len(registry._TACTICS)
registry.load_backend("cpu")
print(json.dumps({"loaded": loaded, "heavy": heavy, "partial": full, "all": len(registry._TACTICS),
                  "modules": sorted({type(k.tactic).__module__ for k in engine.kernels})}))
"""


def test_loading_imports_only_the_scheduled_tactic_modules(tmp_path: Path, engine_bytes: bytes) -> None:
    path = tmp_path / "model.engine"
    path.write_bytes(engine_bytes)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    public = [m for m in result["loaded"] if not m.rsplit(".", 1)[1].startswith("_")]
    assert set(result["modules"]) <= set(public)
    import farm.compiler.kernels.cpu as cpu

    every = [i.name for i in pkgutil.iter_modules(cpu.__path__) if not i.name.startswith("_")]
    assert len(public) < len(every)  # not the whole backend
    assert result["partial"] < result["all"]  # load_backend still registers everything afterwards


def test_big_files_are_mapped_and_a_truncated_one_is_a_clear_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    g = Graph("wide")
    g.add_input("x", "float32", (2, 600))
    g.add_const("w", rng.standard_normal((600, 512)).astype(np.float32))  # 1.2 MB: above the mmap size
    g.add_node("MatMul", ["x", "w"], ["m"])
    g.add_node("Relu", ["m"], ["y"])
    g.values["m"].dtype = g.values["y"].dtype = "float32"
    g.values["m"].shape = g.values["y"].shape = (2, 512)
    g.outputs = ["y"]
    path = tmp_path / "wide.engine"
    build(g, config=BuilderConfig(tuning_level=0, optimize=False)).save(path)
    assert path.stat().st_size >= engine_format._MMAP_BYTES
    engine = Engine.load(path)
    x = rng.standard_normal((2, 600)).astype(np.float32)
    got, want = engine.run({"x": x})["y"], reference.run(g, {"x": x})["y"]
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)  # FP32: relative L2
    data = path.read_bytes()
    short = tmp_path / "short.engine"
    short.write_bytes(data[: len(data) - 4096])
    with pytest.raises(EngineFormatError, match="truncated"):
        Engine.load(short)


_BLAS_CHILD = """
import sys
import numba, numpy as np
from farm.compiler.engine.numba_support import preload_numba_support
assert preload_numba_support() and not preload_numba_support()

@numba.njit(cache=False)
def dot(a, b):
    return np.dot(a, b)

a = np.random.default_rng(0).standard_normal((7, 9)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
np.testing.assert_allclose(dot(a, b), a @ b, rtol=1e-5)
assert "scipy.linalg" not in sys.modules
import scipy.linalg
import scipy.linalg.cython_blas as blas
assert blas is sys.modules["scipy.linalg.cython_blas"]
np.testing.assert_allclose(scipy.linalg.solve(np.eye(3), np.ones(3)), np.ones(3))
print("ok")
"""


def test_cython_blas_preload_keeps_numba_blas_and_scipy_working() -> None:
    done = subprocess.run([sys.executable, "-c", _BLAS_CHILD], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
