"""The host's measurement lock: one timed step at a time across worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.worker.host_lock import measurement_lock

HOLDER = """
import sys, time
from pathlib import Path
from farm.worker.host_lock import measurement_lock
with measurement_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _start_holder(lock: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_waits_for_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    holder = _start_holder(lock, 1.0)
    waits: list[str] = []
    try:
        with measurement_lock(lock, on_wait=lambda: waits.append("busy")) as waited:
            assert waited > 0.2 and waits == ["busy"]  # it waited out the holder's second
    finally:
        holder.wait(timeout=10)


def test_a_killed_holder_never_leaves_the_lock_held(tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    holder = _start_holder(lock, 60.0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    started = time.monotonic()
    with measurement_lock(lock):
        assert time.monotonic() - started < 5


def test_waiting_can_be_abandoned(tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    holder = _start_holder(lock, 30.0)

    class Cancelled(Exception):
        pass

    def check() -> None:
        raise Cancelled

    try:
        with pytest.raises(Cancelled), measurement_lock(lock, check=check):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
