"""numba's on-disk cache lives in a folder named for the CPU backend's sources, so a change to a
helper module that kernels inline (which numba's own per-file check misses) starts a fresh cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import farm.compiler.kernels.cpu as cpu_backend
from farm.compiler.kernels.cpu import sources_digest


def test_any_source_change_gives_another_cache_folder(tmp_path: Path) -> None:
    backend = Path(cpu_backend.__file__).parent
    copy = tmp_path / "cpu"
    copy.mkdir()
    for path in backend.glob("*.py"):
        shutil.copy(path, copy / path.name)
    assert sources_digest(copy) == sources_digest(backend)
    helper = copy / "_vecmath.py"
    helper.write_text(helper.read_text() + "\n# a change to an inlined helper only\n")
    assert sources_digest(copy) != sources_digest(backend)


def test_the_cache_folder_is_under_numba_cache_dir(tmp_path: Path) -> None:
    code = "import farm.compiler.kernels.cpu; from numba.core import config; print(config.CACHE_DIR)"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    folder = Path(out.stdout.strip())
    assert folder == tmp_path / sources_digest(Path(cpu_backend.__file__).parent)
