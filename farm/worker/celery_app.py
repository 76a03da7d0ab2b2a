"""The Celery app, created from the same settings as the Flask app, running tasks in its context.

Reliability settings follow DESIGN §4: a message is acknowledged only after its task finished
(``task_acks_late``), a task whose worker process died is redelivered
(``task_reject_on_worker_lost``), a worker reserves one message at a time
(``worker_prefetch_multiplier=1``), and the time limits stay below the broker's visibility timeout
so a slow job is never delivered twice while it still runs. Job state lives in the database, so
Celery keeps no results. Task events are on, so Flower can watch the workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from farm.config import Settings

if TYPE_CHECKING:
    from flask import Flask

# task names: the API sends tasks by name, so it never imports worker code
INSPECT_TASK = "farm.inspect_model"
BUILD_TASK = "farm.build_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    transport_options: dict[str, Any] = {}
    broker = settings.celery_broker_url
    if broker.startswith(("redis://", "rediss://")):
        transport_options["visibility_timeout"] = settings.broker_visibility_timeout
        if settings.broker_key_prefix:
            transport_options["global_keyprefix"] = settings.broker_key_prefix
    elif broker.startswith("sqla+sqlite"):
        # kombu hands these to create_engine(): wait for SQLite's lock instead of failing after 5 s
        transport_options["connect_args"] = {"timeout": 30}
    return {
        "broker_url": broker,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_default_queue": "profile.cpu",
        "task_create_missing_queues": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        # the SQL transports cannot broadcast; job control goes through the database anyway
        "worker_enable_remote_control": not broker.startswith("sqla+"),
        # task events (received/started/succeeded/failed) so Flower and `celery events` can watch;
        # events travel on a fanout exchange, which the SQL transports lack
        "worker_send_task_events": not broker.startswith("sqla+"),
        "task_send_sent_event": not broker.startswith("sqla+"),
        "task_track_started": True,
    }


def create_celery(settings: Settings, flask_app: Flask | None = None) -> Celery:
    """A Celery app for ``settings``; with ``flask_app``, every task runs inside its app context."""

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if flask_app is None:
                return self.run(*args, **kwargs)
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    if settings.celery_broker_url.startswith("sqla+"):
        _set_sql_polling_interval(settings.broker_polling_interval)
    app = Celery("farm", task_cls=FlaskTask, set_as_current=True)
    app.config_from_object(celery_config(settings))
    app.set_default()
    # worker-level signal handlers (the reconciler) reach the farm's services through this
    app.flask_app = flask_app
    return app


def _set_sql_polling_interval(seconds: float) -> None:
    # kombu's SQL transport hands every broker_transport_options entry to create_engine(), which
    # rejects "polling_interval"; the transport class attribute is the other place kombu reads it.
    # The default (1 s) makes each embedded job wait about a second before it starts.
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    kombu_sqlalchemy.Transport.polling_interval = seconds
