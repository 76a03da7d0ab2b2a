"""The farm's timing cache: the compiler's :class:`~farm.compiler.tuner.TimingCache` in the database.

Every worker of a profile reads and writes the same rows (table ``timing_cache``, unique on
``(profile, key)``), so a tactic timed once on one H200 host is never timed again on another. The
key already holds the device fingerprint and compiler version (see ``farm.compiler.tuner.cache``),
so hosts that differ in what matters never share an entry even inside one profile.

The entries of the profile are read once when the cache is opened (a build asks for thousands of
keys; one query beats thousands), new records are kept in memory and written by :meth:`flush`
with "insert, ignore conflicts": two workers timing the same tactic at once both keep the first
row, and neither fails.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from farm.compiler.tuner import TimingRecord
from farm.db import Database, TimingCacheEntry, utcnow

log = logging.getLogger(__name__)


class DatabaseTimingCache:
    """A timing cache shared through the database by every worker of ``profile``."""

    def __init__(self, db: Database, profile: str) -> None:
        self.db = db
        self.profile = profile
        self.records: dict[str, TimingRecord] = {}
        self._new: dict[str, TimingRecord] = {}
        self.hits = 0
        self.misses = 0
        with db.session() as session:
            rows = session.execute(
                select(TimingCacheEntry.key, TimingCacheEntry.value).where(
                    TimingCacheEntry.profile == profile
                )
            ).all()
        for key, value in rows:
            try:
                self.records[key] = TimingRecord.from_json(value)
            except TypeError:  # an entry written by another compiler version's record layout
                log.warning("ignoring unreadable timing-cache entry %s of profile %s", key, profile)

    def get(self, key: str) -> TimingRecord | None:
        """The record for ``key``, or ``None`` (a miss: the tuner times the tactic)."""
        record = self.records.get(key)
        if record is None:
            self.misses += 1
        else:
            self.hits += 1
        return record

    def put(self, key: str, record: TimingRecord) -> None:
        """Keep a new record; :meth:`flush` writes it."""
        self.records[key] = record
        self._new[key] = record

    def flush(self) -> None:
        """Write the new records; a key another worker wrote meanwhile keeps its first value."""
        if not self._new:
            return
        now = utcnow()
        rows = [
            {
                "profile": self.profile,
                "key": key,
                "value": record.to_json(),
                "created_at": now,
                "updated_at": now,
            }
            for key, record in self._new.items()
        ]
        insert = postgresql_insert if self.db.engine.dialect.name == "postgresql" else sqlite_insert
        statement = (
            insert(TimingCacheEntry).values(rows).on_conflict_do_nothing(index_elements=["profile", "key"])
        )
        with self.db.session() as session:
            session.execute(statement)
        self._new.clear()

    def __len__(self) -> int:
        return len(self.records)
