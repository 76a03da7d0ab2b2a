"""Bearer tokens with scopes: ``read`` < ``submit`` < ``admin``.

A token is shown once when it is created (``farm token create NAME --scope submit``); the database
keeps only its sha256 and a short prefix to recognise it in listings. A request carries it as
``Authorization: Bearer <token>``. Reads need no token while ``FARM_PUBLIC_READ`` is on; every write
needs a token whose scope covers it, and a token that is unknown, revoked or expired is refused
(401) even on a public read, so a CI job with a stale secret notices at once.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import g, request
from sqlalchemy import select

from farm.api.errors import ApiError
from farm.db import ApiToken, Database, utcnow

SCOPES = ("read", "submit", "admin")
TOKEN_PREFIX = "farm_"
PREFIX_LENGTH = 12
# last_used_at is a hint for humans; writing it on every request would make reads write
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token (id, name, scopes), or the anonymous public reader."""

    token_id: int | None
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        """True when this caller may do what ``scope`` allows (a higher scope includes the lower ones)."""
        return scope_covers(self.scopes, scope)


ANONYMOUS = Principal(None, "anonymous", frozenset())


def scope_covers(granted: Iterable[str], wanted: str) -> bool:
    """True when one of the ``granted`` scopes is ``wanted`` or ranks above it."""
    rank = SCOPES.index(wanted)
    return any(scope in SCOPES and SCOPES.index(scope) >= rank for scope in granted)


def hash_token(token: str) -> str:
    """The sha256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_scopes(scopes: Sequence[str]) -> list[str]:
    """The scopes, checked and deduplicated in rank order; raises ValueError naming an unknown one."""
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"a token needs at least one scope of {', '.join(SCOPES)}")
    return [scope for scope in SCOPES if scope in scopes]


def issue_token(
    db: Database, name: str, scopes: Sequence[str] = ("submit",), *, expires_at: datetime | None = None
) -> str:
    """Create a token and return it; only its hash is stored, so this is the one time it is seen."""
    checked = normalize_scopes(scopes)
    if not name or len(name) > 128:
        raise ValueError("a token name must be 1-128 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as session:
        session.add(
            ApiToken(
                name=name,
                token_hash=hash_token(token),
                prefix=token[:PREFIX_LENGTH],
                scopes=checked,
                expires_at=expires_at,
            )
        )
    return token


def revoke_token(db: Database, ident: int | str) -> ApiToken | None:
    """Revoke a token by id or by name (every live token of that name); the last one revoked, or None."""
    with db.session() as session:
        query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
        if isinstance(ident, int) or str(ident).isdigit():
            query = query.where(ApiToken.id == int(ident))
        else:
            query = query.where(ApiToken.name == ident)
        found = None
        for token in session.execute(query).scalars():
            token.revoked_at = utcnow()
            found = token
        return found


def authenticate(db: Database, header: str | None) -> Principal | None:
    """The caller named by an ``Authorization`` header; ``None`` without one; ApiError(401) for a bad one."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(401, "the Authorization header must be 'Bearer <token>'")
    token_hash = hash_token(credentials.strip())
    now = utcnow()
    with db.session() as session:
        token = session.execute(
            select(ApiToken).where(ApiToken.token_hash == token_hash)
        ).scalar_one_or_none()
        if token is None:
            raise ApiError(401, "invalid token: no such token (check FARM_TOKEN / --token)")
        if token.revoked_at is not None:
            raise ApiError(401, f"token {token.name!r} ({token.prefix}…) was revoked")
        if token.expires_at is not None and token.expires_at <= now:
            raise ApiError(401, f"token {token.name!r} ({token.prefix}…) expired")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            token.last_used_at = now
        return Principal(token.id, token.name, frozenset(token.scopes))


def authorize(db: Database, scope: str, *, public_read: bool) -> Principal:
    """Check the current request's token against ``scope``; the caller, or ApiError 401/403."""
    principal = authenticate(db, request.headers.get("Authorization"))
    if principal is None:
        if scope == "read" and public_read:
            principal = ANONYMOUS
        else:
            raise ApiError(401, f"this endpoint needs a bearer token with scope {scope!r}", scope=scope)
    elif not principal.has(scope):
        raise ApiError(
            403,
            f"token {principal.name!r} lacks scope {scope!r} (it has: {', '.join(sorted(principal.scopes)) or 'none'})",
            scope=scope,
        )
    g.principal = principal
    return principal


def current_principal() -> Principal:
    """The caller of the current request (set by :func:`authorize`)."""
    principal: Principal = g.get("principal", ANONYMOUS)
    return principal
