"""Column types that behave the same on PostgreSQL and SQLite."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema
from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases.

    SQLite has no time zones, so values are stored as naive UTC there and made
    aware again on the way out; PostgreSQL stores ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


LEAF_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
"""How an audit event's ``ts`` (and so its Merkle leaf and ``ts_leaf``) spells a UTC
time: fixed width, so that text order is time order."""


def leaf_time_text(ts: datetime) -> str:
    """``ts.strftime(LEAF_TIME)``: the leaf's spelling of a UTC time."""
    if ts.year < 1000:  # strftime's %Y does not pad these; isoformat would
        return ts.strftime(LEAF_TIME)
    # the same characters, several times faster: YYYY-MM-DDTHH:MM:SS.ffffff (26
    # characters; any UTC offset after them cut)
    return ts.isoformat(timespec="microseconds")[:26] + "Z"


def utcnow() -> datetime:
    return datetime.now(UTC)


_QUERY_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _query_time(value: Any) -> datetime:
    """An RFC 3339 date-time with its offset, as UTC; a number is not a date."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _QUERY_TIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not a valid date-time") from None
    else:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-12-01T00:00:00Z")
    if parsed.tzinfo is None:
        raise ValueError("must carry a time zone offset, e.g. 2026-12-01T00:00:00Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the range of dates this service stores") from None


QueryTime = Annotated[
    datetime,
    BeforeValidator(_query_time),
    WithJsonSchema({"type": "string", "format": "date-time",
                    "description": "RFC 3339 date-time with an offset (Z or +hh:mm)"}),
]
"""A time in a query string: RFC 3339 with an offset, normalised to UTC."""
