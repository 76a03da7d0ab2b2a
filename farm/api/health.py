"""Health of the farm's parts: database, broker, artifact store, and the workers seen recently."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from farm.api.schemas import worker_to_dict
from farm.app import FarmServices
from farm.db import Worker, utcnow

# a worker is alive while its last heartbeat is younger than this many heartbeat intervals
MISSED_HEARTBEATS_BEFORE_LOST = 3


def check_health(services: FarmServices) -> dict[str, Any]:
    """Probe every part; ``ok`` is true when the database, broker and artifact store all answer."""
    checks: dict[str, Any] = {}
    checks["database"] = _probe(lambda: _ping_database(services))
    checks["broker"] = _probe(lambda: _ping_broker(services))
    checks["artifact_store"] = _probe(services.store.check)
    workers: list[dict[str, Any]] = []
    if checks["database"]["ok"]:
        workers = seen_workers(services)
    ok = all(check["ok"] for check in checks.values())
    alive_profiles = sorted({p for worker in workers if worker["alive"] for p in worker["profiles"]})
    return {
        "ok": ok,
        "status": "ok" if ok else "degraded",
        **checks,
        "workers": workers,
        "profiles_served": alive_profiles,
    }


def seen_workers(services: FarmServices) -> list[dict[str, Any]]:
    """Every worker that ever heartbeat, newest first, with whether it is alive now."""
    horizon = utcnow() - timedelta(
        seconds=services.settings.heartbeat_seconds * MISSED_HEARTBEATS_BEFORE_LOST
    )
    with services.db.session() as session:
        rows = session.execute(select(Worker).order_by(Worker.heartbeat_at.desc())).scalars().all()
        return [
            worker_to_dict(worker, alive=worker.state == "online" and worker.heartbeat_at >= horizon)
            for worker in rows
        ]


def _probe(check: Any) -> dict[str, Any]:
    try:
        detail = check()
    except Exception as exc:  # each part reports its own failure; one down part must not hide the others
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "detail": detail}


def _ping_database(services: FarmServices) -> str:
    services.db.ping()
    return _redact(services.settings.database_url)


def _ping_broker(services: FarmServices) -> str:
    with services.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
        return f"{connection.transport_cls} {_redact(services.settings.broker_url)}"


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
