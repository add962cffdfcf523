"""A received inbox item written directly (``inbox.received_item``) is the text the
general encoder gives for the same ``ReferralSummary``, for any values a row can hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.services.referrals.common import _ENCODE
from app.services.referrals.inbox import _summary, received_item
from app.services.referrals.store import _status_dict

text = st.text(max_size=40)  # any code point: quotes, backslashes, controls, non-ASCII
maybe = st.none() | text
times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]),
)
requests = st.dictionaries(text, st.integers() | text, max_size=3).map(
    lambda d: _ENCODE(d)
)


@settings(max_examples=300, deadline=None)
@given(
    rid=text, sender=text, created=text, version=st.integers(1, 2**31), me=text,
    status=text, reason=maybe, note=maybe, signed_at=maybe, signature=maybe,
    updated=times, withdrawn=st.none() | times, request=requests,
)
def test_received_item_is_the_encoders_text(
    rid: str, sender: str, created: str, version: int, me: str, status: str,
    reason: str | None, note: str | None, signed_at: str | None, signature: str | None,
    updated: datetime, withdrawn: datetime | None, request: str,
) -> None:
    row: Any = SimpleNamespace(
        id=rid, sender_agency=sender, created_at=created, version=version, status=status,
        reason=reason, note=note, signed_at=signed_at, status_signature=signature,
        updated_at=updated, withdrawn_at=withdrawn, request_json=request,
    )
    statuses = [_status_dict(me, status, reason, note, signed_at, signature, updated)]
    expected = _ENCODE(_summary(row, statuses))[:-1] + ',"request":' + request + "}"
    written = received_item(row, json.encoder.encode_basestring(me))
    assert written == expected
    assert json.loads(written)["statuses"][0]["recipient"] == me
