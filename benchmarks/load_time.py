"""Engine load time in a fresh process: read + deserialize + first run (numba's on-disk cache
warm, as after the first run on a machine)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farm.compiler.engine import Engine

_CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
from farm.compiler.engine import Engine
engine = Engine.load(sys.argv[1])
loaded = time.perf_counter()
with np.load(sys.argv[2], allow_pickle=False) as data:
    feeds = {k: data[k] for k in data.files}
engine.run(feeds)
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "first_run_s": done - loaded}))
"""


@dataclass
class LoadTimeResult:
    """Seconds from process start (imports included) to a loaded engine, and its first run."""

    model: str
    load_s: float
    first_run_s: float

    @property
    def total_s(self) -> float:
        return self.load_s + self.first_run_s


def load_time(name: str, engine: Engine, feeds: dict[str, np.ndarray]) -> LoadTimeResult:
    """Save ``engine``, then time loading and running it in a new interpreter (run twice, the
    second measured, so numba's cache is warm)."""
    with tempfile.TemporaryDirectory() as tmp:
        engine_path = Path(tmp) / f"{name}.engine"
        inputs_path = Path(tmp) / "inputs.npz"
        engine.save(engine_path)
        np.savez(inputs_path, **feeds)
        command = [sys.executable, "-c", _CHILD, str(engine_path), str(inputs_path)]
        result = None
        for _ in range(2):
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result is not None
    return LoadTimeResult(name, result["load_s"], result["first_run_s"])
