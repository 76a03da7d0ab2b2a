"""atheris harness: the engine loader on mutated engine files must load or raise EngineFormatError
(or DeviceMismatchError), nothing else.

Run by ``make fuzz`` (bounded by ``-max_total_time``); seeds in ``tests/fuzz/corpus/engine``. Half
the mutations are libFuzzer's byte-level ones, half rewrite one JSON value of the manifest and
re-encode a well-formed file (:mod:`engine_mutations`), which reaches the manifest's interpretation.

    .venv/bin/python tests/fuzz/fuzz_engine_loader.py WORK_DIR tests/fuzz/corpus/engine -max_total_time=60
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(
    include=["farm.compiler.engine", "farm.compiler.memory", "farm.compiler.kernels.registry"]
):
    from farm.compiler.engine import DeviceMismatchError, EngineFormatError
    from farm.compiler.engine.format import engine_from_bytes

import contextlib

from engine_mutations import mutate_engine  # noqa: E402


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's byte mutation or one structural mutation of the manifest."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return atheris.Mutate(data, max_size)
    try:
        mutated, _ = mutate_engine(data, rng, rounds=rng.randint(1, 3))
    except Exception:  # the header is no longer readable JSON: mutate the bytes
        return atheris.Mutate(data, max_size)
    return mutated if len(mutated) <= max_size else atheris.Mutate(data, max_size)


def test_one_input(data: bytes) -> None:
    """One input: load it; any exception but EngineFormatError/DeviceMismatchError propagates."""
    with contextlib.suppress(EngineFormatError, DeviceMismatchError):
        engine_from_bytes(data, allow_device_mismatch=True)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
