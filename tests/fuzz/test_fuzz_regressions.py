"""The fuzzers' corpus and findings as tests, plus a bounded, seeded run of the same structural
mutations (so ``make test`` fuzzes a little on every run, deterministically).

Findings of ``make fuzz`` go to ``tests/fuzz/corpus/regressions/`` (``*.onnx`` for the frontend,
``*.engine`` for the engine loader) and are replayed here.
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_mutations import join_engine, mutate_engine, split_engine
from onnx_mutations import mutate_model

from farm.compiler.engine import DeviceMismatchError, EngineFormatError
from farm.compiler.engine.format import engine_from_bytes
from farm.compiler.frontend import ModelError, load_onnx

CORPUS = Path(__file__).parent / "corpus"
ONNX_FILES = sorted([*CORPUS.glob("onnx/*"), *CORPUS.glob("regressions/*.onnx")])
ENGINE_FILES = sorted([*CORPUS.glob("engine/*"), *CORPUS.glob("regressions/*.engine")])
SEED_ENGINE = CORPUS / "engine" / "relu_matmul.engine"


def load_or_model_error(data: bytes) -> None:
    """What the ONNX harness requires of one input."""
    try:
        load_onnx(data)
    except ModelError as exc:
        assert not str(exc).startswith("malformed model: TypeError"), str(exc)


def load_or_format_error(data: bytes) -> None:
    """What the engine harness requires of one input."""
    with contextlib.suppress(EngineFormatError, DeviceMismatchError):
        engine_from_bytes(data, allow_device_mismatch=True)


@pytest.mark.parametrize("path", ONNX_FILES, ids=[p.name for p in ONNX_FILES])
def test_onnx_corpus_file(path: Path) -> None:
    load_or_model_error(path.read_bytes())


@pytest.mark.parametrize("path", ENGINE_FILES, ids=[p.name for p in ENGINE_FILES])
def test_engine_corpus_file(path: Path) -> None:
    load_or_format_error(path.read_bytes())


def test_seed_engine_is_a_working_engine() -> None:
    """The engine seed must load and run, or the mutations start from a file rejected at the door."""
    engine = engine_from_bytes(SEED_ENGINE.read_bytes(), allow_device_mismatch=True)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    expected = np.maximum(x, 0) @ np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(engine.run({"x": x})["y"], expected, rtol=1e-5)


def test_seeded_structural_mutations_of_onnx_models() -> None:
    """300 seeded structural mutations of the corpus models: each loads or is a clear ModelError."""
    rng = random.Random(20261121)
    seeds = [path.read_bytes() for path in CORPUS.glob("onnx/*")]
    for _ in range(300):
        model = onnx.ModelProto()
        model.ParseFromString(rng.choice(seeds))
        changes = mutate_model(model, rng, rounds=rng.randint(1, 3))
        try:
            load_or_model_error(model.SerializeToString())
        except Exception as exc:
            raise AssertionError(f"after {changes}: {type(exc).__name__}: {exc}") from exc


def test_seeded_structural_mutations_of_engine_files() -> None:
    """1000 seeded manifest mutations: each loads or is an EngineFormatError (35 raw-exception sites
    before the fix in engine/format.py)."""
    rng = random.Random(20261121)
    data = SEED_ENGINE.read_bytes()
    for _ in range(1000):
        mutated, changes = mutate_engine(data, rng, rounds=rng.randint(1, 3))
        try:
            load_or_format_error(mutated)
        except Exception as exc:
            raise AssertionError(f"after {changes}: {type(exc).__name__}: {exc}") from exc


def _with_manifest_change(change) -> bytes:  # type: ignore[no-untyped-def]
    header, manifest, tensors = split_engine(SEED_ENGINE.read_bytes())
    return join_engine(header, change(manifest), tensors)


REGRESSIONS = {
    "schedule_tactic_is_a_list": lambda m: (
        m | {"schedule": [m["schedule"][0] | {"tactic": []}, *m["schedule"][1:]]}
    ),
    "schedule_is_an_int": lambda m: m | {"schedule": -(2**63)},
    "fingerprint_missing": lambda m: {k: v for k, v in m.items() if k != "fingerprint"},
    "memory_plan_is_a_string": lambda m: m | {"memory_plan": "\x00"},
    "threads_is_a_float": lambda m: m | {"threads": float("nan")},
    "graph_missing": lambda m: {k: v for k, v in m.items() if k != "graph"},
    "inputs_is_a_number": lambda m: m | {"inputs": 0},
    "manifest_is_a_list": lambda m: [m],
}


@pytest.mark.parametrize("name", REGRESSIONS)
def test_malformed_manifest_is_an_engine_format_error(name: str) -> None:
    """Findings of the engine-loader fuzzing, each once a raw TypeError/KeyError/AttributeError."""
    with pytest.raises(EngineFormatError, match="manifest"):
        engine_from_bytes(_with_manifest_change(REGRESSIONS[name]), allow_device_mismatch=True)


def test_header_length_beyond_the_file_is_a_format_error() -> None:
    data = SEED_ENGINE.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    with pytest.raises(EngineFormatError, match="truncated"):
        engine_from_bytes(struct.pack("<Q", 2**63) + data[8:])
    with pytest.raises(EngineFormatError):
        engine_from_bytes(data[: 8 + length // 2])
    assert json.loads(data[8 : 8 + length])  # the seed's header itself is valid JSON
