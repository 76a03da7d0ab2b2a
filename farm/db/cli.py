"""``farm db``: database migrations."""

from __future__ import annotations

import click

from farm.config import SettingsError, get_settings
from farm.db import migrate


def _url() -> str:
    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    settings.ensure_local_paths()
    return settings.sqlalchemy_url


@click.group()
def db() -> None:
    """Database migrations (the database is FARM_DATABASE_URL)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def upgrade_cmd(revision: str) -> None:
    """Migrate the database up to REVISION (default: the latest)."""
    migrate.upgrade(_url(), revision)
    click.echo(f"database migrated to {revision}")


@db.command("downgrade")
@click.argument("revision")
def downgrade_cmd(revision: str) -> None:
    """Migrate the database down to REVISION (e.g. -1, or base)."""
    migrate.downgrade(_url(), revision)
    click.echo(f"database migrated down to {revision}")


@db.command("current")
def current_cmd() -> None:
    """Show the database's current revision."""
    migrate.current(_url())
