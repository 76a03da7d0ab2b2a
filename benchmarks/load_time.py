"""Engine load time in a fresh process: imports + read + deserialize + first run, with the caches
warm, as after the first run on a machine.

"Warm" means numba's on-disk kernel cache *and* Python's bytecode cache: the child runs without
``PYTHONDONTWRITEBYTECODE`` (an installed package has its ``.pyc`` files; a development shell that
sets the variable recompiles every module of the project at each start, about 0.3 s more).
The child is started once to warm both caches, then ``runs`` more times; the figures are medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from farm.compiler.engine import Engine

# Modules the runtime must not need: if one of them shows up in the child, the figure includes it.
HEAVY_MODULES = (
    "onnx", "onnxruntime", "farm.compiler.frontend.loader", "farm.compiler.passes", "farm.compiler.tuner",
    "farm.compiler.builder", "pydantic", "rich", "sqlalchemy", "torch",
)  # fmt: skip

_CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
from farm.compiler.engine import Engine
imported = time.perf_counter()
engine = Engine.load(sys.argv[1])
loaded = time.perf_counter()
with np.load(sys.argv[2], allow_pickle=False) as data:
    feeds = {k: data[k] for k in data.files}
begun = time.perf_counter()
engine.run(feeds)
done = time.perf_counter()
engine.run(feeds)
steady = time.perf_counter() - done
heavy = sorted(m for m in json.loads(sys.argv[3]) if m in sys.modules)
print(json.dumps({"import_s": imported - start, "load_s": loaded - start, "first_run_s": done - begun,
                  "second_run_s": steady, "heavy_modules": heavy}))
"""


@dataclass
class LoadTimeResult:
    """Seconds from process start to a loaded engine (``load_s``, imports included; ``import_s``
    of it is the imports alone), and its first run (``second_run_s``: the next one, for scale)."""

    model: str
    load_s: float
    first_run_s: float
    import_s: float = 0.0
    second_run_s: float = 0.0
    runs: int = 1
    heavy_modules: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.load_s + self.first_run_s


def child_environment() -> dict[str, str]:
    """The child's environment: this one, with bytecode caching on (see the module docstring)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def load_time(name: str, engine: Engine, feeds: dict[str, np.ndarray], *, runs: int = 3) -> LoadTimeResult:
    """Save ``engine``, then time loading and running it in new interpreters: one warm-up start,
    then ``runs`` measured ones (medians)."""
    with tempfile.TemporaryDirectory() as tmp:
        engine_path = Path(tmp) / f"{name}.engine"
        inputs_path = Path(tmp) / "inputs.npz"
        engine.save(engine_path)
        np.savez(inputs_path, **feeds)
        command = [
            sys.executable,
            "-c",
            _CHILD,
            str(engine_path),
            str(inputs_path),
            json.dumps(HEAVY_MODULES),
        ]
        results = []
        for _ in range(runs + 1):
            done = subprocess.run(
                command, capture_output=True, text=True, check=True, env=child_environment()
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    measured = results[1:]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in measured)

    return LoadTimeResult(
        name,
        load_s=median("load_s"),
        first_run_s=median("first_run_s"),
        import_s=median("import_s"),
        second_run_s=median("second_run_s"),
        runs=len(measured),
        heavy_modules=sorted({m for r in measured for m in r["heavy_modules"]}),
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.load_time [--models mlp,resnet] [--runs 3]``: the load table alone."""
    import argparse

    from benchmarks.zoo_vs_ort import build_zoo_engine
    from farm import zoo
    from farm.compiler.tuner import MemoryTimingCache

    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_time", description=main.__doc__)
    parser.add_argument("--models", default="", help="comma-separated zoo models (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="measured starts per model (after one warm-up)")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m] or [m.name for m in zoo.list_models()]
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| model | imports s | import + load s | first run s | total s | (second run s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        engine, _, feeds = build_zoo_engine(name, 1, MemoryTimingCache(), 0)
        r = load_time(name, engine, feeds, runs=args.runs)
        heavy = f" (imported {', '.join(r.heavy_modules)})" if r.heavy_modules else ""
        print(f"| {name} | {r.import_s:.2f} | {r.load_s:.2f} | {r.first_run_s:.2f} | {r.total_s:.2f} | "
              f"{r.second_run_s:.2f} |{heavy}", flush=True)  # fmt: skip
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
