"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from farm.db import Base, Database
from farm.db.migrate import downgrade, upgrade


def schema_differences(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_migrations_match_the_models(db: Database) -> None:
    assert schema_differences(db) == []
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_downgrade_to_base_and_back(db: Database, database_url: str) -> None:
    downgrade(database_url, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(database_url)
    assert schema_differences(db) == []
