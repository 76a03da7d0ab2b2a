"""Upgrading a database that holds data keeps every row (SQLite batch rebuilds included)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from farm.db.migrate import upgrade

NOW = "2026-11-21 12:00:00"


def test_sqlite_upgrade_from_0002_keeps_jobs_of_rebuilt_tables(tmp_path: Path) -> None:
    """Migration 0003 rebuilds ``submissions`` on SQLite; with foreign keys enforced during the
    rebuild, dropping the old table used to cascade-delete every job of every submission."""
    path = tmp_path / "farm.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0002")
    con = sqlite3.connect(path)
    con.execute("INSERT INTO models (id, name, description, created_at) VALUES (1, 'mlp', '', ?)", (NOW,))
    con.execute(
        "INSERT INTO model_versions (id, model_id, number, sha256, artifact_key, size_bytes, filename, created_at)"
        " VALUES (1, 1, 1, ?, 'sha256/ab/x', 10, 'mlp.onnx', ?)",
        ("ab" * 32, NOW),
    )
    con.execute(
        "INSERT INTO submissions (id, model_version_id, options, created_at) VALUES (1, 1, '{}', ?)", (NOW,)
    )
    job_columns = {row[1] for row in con.execute("PRAGMA table_info(jobs)")}
    assert "submission_id" in job_columns
    con.execute(
        "INSERT INTO jobs (id, kind, model_version_id, submission_id, profile, state, attempts, max_attempts,"
        " created_at, updated_at) VALUES (7, 'build', 1, 1, 'cpu', 'succeeded', 1, 3, ?, ?)",
        (NOW, NOW),
    )
    con.commit()
    con.close()

    upgrade(url, "head")

    con = sqlite3.connect(path)
    assert con.execute("SELECT id, submission_id FROM jobs").fetchall() == [(7, 1)]
    assert con.execute("SELECT count(*) FROM submissions").fetchone() == (1,)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()
