"""The sent and received boxes (``GET /v1/referrals``): one statement per page (two for
the sent box), items built directly as JSON text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Integer, and_, bindparam, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlmodel import col

from app import authz
from app.cursor import decode_time_id as _decode_cursor
from app.cursor import encode_time_id as _encode_cursor
from app.db import prepared
from app.identity import Principal
from app.models.schemas import rfc3339
from app.models.tables import Referral, ReferralRecipient
from app.models.types import UTCDateTime, utcnow
from app.services import audit
from app.services.audit import Action
from app.services.referrals.common import _ENCODE
from app.services.referrals.store import _status_dicts


@cache
def _page_query(
    box: str, law_enforcement: bool, urgency: bool, since: bool, status: bool, cursor: bool
) -> Select[*tuple[Any, ...]]:
    """An inbox page statement for one combination of filters, built once.

    Parameters: those of ``authz.visible_referrals``, ``:page_rows`` (the LIMIT) and
    ``:urgency``, ``:since``, ``:status_filter``, ``:after_ts`` and ``:after_id`` for the
    filters present.
    """
    stmt = authz.visible_referrals(box, law_enforcement)
    received_at = stmt.selected_columns.received_at
    # The received box is driven from the caller's referral_recipient rows: key on them.
    key = col(Referral.id) if box == "sent" else col(ReferralRecipient.referral_id)

    def where_recipient(*conditions: Any) -> Any:
        if box == "received":
            return and_(*conditions)
        return (
            select(col(ReferralRecipient.referral_id))
            .where(col(ReferralRecipient.referral_id) == col(Referral.id), *conditions)
            .exists()
        )

    if urgency:
        stmt = stmt.where(where_recipient(col(ReferralRecipient.urgency) == bindparam("urgency")))
    if since:
        stmt = stmt.where(received_at >= bindparam("since", type_=UTCDateTime()))
    if status:
        stmt = stmt.where(
            where_recipient(col(ReferralRecipient.status) == bindparam("status_filter"))
        )
    if cursor:
        after = tuple_(bindparam("after_ts", type_=UTCDateTime()), bindparam("after_id"))
        stmt = stmt.where(tuple_(received_at, key) < after)
    # the page size is a parameter too (``:page_rows``), so no statement is built per request
    return stmt.order_by(received_at.desc(), key.desc()).limit(
        bindparam("page_rows", type_=Integer())
    )


def _summary(r: Any, statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """The members of a list item both boxes share (``ReferralSummary`` less ``request``)."""
    return {
        "referral_id": r.id,
        "sender_agency": r.sender_agency,
        "created_at": r.created_at,
        "version": r.version,
        "statuses": statuses,
        "withdrawn": r.withdrawn_at is not None,
    }


async def _items(db: AsyncSession, who: Principal, box: str, rows: Sequence[Any]) -> list[str]:
    """A page's rows as ``ReferralSummary`` JSON text: a sent item with every recipient's
    status (one more statement), a received one with the caller's own status and request."""
    if box == "sent":
        statuses = await _status_dicts(db, [r.id for r in rows])
        return [_ENCODE({**_summary(r, statuses[r.id]), "request": None}) for r in rows]
    me = _string(who.agency_id)
    return [received_item(r, me) for r in rows]


_string = json.encoder.encode_basestring  # a JSON string as _ENCODE writes it (ensure_ascii off)


def _nullable(value: str | None) -> str:
    return "null" if value is None else _string(value)


def received_item(r: Any, me: str) -> str:
    """A received item's ``ReferralSummary`` JSON with the caller's own status (``me``
    is the caller's agency id as a JSON string): the text
    ``_ENCODE({**_summary(r, [_status_dict(...)]), "request": <request>})`` gives, written
    directly (``tests/test_inbox_items.py`` holds the two equal), about a third of an
    inbox page's CPU before. The stored request is canonical JSON we wrote: spliced in,
    not re-encoded."""
    text: str = (  # r is a row (Any): the annotation keeps the result a str
        '{"referral_id":' + _string(r.id)
        + ',"sender_agency":' + _string(r.sender_agency)
        + ',"created_at":' + _string(r.created_at)
        + ',"version":' + str(int(r.version))
        + ',"statuses":[{"recipient":' + me
        + ',"status":' + _string(r.status)
        + ',"reason":' + _nullable(r.reason)
        + ',"note":' + _nullable(r.note)
        + ',"signed_at":' + _nullable(r.signed_at)
        + ',"signature":' + _nullable(r.status_signature)
        + ',"updated_at":"' + rfc3339(r.updated_at)
        + '"}],"withdrawn":' + ("false" if r.withdrawn_at is None else "true")
        + ',"request":' + r.request_json + "}"
    )
    return text


async def list_page(
    db: AsyncSession,
    who: Principal,
    *,
    box: str,
    status: str | None,
    urgency: str | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[str], str | None]:
    """One page of the caller's sent or received box, newest first.

    Items are ``ReferralSummary`` objects as JSON text, built directly from the
    rows (a page is up to 200 of them). A recipient's item carries its own
    request (decoded when it was stored) and its own status only.
    """
    values = authz.params(who, utcnow())
    values["page_rows"] = limit + 1
    if cursor:
        values["after_ts"], values["after_id"] = _decode_cursor(cursor)
    if urgency:
        values["urgency"] = urgency
    if since:
        values["since"] = since
    if status:
        values["status_filter"] = status
    stmt = _page_query(
        box, who.law_enforcement, bool(urgency), bool(since), bool(status), bool(cursor)
    )
    rows = await prepared(stmt).all(db, values)
    more = len(rows) > limit
    rows = rows[:limit]
    items = await _items(db, who, box, rows)
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_LIST,
        "referral",
        None,
        detail={"box": box, "count": len(items)},
    )
    next_cursor = _encode_cursor(rows[-1].received_at, rows[-1].id) if more else None
    return items, next_cursor


