"""The one cursor codec (app/cursor.py): round trips, and 400 for anything made up."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app import errors
from app.cursor import (
    decode_leaf_time_id,
    decode_rank_time_id,
    decode_time_id,
    encode,
    encode_time_id,
)


def _raw(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_round_trips() -> None:
    ts = datetime(2026, 12, 7, 9, 30, 1, 250, tzinfo=UTC)
    assert decode_time_id(encode_time_id(ts, "a|b")) == (ts, "a|b")
    assert decode_rank_time_id(encode(2, ts, "svc")) == (2, ts, "svc")
    leaf = "2026-12-07T09:30:01.000250Z"
    assert decode_leaf_time_id(encode(leaf, 2**63 - 1)) == (leaf, 2**63 - 1)
    other = ts.astimezone(timezone(timedelta(hours=-5)))
    assert decode_time_id(_raw(f"{other.isoformat()}|x")) == (ts, "x")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        _raw("2026-12-07T09:30:00|id"),  # no time zone
        _raw("9999-12-31T23:59:59-05:00|id"),  # past the end of the range in UTC
        _raw("0001-01-01T00:00:00+05:00|id"),  # before its start
        _raw("2.85e-100|id"),
        _raw("2026-12-07T09:30:00Z"),  # no id
        _raw("2026-12-07T09:30:00Z|"),  # empty id
        base64.urlsafe_b64encode(b"\xff\xfe|x").decode(),
    ],
)
def test_made_up_time_cursors_are_400(cursor: str) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        decode_time_id(cursor)
    assert caught.value.type.endswith("/invalid-cursor")


@pytest.mark.parametrize("text", ["-1", "9223372036854775808", "1e3", "٣", " 1", "x"])
def test_made_up_positions_are_400(text: str) -> None:
    with pytest.raises(errors.BadRequest):
        decode_leaf_time_id(_raw(f"2026-12-07T09:30:01.000250Z|{text}"))


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-07T09:30:01Z",  # not the leaves' fixed width
        "2026-12-07T09:30:01.000250+00:00",
        "2026-12-07T09:30:01.000250",  # no zone
        "2026-12-07 09:30:01.000250Z",
        "2026-12-07T09:30:01.000250Z|7",  # a | in the time
        "' OR 1=1 --",
    ],
)
def test_made_up_audit_cursors_are_400(text: str) -> None:
    with pytest.raises(errors.BadRequest):
        decode_leaf_time_id(_raw(f"{text}|7"))
