"""``farm token create|list|revoke``: manage API tokens directly in the farm's database.

Run it where the farm's settings are (``FARM_DATABASE_URL``); the token is printed once and only
its sha256 is stored.
"""

from __future__ import annotations

from datetime import timedelta

import click
from sqlalchemy import select

from farm.api.auth import SCOPES, issue_token, revoke_token
from farm.config import SettingsError, get_settings
from farm.db import ApiToken, Database, utcnow


def _database() -> Database:
    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    settings.ensure_local_paths()
    return Database(settings.sqlalchemy_url)


@click.group()
def token() -> None:
    """Create, list and revoke API tokens."""


@token.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=("submit",),
    show_default=True,
    help=f"Scope(s): {', '.join(SCOPES)} (repeat or comma-separate; admin includes submit includes read).",
)
@click.option(
    "--expires-in-days", type=click.IntRange(1, 3650), default=None, help="Expire after this many days."
)
def create_cmd(name: str, scopes: tuple[str, ...], expires_in_days: int | None) -> None:
    """Create a token NAME and print it (it is shown only this once)."""
    wanted = [part.strip() for item in scopes for part in item.split(",") if part.strip()]
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    try:
        value = issue_token(_database(), name, wanted, expires_at=expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope/NAME") from None
    click.echo(value)
    click.echo(
        f"token {name!r} with scope {', '.join(wanted)} created; store it now, it is not shown again",
        err=True,
    )


@token.command("list")
def list_cmd() -> None:
    """List tokens: id, name, prefix, scopes, last use, state."""
    with _database().session() as session:
        rows = session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all()
        if not rows:
            click.echo("no tokens")
            return
        for row in rows:
            state = (
                "revoked"
                if row.revoked_at
                else ("expired" if row.expires_at and row.expires_at <= utcnow() else "active")
            )
            used = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
            click.echo(
                f"{row.id:>4}  {row.name:<24} {row.prefix}…  {','.join(row.scopes):<18} used {used:<25} {state}"
            )


@token.command("revoke")
@click.argument("ident")
def revoke_cmd(ident: str) -> None:
    """Revoke the token with id IDENT, or every active token named IDENT."""
    revoked = revoke_token(_database(), ident)
    if revoked is None:
        raise click.ClickException(f"no active token with id or name {ident!r}")
    click.echo(f"revoked token {revoked.name!r} ({revoked.prefix}…)")
