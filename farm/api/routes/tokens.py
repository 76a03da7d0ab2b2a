"""API tokens (admin scope): list, create (shown once), revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from farm.api.auth import hash_token, issue_token
from farm.api.errors import ApiError
from farm.api.registry import api
from farm.api.schemas import TokenCreatedOut, TokenIn, TokenList, TokenOut, iso
from farm.app import current_services
from farm.db import ApiToken, utcnow


def token_to_dict(token: ApiToken) -> dict[str, Any]:
    """A token's record (never the token)."""
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "scopes": list(token.scopes),
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


@api.operation("GET", "/tokens", summary="List tokens", tag="tokens", response=TokenList, scope="admin")
def list_tokens() -> Any:
    """Every token, newest first (names, prefixes and scopes; never the tokens)."""
    with current_services().db.session() as session:
        tokens = session.execute(select(ApiToken).order_by(ApiToken.id.desc())).scalars()
        return {"items": [token_to_dict(token) for token in tokens]}


@api.operation("POST", "/tokens", summary="Create a token", tag="tokens", body=TokenIn,
               response=TokenCreatedOut, status=201, scope="admin")  # fmt: skip
def create_token(body: TokenIn) -> Any:
    """A new token with the given scopes; the response holds the token, which is not shown again."""
    db = current_services().db
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    token = issue_token(db, body.name, list(body.scopes), expires_at=expires)
    with db.session() as session:
        row = session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).scalar_one()
        return token_to_dict(row) | {"token": token}, 201


@api.operation("DELETE", "/tokens/<int:token_id>", summary="Revoke a token", tag="tokens", response=TokenOut,
               scope="admin")  # fmt: skip
def revoke_token_route(token_id: int) -> Any:
    """Revoke a token: every later request with it is a 401. Revoking twice keeps the first time."""
    with current_services().db.session() as session:
        token = session.get(ApiToken, token_id)
        if token is None:
            raise ApiError(404, f"no token {token_id}")
        if token.revoked_at is None:
            token.revoked_at = utcnow()
        session.flush()
        return token_to_dict(token)
