"""The one cursor codec of the list endpoints (keyset paging).

A cursor is opaque to clients: base64url (no padding) of its parts joined by
``|``, each part an integer, an RFC 3339 UTC time or a string (the last part
may contain ``|``: it is an id). Decoding checks the shape and answers 400
``invalid-cursor`` for anything else, a zone-less or out-of-range time
included, so no cursor a client makes up reaches the database.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from app import errors
from app.crypto.encoding import EncodingError, b64url_decode
from app.models.schemas import rfc3339
from app.models.types import leaf_time_text

Part = int | datetime | str

_MAX_INT = 2**63


def invalid_cursor() -> errors.BadRequest:
    return errors.BadRequest(
        "cursor is not valid: pass the next_cursor of the previous page unchanged",
        slug="invalid-cursor",
    )


def encode(*parts: Part) -> str:
    raw = "|".join(rfc3339(p) if isinstance(p, datetime) else str(p) for p in parts)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) >= _MAX_INT:
        raise ValueError("not an integer of the range")
    return int(text)


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment.astimezone(UTC)  # OverflowError at the ends of the range


def _parts(cursor: str, count: int) -> list[str]:
    texts = b64url_decode(cursor).decode().split("|", count - 1)
    if len(texts) != count or not all(texts):
        raise ValueError("not a cursor of this list")
    return texts


_BAD = (EncodingError, ValueError, UnicodeDecodeError, OverflowError)


def decode_leaf_time_id(cursor: str) -> tuple[str, int]:
    """(time as the audit log's leaves spell it, event id) of a cursor of the audit
    event list, ordered by leaf time, then id. The time must be in exactly that
    spelling (fixed width, microseconds, ``Z``), the one text order compares."""
    try:
        text, value = _parts(cursor, 2)
        if leaf_time_text(_time(text)) != text:
            raise ValueError("not a leaf time")
        return text, _int(value)
    except _BAD:
        raise invalid_cursor() from None


def decode_time_id(cursor: str) -> tuple[datetime, str]:
    """(time, id) of a cursor of a list ordered by time, then id."""
    try:
        ts, item_id = _parts(cursor, 2)
        return _time(ts), item_id
    except _BAD:
        raise invalid_cursor() from None


def decode_rank_time_id(cursor: str) -> tuple[int, datetime, str]:
    """(rank, time, id) of a cursor of a list ordered by a rank, a time, then an id."""
    try:
        rank, ts, item_id = _parts(cursor, 3)
        return _int(rank), _time(ts), item_id
    except _BAD:
        raise invalid_cursor() from None


def encode_time_id(ts: datetime, item_id: str) -> str:
    return encode(ts, item_id)
