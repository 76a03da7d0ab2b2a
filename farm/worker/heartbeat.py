"""Worker registration and heartbeats in the database, so the API knows which profiles are served."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from farm import __version__ as farm_version
from farm.db import Database, Worker, utcnow
from farm.profiles import HostInfo

log = logging.getLogger(__name__)


def record_heartbeat(
    db: Database,
    *,
    name: str,
    profiles: list[str],
    host: HostInfo,
    state: str = "online",
) -> None:
    """Create or update the worker row ``name`` with the current time, its profiles and host."""
    now = utcnow()
    with db.session() as session:
        worker = session.execute(select(Worker).where(Worker.name == name)).scalar_one_or_none()
        if worker is None:
            worker = Worker(name=name, hostname=host.hostname, started_at=now, version=farm_version)
            session.add(worker)
        if state == "online" and worker.state != "online":
            worker.started_at = now
        worker.hostname = host.hostname
        worker.profiles = list(profiles)
        worker.queues = [f"profile.{profile}" for profile in profiles]
        worker.fingerprint = host.fingerprint()
        worker.version = farm_version
        worker.state = state
        worker.heartbeat_at = now


class HeartbeatThread(threading.Thread):
    """Records a heartbeat every ``interval`` seconds until stopped, then marks the worker offline."""

    def __init__(
        self, db: Database, *, name: str, profiles: list[str], host: HostInfo, interval: float
    ) -> None:
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.db = db
        self.worker_name = name
        self.profiles = profiles
        self.host = host
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                record_heartbeat(self.db, name=self.worker_name, profiles=self.profiles, host=self.host)
            except Exception:  # a database hiccup must not kill the worker; the next beat retries
                log.exception("heartbeat of %s failed", self.worker_name)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop beating and record the worker as offline."""
        self._stop_event.set()
        self.join(timeout=self.interval + 5)
        try:
            record_heartbeat(
                self.db, name=self.worker_name, profiles=self.profiles, host=self.host, state="offline"
            )
        except Exception:
            log.exception("could not mark %s offline", self.worker_name)
