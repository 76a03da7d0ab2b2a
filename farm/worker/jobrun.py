"""A claimed job while it runs: lease renewal, cancellation, progress and the job's log.

A background thread renews the job's lease every third of the lease time. When the renewal finds
the job no longer ours (cancelled through the API, or taken over after our lease expired), the run
is marked *stopped*; the pipeline calls :meth:`JobRun.check` between and inside its steps (the
builder's progress callback, every benchmark iteration), which raises :class:`JobStopped`.

Some work never reaches a check for minutes: numba compiling a kernel the first time a build uses
it (one ResNet node at tuning level 3 took 94 s with a cold kernel cache on a 2-core host), or
the engine timings of the thread choice. So a run that has not stopped ``cancel_grace_seconds``
after the job was found lost is *interrupted*: while the pipeline runs inside
:meth:`JobRun.interruptible`, :class:`JobInterrupted` is raised in its thread asynchronously, the
way Ctrl-C raises ``KeyboardInterrupt`` (at the next Python instruction, after a running C call
returns). It derives from ``BaseException`` so that no ``except Exception`` on the way (a tactic
that raised is a rejected tactic) swallows it.

The log is kept in a local file and uploaded to the artifact store at every step and at most every
few seconds while a step runs, so it can be read while the job runs (``jobs.log_artifact_key``
always names the latest snapshot; the snapshot before it is deleted).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import select

from farm.db import Database, Job, JobState
from farm.db.models import FINAL_JOB_STATES
from farm.storage import ArtifactStore
from farm.worker.jobs import Claim, renew_lease

log = logging.getLogger(__name__)

LOG_UPLOAD_SECONDS = 3.0
PROGRESS_WRITE_SECONDS = 1.0
CANCEL_GRACE_SECONDS = 5.0


class JobStopped(Exception):
    """The job was cancelled or taken over by another worker; this run must stop writing."""


class JobInterrupted(BaseException):
    """Raised asynchronously in a run that did not stop by itself within the grace time after its
    job was lost (see the module docstring); :attr:`JobRun.stopped_reason` says why."""


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exception`` at its next Python instruction (``None``: clear a
    pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception is not None else None
    )


class JobRun:
    """The running side of a :class:`~farm.worker.jobs.Claim` (use as a context manager)."""

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        claim: Claim,
        *,
        worker_name: str,
        lease_seconds: int,
        cancel_grace_seconds: float = CANCEL_GRACE_SECONDS,
    ) -> None:
        self.db = db
        self.store = store
        self.claim = claim
        self.worker_name = worker_name
        self.lease_seconds = lease_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        self.stopped_reason: str | None = None
        self.interrupted = False
        self._interrupt_lock = threading.Lock()
        self._interruptible_thread: int | None = None
        self.steps: list[dict[str, Any]] = []
        self._stop_event = threading.Event()
        self._lease_thread = threading.Thread(
            target=self._keep_lease, name=f"lease-{claim.job_id}", daemon=True
        )
        self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            mode="w+", prefix=f"farm-job-{claim.job_id}-", suffix=".log", encoding="utf-8", delete=False
        )
        self._log_lock = threading.Lock()
        self._last_upload = 0.0
        self._last_progress_write = 0.0
        self._log_key: str | None = None
        self._snapshots: list[str] = []
        self._step_started = time.perf_counter()

    # lifecycle

    def __enter__(self) -> JobRun:
        self._carry_over_earlier_log()
        self._lease_thread.start()
        self.log(f"job {self.claim.job_id} attempt {self.claim.attempt} on {self.worker_name}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and not isinstance(exc, JobStopped | JobInterrupted):
            self.log(f"error: {type(exc).__name__}: {exc}")
        self.close()

    def close(self) -> None:
        """Stop renewing the lease and upload the final log."""
        self._stop_event.set()
        if self._lease_thread.is_alive():
            self._lease_thread.join(timeout=5)
        try:
            self.upload_log(force=True)
        except Exception:  # the results matter more than the log; the reason is in the worker's log
            log.exception("job %s: could not store its log", self.claim.job_id)
        self._log_file.close()
        Path(self._log_file.name).unlink(missing_ok=True)

    def _carry_over_earlier_log(self) -> None:
        # a retried job keeps the log of its earlier attempts (why the first one stopped matters)
        with self.db.session() as session:
            job = session.get(Job, self.claim.job_id)
            key = job.log_artifact_key if job is not None else None
        if not key:
            return
        try:
            earlier = self.store.read_bytes(key).decode("utf-8", errors="replace")
        except Exception:  # a missing or damaged snapshot must not stop the job
            log.warning("job %s: could not read the log of its earlier attempts", self.claim.job_id)
            return
        with self._log_lock:
            self._log_file.write(earlier)
        self._log_key = key
        # the earlier attempt's last snapshot joins this attempt's rotation: deleted once two newer
        # snapshots exist, instead of staying in the store unreferenced
        self._snapshots.append(key)

    # cancellation and lease

    def check(self) -> None:
        """Raise :class:`JobStopped` once the job was cancelled or taken over."""
        if self.stopped_reason is not None:
            raise JobStopped(self.stopped_reason)

    def _keep_lease(self) -> None:
        interval = max(1.0, self.lease_seconds / 3)
        while not self._stop_event.wait(interval):
            try:
                with self.db.session() as session:
                    held = renew_lease(
                        session, self.claim, worker_name=self.worker_name, lease_seconds=self.lease_seconds
                    )
                    if not held:
                        self.stopped_reason = self.why_lost(session)
            except Exception:  # a database hiccup: the next renewal retries well before the lease ends
                log.exception("job %s: lease renewal failed", self.claim.job_id)
                continue
            if not held:
                log.warning("job %s: %s; stopping", self.claim.job_id, self.stopped_reason)
                self._interrupt_unless_stopped()
                return

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Run the block so that, once the job is lost, it is interrupted with
        :class:`JobInterrupted` if it has not stopped by itself within the grace time."""
        with self._interrupt_lock:
            self._interruptible_thread = threading.get_ident()
        try:
            yield
        finally:
            with self._interrupt_lock:
                thread, self._interruptible_thread = self._interruptible_thread, None
                if thread is not None and self.interrupted:
                    _raise_in_thread(thread, None)  # one not yet delivered must not fire outside

    def _interrupt_unless_stopped(self) -> None:
        # every grace period while the block still runs (a C call delays delivery; a second
        # raise covers an exception some cleanup code caught and dropped)
        while not self._stop_event.wait(self.cancel_grace_seconds):
            with self._interrupt_lock:
                if self._interruptible_thread is None:
                    return
                log.warning(
                    "job %s: still running %.0f s after it was lost; interrupting it",
                    self.claim.job_id,
                    self.cancel_grace_seconds,
                )
                self.interrupted = True
                _raise_in_thread(self._interruptible_thread, JobInterrupted)

    def why_lost(self, session: Any) -> str:
        """Why this worker no longer holds the job: cancelled, finished elsewhere, or taken over."""
        job = session.execute(select(Job).where(Job.id == self.claim.job_id)).scalar_one()
        if job.state == JobState.CANCELLED:
            return "the job was cancelled"
        if job.state in FINAL_JOB_STATES:
            return f"the job is already {job.state.value}"
        return f"the job was taken over by {job.worker_name} (attempt {job.attempts})"

    # state, progress and log

    def set_state(self, state: JobState) -> None:
        """Move the held job to a running ``state`` (building, benchmarking, checking)."""
        self.check()
        with self.db.session() as session:
            job = session.execute(
                select(Job).where(Job.id == self.claim.job_id).with_for_update()
            ).scalar_one()
            if job.state in FINAL_JOB_STATES or job.worker_name != self.worker_name:
                self.stopped_reason = self.stopped_reason or self.why_lost(session)
                self.check()
            job.state = state

    def step(self, name: str, detail: str = "") -> None:
        """Start pipeline step ``name``: log it, record its start in the job's progress."""
        self.check()
        now = time.perf_counter()
        if self.steps:
            self.steps[-1]["seconds"] = round(now - self._step_started, 3)
        self._step_started = now
        self.steps.append({"step": name, "started_at": datetime.now(UTC).isoformat()})
        self.log(f"step {name}" + (f": {detail}" if detail else ""))
        self.progress(name, 0, 1, detail, force=True)
        self.upload_log(force=True)

    def progress(self, step: str, done: int, total: int, detail: str = "", *, force: bool = False) -> None:
        """Record where the running step is (throttled to one database write a second)."""
        self.check()
        now = time.monotonic()
        if not force and now - self._last_progress_write < PROGRESS_WRITE_SECONDS:
            return
        self._last_progress_write = now
        with self.db.session() as session:
            job = session.get(Job, self.claim.job_id)
            if job is not None and job.worker_name == self.worker_name and job.state not in FINAL_JOB_STATES:
                job.progress = {
                    "step": step,
                    "done": done,
                    "total": total,
                    "detail": detail,
                    "steps": self.steps,
                }
        self.upload_log()

    def finish_steps(self) -> list[dict[str, Any]]:
        """Close the last step's timing and return every step with its duration."""
        if self.steps and "seconds" not in self.steps[-1]:
            self.steps[-1]["seconds"] = round(time.perf_counter() - self._step_started, 3)
        return self.steps

    def log(self, message: str) -> None:
        """Append a timestamped line to the job's log (and to the worker's log)."""
        log.info("job %s: %s", self.claim.job_id, message)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        with self._log_lock:
            self._log_file.write(f"{stamp} {message}\n")
            self._log_file.flush()

    def upload_log(self, *, force: bool = False) -> None:
        """Store a snapshot of the log and point the job at it (at most every few seconds)."""
        now = time.monotonic()
        if not force and now - self._last_upload < LOG_UPLOAD_SECONDS:
            return
        self._last_upload = now
        with self._log_lock:
            stored = self.store.put_file(self._log_file.name)
        if stored.key == self._log_key:
            return
        with self.db.session() as session:
            job = session.get(Job, self.claim.job_id)
            if job is None or job.worker_name != self.worker_name or job.attempts != self.claim.attempt:
                return
            if job.state in FINAL_JOB_STATES and job.log_artifact_key == self._log_key:
                return  # the job finished with its final log; later lines stay in the worker's log
            job.log_artifact_key = stored.key
        self._log_key = stored.key
        # a reader may hold the key it just read from the job: keep one older snapshot for it
        self._snapshots.append(stored.key)
        while len(self._snapshots) > 2:
            self.store.delete(self._snapshots.pop(0))

    def final_log_key(self) -> str | None:
        """Store the log as it is now and return its key, for the transaction that finishes the job."""
        self.upload_log(force=True)
        return self._log_key
