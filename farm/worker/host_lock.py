"""One measurement at a time per host.

Tuning a build and benchmarking an engine time code on this machine; two workers doing either at
once on the same host (two profiles served by one machine, or two worker processes) each measure
the other's threads, and the paired latency ratios turn bimodal (a 50x slower engine was once
judged "unchanged" with a 95 % interval of [0.47, 28]). Every worker process on the host takes
this exclusive file lock around those steps, so timings see an otherwise idle farm. Inspection,
storage and the accuracy check run without it.

The lock is an ``fcntl.flock`` on a file in the system's temporary folder: the kernel drops it
when the holder dies, so a SIGKILLed worker never leaves it held. While a job waits for it, its
lease keeps being renewed by the job's own renewal thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_PATH = Path(tempfile.gettempdir()) / "engine-farm" / "measure.lock"
POLL_SECONDS = 0.25


@contextlib.contextmanager
def measurement_lock(
    path: Path = LOCK_PATH,
    *,
    check: Callable[[], None] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[float]:
    """Hold the host's measurement lock; yields the seconds spent waiting for it.

    ``check`` is called while waiting (it raises to abandon the wait, e.g. on cancellation);
    ``on_wait`` once, when the lock is busy, so the job's log can say why it is waiting.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    started = time.monotonic()
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                if check is not None:
                    check()
                time.sleep(POLL_SECONDS)
        try:
            yield time.monotonic() - started
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
