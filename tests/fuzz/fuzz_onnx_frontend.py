"""atheris harness: ``load_onnx`` on mutated model bytes must load or raise ModelError, nothing else.

Run by ``make fuzz`` (bounded by ``-max_total_time``); seeds in ``tests/fuzz/corpus/onnx``. Half the
mutations are libFuzzer's byte-level ones, half rewrite one thing inside the parsed model
(:mod:`onnx_mutations`). A ModelError that merely wraps an internal exception ("malformed model:
TypeError ...") counts as a finding too: the message must name the problem.

    .venv/bin/python tests/fuzz/fuzz_onnx_frontend.py WORK_DIR tests/fuzz/corpus/onnx -max_total_time=60
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["farm"]):
    from farm.compiler.frontend import ModelError, load_onnx

from onnx import ModelProto  # noqa: E402
from onnx_mutations import mutate_model  # noqa: E402

INTERNAL = re.compile(
    r"^malformed model: (TypeError|KeyError|AttributeError|IndexError|UnboundLocalError|NameError)"
)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's byte mutation or one structural mutation of the parsed model."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return atheris.Mutate(data, max_size)
    model = ModelProto()
    try:
        model.ParseFromString(data)
        mutate_model(model, rng, rounds=rng.randint(1, 3))
        mutated = model.SerializeToString()
    except Exception:  # not a model (any more), or one too odd to rewrite: mutate the bytes
        return atheris.Mutate(data, max_size)
    return mutated if len(mutated) <= max_size else atheris.Mutate(data, max_size)


def test_one_input(data: bytes) -> None:
    """One input: load it; any exception but a clear ModelError propagates (a finding)."""
    try:
        load_onnx(data)
    except ModelError as exc:
        if INTERNAL.match(str(exc)):
            raise AssertionError(f"internal error surfaced as ModelError: {exc}") from exc


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
