"""Celery tasks: thin wrappers that hand a job id to its command object.

Tasks are sent by name (see :mod:`farm.worker.celery_app`), to the queue ``profile.<name>`` of the
job's profile. Each task runs inside the Flask app context, where the farm's services live.

Only transient errors (the database, broker or artifact store briefly unreachable) are retried,
with exponential backoff; everything else fails the job with its reason. How often one job may be
delivered at all is capped by ``FARM_MAX_ATTEMPTS`` in the database (see ``farm.worker.jobs``).

A worker's main process also runs the reconciler (``farm.worker.reconcile``), started when the
worker is ready and stopped when it shuts down.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready, worker_shutdown

from farm.app import current_services
from farm.worker.celery_app import BUILD_TASK, INSPECT_TASK
from farm.worker.jobs import ClaimedJobCommand, InspectJobCommand
from farm.worker.pipeline import BuildJobCommand, transient_errors
from farm.worker.reconcile import ReconcilerThread, start_reconciler

log = logging.getLogger(__name__)

MAX_RETRIES = 5
MAX_BACKOFF_SECONDS = 120


def _backoff(retries: int) -> int:
    return int(min(2 ** (retries + 1), MAX_BACKOFF_SECONDS))


def _run_job(task: Task, command_class: type[ClaimedJobCommand], job_id: int) -> str | None:
    services = current_services()
    command = command_class(
        job_id,
        db=services.db,
        store=services.store,
        worker_name=task.request.hostname or "worker",
        lease_seconds=services.settings.lease_seconds,
    )
    try:
        state = command.run()
    except transient_errors() as exc:
        log.warning("job %s: transient failure (%s); retrying", job_id, exc)
        raise task.retry(exc=exc, countdown=_backoff(task.request.retries)) from exc
    return state.value if state else None


@shared_task(name=INSPECT_TASK, bind=True, max_retries=MAX_RETRIES)
def inspect_model(self: Task, job_id: int) -> str | None:
    """Compute the facts of the model version of ``job_id`` (an ``inspect`` job)."""
    return _run_job(self, InspectJobCommand, job_id)


@shared_task(name=BUILD_TASK, bind=True, max_retries=MAX_RETRIES)
def build_job(self: Task, job_id: int) -> str | None:
    """Build, benchmark, check and judge one (model version, profile, precision, batch) job."""
    return _run_job(self, BuildJobCommand, job_id)


_reconciler: ReconcilerThread | None = None


@worker_ready.connect(weak=False)
def _start_reconciler(sender: Any = None, **_: Any) -> None:
    global _reconciler
    flask_app = getattr(getattr(sender, "app", None), "flask_app", None)
    if flask_app is None or _reconciler is not None:
        return
    with flask_app.app_context():
        _reconciler = start_reconciler(current_services())


@worker_shutdown.connect(weak=False)
def _stop_reconciler(**_: Any) -> None:
    global _reconciler
    if _reconciler is not None:
        _reconciler.stop()
        _reconciler = None
