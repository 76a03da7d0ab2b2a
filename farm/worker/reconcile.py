"""The reconciler: jobs the broker lost, and jobs whose worker died, are sent again.

The database is the source of truth; the broker only carries "please run job N" messages. Two
things can leave a job without a message that will run it:

- the broker lost the message (a Redis restarted without persistence, a flushed queue): the job
  is still ``queued`` but nothing in its queue will ever deliver it;
- the worker running it died with its whole process tree (SIGKILL, a lost host): the job stays
  ``building``/``benchmarking``/``checking`` with a lease nobody renews, and Redis would redeliver
  the unacknowledged message only after its visibility timeout (hours).

Every worker runs :func:`reconcile_jobs` every ``FARM_RECONCILE_SECONDS``. A queued job whose
profile queue is empty and whose last message is older than ``FARM_REQUEUE_AFTER_SECONDS``, and a
running job whose lease expired, is sent again. The re-send is claimed with one conditional
``UPDATE`` of ``jobs.enqueued_at``, so when several workers reconcile at once only one sends; a
duplicate message would be harmless anyway (a delivery first claims the job in the database).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import and_, or_, select, update

from farm.db import Database, Job, JobKind, JobState, queue_for_profile, utcnow
from farm.db.models import RUNNING_JOB_STATES

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import CursorResult

log = logging.getLogger(__name__)


def task_for_job_kind(kind: JobKind) -> str:
    """The Celery task name that runs jobs of ``kind``."""
    from farm.worker.celery_app import BUILD_TASK, INSPECT_TASK

    return {JobKind.INSPECT: INSPECT_TASK, JobKind.BUILD: BUILD_TASK}[kind]


def queue_depths(celery: Celery, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue (a queue the broker does not know holds 0)."""
    from kombu.exceptions import ChannelError

    depths: dict[str, int] = {}
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        for queue in queues:
            channel = connection.channel()
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:
                depths[queue] = 0
            finally:
                channel.close()
    return depths


def send_job(celery: Celery, job_id: int, kind: JobKind, profile: str) -> None:
    """Send the message that runs ``job_id`` to its profile's queue."""
    celery.send_task(task_for_job_kind(kind), args=[job_id], queue=queue_for_profile(profile))


def reconcile_jobs(db: Database, celery: Celery, *, requeue_after_seconds: float) -> list[int]:
    """Re-send lost and abandoned jobs (see the module docstring); return the ids sent."""
    now = utcnow()
    cutoff = now - timedelta(seconds=requeue_after_seconds)
    not_sent_since_cutoff = or_(
        Job.enqueued_at < cutoff, and_(Job.enqueued_at.is_(None), Job.created_at < cutoff)
    )
    with db.session() as session:
        abandoned = session.execute(
            select(Job.id, Job.kind, Job.profile, Job.state).where(
                Job.state.in_(RUNNING_JOB_STATES), Job.lease_expires_at < now, not_sent_since_cutoff
            )
        ).all()
        waiting = session.execute(
            select(Job.id, Job.kind, Job.profile, Job.state).where(
                Job.state == JobState.QUEUED, not_sent_since_cutoff
            )
        ).all()
    if waiting:
        depths = queue_depths(celery, sorted({queue_for_profile(row.profile) for row in waiting}))
        waiting = [row for row in waiting if depths.get(queue_for_profile(row.profile), 0) == 0]
    sent: list[int] = []
    for row in [*abandoned, *waiting]:
        with db.session() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == row.id, Job.state == row.state, not_sent_since_cutoff)
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
            claimed = cast("CursorResult[Any]", result).rowcount
        if not claimed:
            continue  # another reconciler sent it, or the job moved on
        why = "its lease expired" if row.state != JobState.QUEUED else "its queue lost the message"
        log.warning("reconciler: re-sending job %s (%s, %s)", row.id, row.state.value, why)
        send_job(celery, row.id, row.kind, row.profile)
        sent.append(row.id)
    return sent


class ReconcilerThread(threading.Thread):
    """Runs :func:`reconcile_jobs` every ``interval`` seconds until stopped."""

    def __init__(
        self, db: Database, celery: Celery, *, interval: float, requeue_after_seconds: float
    ) -> None:
        super().__init__(name="farm-reconciler", daemon=True)
        self.db = db
        self.celery = celery
        self.interval = interval
        self.requeue_after_seconds = requeue_after_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                reconcile_jobs(self.db, self.celery, requeue_after_seconds=self.requeue_after_seconds)
            except Exception:  # broker or database down: the next pass retries
                log.exception("reconciler pass failed")

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop_event.set()
        self.join(timeout=self.interval + 10)


def start_reconciler(services: Any) -> ReconcilerThread:
    """Start the reconciler of a worker process from the farm's services."""
    thread = ReconcilerThread(
        services.db,
        services.celery,
        interval=services.settings.reconcile_seconds,
        requeue_after_seconds=services.settings.requeue_after_seconds,
    )
    thread.start()
    return thread
