"""Alembic environment: migrates the database named by the farm's settings (or by the caller)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from farm.config import get_settings
from farm.db.models import Base, UTCDateTime
from farm.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return url or get_settings().sqlalchemy_url


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # migrations must not import the models (they change); UTCDateTime is a timestamptz column
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    is_sqlite = (url or str(connection.engine.url if connection else "")).startswith("sqlite")
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        render_as_batch=is_sqlite,  # SQLite cannot ALTER most things; batch mode rebuilds the table
        literal_binds=url is not None,
    )


@contextmanager
def _foreign_keys_deferred(connection: Connection) -> Iterator[None]:
    """On SQLite, switch foreign-key enforcement off while migrating, then check and restore it.

    Batch mode rebuilds a table by copying it and dropping the original; with enforcement on,
    that DROP cascade-deletes (or nulls) every row that references the table, e.g. all jobs of a
    rebuilt ``submissions``. SQLite ignores the pragma inside a transaction, so it is set while
    none is open, and ``foreign_key_check`` afterwards proves the migrated data is consistent.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    if connection.in_transaction():
        connection.commit()
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.commit()
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()
    if broken:
        raise RuntimeError(f"migration left rows that break foreign keys: {broken[:5]}")


def run_migrations_offline() -> None:
    """Emit the SQL without a database connection (``alembic upgrade head --sql``)."""
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a live connection (the caller's, when it passes one)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with _foreign_keys_deferred(connection), context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            with _foreign_keys_deferred(connection), context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
