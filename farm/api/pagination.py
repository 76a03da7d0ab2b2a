"""Cursor pagination over rows ordered by id, newest first.

A cursor is opaque to clients (base64 of the last id seen); unlike an offset it does not skip or
repeat rows when new ones arrive between two pages.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from farm.api.errors import ApiError
from farm.api.openapi import MAX_ID


def encode_cursor(last_id: int) -> str:
    """The cursor that continues after the row ``last_id``."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues after; ApiError(400) for anything that is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        prefix, _, number = text.partition(":")
        value = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(
            400, "invalid cursor: pass the next_cursor of the previous page", field="cursor"
        ) from None
    if prefix != "id" or not 1 <= value <= MAX_ID + 1:
        raise ApiError(400, "invalid cursor: pass the next_cursor of the previous page", field="cursor")
    return value


def paginate(
    session: Session,
    query: Select[Any],
    id_column: InstrumentedAttribute[int],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of ``query`` (newest first) and the cursor of the next page (``None`` on the last)."""
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    rows = list(session.execute(query.order_by(id_column.desc()).limit(limit + 1)).scalars())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor
