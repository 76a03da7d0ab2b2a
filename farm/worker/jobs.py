"""Job claiming and completion: the database, not the broker, decides who runs a job.

A message may be delivered more than once (late acknowledgement, a dead worker, a redelivery
after the visibility timeout). Each delivery first *claims* the job in one transaction:

- a final job (succeeded, failed, cancelled) is left alone, so a redelivered message does nothing;
- a job another worker is running under an unexpired lease is left alone;
- otherwise the job gets this worker's name, a fresh lease and one more attempt; a job that has
  used all its attempts is failed instead of run again.

Results are written by :func:`finish_job` only while the job is still held by the same worker, so
they are written once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db import Database, Job, JobState, utcnow
from farm.db.models import FINAL_JOB_STATES
from farm.storage import ArtifactStore, FileArtifactStore
from farm.worker.inspect import inspect_model_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds: its id and the attempt number."""

    job_id: int
    attempt: int


def claim_job(
    session: Session, job_id: int, *, worker_name: str, lease_seconds: int, state: JobState
) -> Claim | None:
    """Take ``job_id`` for ``worker_name`` and move it to ``state``; ``None`` when it must not run now."""
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        log.warning("job %s does not exist; dropping its message", job_id)
        return None
    if job.state in FINAL_JOB_STATES:
        log.info("job %s is already %s; nothing to do", job_id, job.state.value)
        return None
    now = utcnow()
    held_by_other = job.worker_name not in (None, worker_name)
    if job.state != JobState.QUEUED and held_by_other and job.lease_expires_at and job.lease_expires_at > now:
        log.info("job %s is held by %s until %s", job_id, job.worker_name, job.lease_expires_at)
        return None
    if job.attempts >= job.max_attempts:
        job.state = JobState.FAILED
        job.error = f"gave up after {job.attempts} attempts (the worker running it stopped each time)"
        job.finished_at = now
        return None
    job.attempts += 1
    job.state = state
    job.worker_name = worker_name
    job.started_at = job.started_at or now
    job.heartbeat_at = now
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.error = None
    return Claim(job.id, job.attempts)


def finish_job(
    session: Session, claim: Claim, *, worker_name: str, state: JobState, error: str | None = None
) -> Job | None:
    """Move a held job to a final ``state``; ``None`` (and no change) when the job is no longer ours."""
    job = session.execute(select(Job).where(Job.id == claim.job_id).with_for_update()).scalar_one()
    if job.state in FINAL_JOB_STATES or job.worker_name != worker_name or job.attempts != claim.attempt:
        log.warning("job %s was taken over or finished elsewhere; not writing results", claim.job_id)
        return None
    job.state = state
    job.error = error
    job.finished_at = utcnow()
    job.lease_expires_at = None
    return job


def renew_lease(session: Session, claim: Claim, *, worker_name: str, lease_seconds: int) -> bool:
    """Extend the lease of a held job and record a heartbeat; ``False`` when the job is no longer ours.

    Long steps (build, benchmark) call this periodically so the job is not taken over while it runs.
    """
    job = session.execute(select(Job).where(Job.id == claim.job_id).with_for_update()).scalar_one()
    if job.state in FINAL_JOB_STATES or job.worker_name != worker_name or job.attempts != claim.attempt:
        return False
    now = utcnow()
    job.heartbeat_at = now
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    return True


class ClaimedJobCommand:
    """A command that runs one job: ``validate()`` claims it (``False``: this delivery must do
    nothing), ``run()`` does the work. Subclasses set the state a claimed job starts in."""

    claimed_state = JobState.BUILDING

    def __init__(
        self, job_id: int, *, db: Database, store: ArtifactStore, worker_name: str, lease_seconds: int
    ) -> None:
        self.job_id = job_id
        self.db = db
        self.store = store
        self.worker_name = worker_name
        self.lease_seconds = lease_seconds
        self._claim: Claim | None = None

    def validate(self) -> bool:
        """Claim the job; ``False`` when it is final, held by another live worker, or out of attempts."""
        with self.db.session() as session:
            self._claim = claim_job(
                session,
                self.job_id,
                worker_name=self.worker_name,
                lease_seconds=self.lease_seconds,
                state=self.claimed_state,
            )
        return self._claim is not None

    def run(self) -> JobState | None:
        """Do the job; its final state, or ``None`` when this delivery had nothing to do."""
        raise NotImplementedError


class InspectJobCommand(ClaimedJobCommand):
    """Run an ``inspect`` job: compute the facts of the job's model version and store them.

    ``run()`` computes and stores the facts, or fails the job with the reason when the model
    cannot be read.
    """

    claimed_state = JobState.CHECKING

    def run(self) -> JobState | None:
        """Compute and store the facts; return the job's final state (``None``: not ours to run)."""
        if self._claim is None and not self.validate():
            return None
        assert self._claim is not None
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            artifact_key = job.model_version.artifact_key
        try:
            facts = self._compute(artifact_key)
        except Exception as exc:
            log.exception("inspect job %s failed", self.job_id)
            with self.db.session() as session:
                finish_job(
                    session,
                    self._claim,
                    worker_name=self.worker_name,
                    state=JobState.FAILED,
                    error=f"{type(exc).__name__}: {exc}",
                )
            return JobState.FAILED
        with self.db.session() as session:
            job = finish_job(session, self._claim, worker_name=self.worker_name, state=JobState.SUCCEEDED)
            if job is None:
                return None
            job.result = {"facts": facts}
            if job.model_version.facts is None:
                job.model_version.facts = facts
        return JobState.SUCCEEDED

    def _compute(self, artifact_key: str) -> dict[str, object]:
        if isinstance(self.store, FileArtifactStore):
            # verify the checksum once, then let onnx read the file itself
            for _chunk in self.store.open_chunks(artifact_key):
                pass
            return inspect_model_file(self.store.local_path(artifact_key))
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="farm-inspect-") as folder:
            path = self.store.fetch_to(artifact_key, Path(folder) / "model.onnx")
            return inspect_model_file(path)
