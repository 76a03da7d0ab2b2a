"""Claiming jobs: redelivered messages do nothing, dead workers' jobs are taken over, results are written once."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from farm.db import Database, Job, JobKind, JobState, Model, ModelVersion, utcnow
from farm.storage import FileArtifactStore
from farm.worker.jobrun import JobInterrupted, JobRun, JobStopped
from farm.worker.jobs import claim_job, finish_job, renew_lease

LEASE = 60


@pytest.fixture
def job_id(db: Database) -> int:
    with db.session() as session:
        version = ModelVersion(
            model=Model(name="m"),
            number=1,
            sha256="0" * 64,
            artifact_key="sha256/00/" + "0" * 64,
            size_bytes=1,
        )
        job = Job(kind=JobKind.INSPECT, model_version=version, profile="cpu", max_attempts=2)
        session.add(job)
        session.flush()
        return job.id


def claim(db: Database, job_id: int, worker: str):  # type: ignore[no-untyped-def]
    with db.session() as session:
        return claim_job(session, job_id, worker_name=worker, lease_seconds=LEASE, state=JobState.CHECKING)


def load(db: Database, job_id: int) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_claim_moves_a_queued_job(db: Database, job_id: int) -> None:
    taken = claim(db, job_id, "w1")
    assert taken is not None and taken.attempt == 1
    job = load(db, job_id)
    assert job.state == JobState.CHECKING
    assert job.worker_name == "w1"
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert job.started_at is not None and job.started_at.tzinfo is not None


def test_live_lease_of_another_worker_is_respected(db: Database, job_id: int) -> None:
    assert claim(db, job_id, "w1") is not None
    assert claim(db, job_id, "w2") is None
    assert load(db, job_id).worker_name == "w1"


def test_expired_lease_is_taken_over_and_the_old_worker_cannot_write(db: Database, job_id: int) -> None:
    first = claim(db, job_id, "w1")
    assert first is not None
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
    second = claim(db, job_id, "w2")
    assert second is not None and second.attempt == 2
    with db.session() as session:
        assert finish_job(session, first, worker_name="w1", state=JobState.SUCCEEDED) is None
    with db.session() as session:
        assert finish_job(session, second, worker_name="w2", state=JobState.SUCCEEDED) is not None
    job = load(db, job_id)
    assert job.state == JobState.SUCCEEDED and job.worker_name == "w2"


def test_final_job_is_never_run_again(db: Database, job_id: int) -> None:
    taken = claim(db, job_id, "w1")
    assert taken is not None
    with db.session() as session:
        finish_job(session, taken, worker_name="w1", state=JobState.SUCCEEDED)
    assert claim(db, job_id, "w1") is None
    assert claim(db, job_id, "w2") is None
    assert load(db, job_id).attempts == 1


def test_job_fails_after_its_attempts(db: Database, job_id: int) -> None:
    for _ in range(2):  # max_attempts=2; each time the worker "dies" (the lease expires)
        assert claim(db, job_id, "w1") is not None
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.lease_expires_at = utcnow() - timedelta(seconds=1)
    assert claim(db, job_id, "w1") is None
    job = load(db, job_id)
    assert job.state == JobState.FAILED
    assert "2 attempts" in (job.error or "")


def test_missing_job_is_dropped(db: Database) -> None:
    assert claim(db, 999_999, "w1") is None


def test_renewing_extends_the_lease_only_for_the_holder(db: Database, job_id: int) -> None:
    taken = claim(db, job_id, "w1")
    assert taken is not None
    before = load(db, job_id).lease_expires_at
    assert before is not None
    with db.session() as session:
        assert renew_lease(session, taken, worker_name="w1", lease_seconds=LEASE * 10)
    after = load(db, job_id).lease_expires_at
    assert after is not None and after > before
    with db.session() as session:
        assert not renew_lease(session, taken, worker_name="w2", lease_seconds=LEASE)


def test_a_retried_attempt_collects_the_dead_attempts_log_snapshot(
    db: Database, job_id: int, tmp_path: Path
) -> None:
    """The log snapshot a dead attempt left on the job is carried into the next attempt's log and
    then deleted with that attempt's own superseded snapshots, not left in the store unreferenced."""
    store = FileArtifactStore(tmp_path / "artifacts")
    first = claim(db, job_id, "w1")
    assert first is not None
    dead = JobRun(db, store, first, worker_name="w1", lease_seconds=LEASE)
    dead.log("first attempt: building")
    dead.upload_log(force=True)
    dead_key = load(db, job_id).log_artifact_key
    assert dead_key is not None and store.exists(dead_key)
    # the first worker dies here (no close(), no final log); its lease runs out
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
    second = claim(db, job_id, "w2")
    assert second is not None
    with JobRun(db, store, second, worker_name="w2", lease_seconds=LEASE) as run:
        for step in range(3):
            run.log(f"second attempt: step {step}")
            run.upload_log(force=True)
        key = load(db, job_id).log_artifact_key
        assert key is not None
        assert b"first attempt: building" in store.read_bytes(key)  # the earlier log is kept...
        assert not store.exists(dead_key)  # ...and its old snapshot is gone from the store


def cancel(db: Database, job_id: int) -> None:
    """What ``POST /jobs/<id>/cancel`` does to a running job."""
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.cancel()


def busy_without_checks(seconds: float) -> None:
    """Pure-Python work that never calls ``check()`` (like numba compiling a kernel)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(1000))


def test_a_cancelled_run_that_never_checks_is_interrupted(db: Database, job_id: int, tmp_path: Path) -> None:
    """A run busy where no check is reached stops within the lease interval plus the grace time."""
    claimed = claim(db, job_id, "w1")
    assert claimed is not None
    store = FileArtifactStore(tmp_path / "artifacts")
    with JobRun(db, store, claimed, worker_name="w1", lease_seconds=3, cancel_grace_seconds=0.5) as run:
        cancel(db, job_id)
        started = time.monotonic()
        with pytest.raises(JobInterrupted), run.interruptible():
            busy_without_checks(60)
        assert time.monotonic() - started < 20
        assert run.interrupted and run.stopped_reason == "the job was cancelled"
        busy_without_checks(2 * 0.5 + 1.5)  # outside the block nothing more is raised
    assert load(db, job_id).state == JobState.CANCELLED


def test_a_run_that_checks_stops_by_itself_and_is_not_interrupted(
    db: Database, job_id: int, tmp_path: Path
) -> None:
    claimed = claim(db, job_id, "w1")
    assert claimed is not None
    store = FileArtifactStore(tmp_path / "artifacts")
    with JobRun(db, store, claimed, worker_name="w1", lease_seconds=3, cancel_grace_seconds=30) as run:
        cancel(db, job_id)
        with pytest.raises(JobStopped), run.interruptible():
            for _ in range(600):
                busy_without_checks(0.05)
                run.check()
        assert not run.interrupted and run.stopped_reason == "the job was cancelled"
