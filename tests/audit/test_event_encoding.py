"""The audit event's fast paths hold to the code they replace: the leaf text to
``canonical_json``, ``rfc3339`` to ``strftime``, the ids to ``uuid.uuid4``, the
scrub's short cut to the regular expression; and the access log line's record
to what ``Logger.log`` would have made.
"""

from __future__ import annotations

import enum
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import middleware
from app.crypto.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_json,
    canonical_text,
)
from app.logging import JsonFormatter
from app.models.types import LEAF_TIME, leaf_time_text
from app.services import audit

PROPERTY = settings(max_examples=300, deadline=None, database=None)


class _Old(str, enum.Enum):  # noqa: UP042  # str() is "_Old.A"; the encoder writes "a"
    A = "a"


class _Code(enum.StrEnum):
    B = "b"


_KEYS = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["", "\ue000", "\uffff", "\U0001f600", "\ud800", "a\udfff", "\u20ac"]),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.sampled_from(["\ud800", "x\udfffy", "\U0001f600", _Old.A, _Code.B, "A" * 60]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_KEYS, inner, max_size=4),
    ),
    max_leaves=20,
)


def _canonical(value: Any) -> str | type[Exception]:
    try:
        return canonical_json(value).decode("utf-8")
    except CanonicalizationError:
        return CanonicalizationError


def _leaf(value: Any) -> str | type[Exception]:
    try:
        return canonical_text(value)
    except CanonicalizationError:
        return CanonicalizationError


@PROPERTY
@given(_VALUES)
def test_leaf_text_is_canonical_json(value: Any) -> None:
    event = {"event_id": "e", "detail": value}
    assert _leaf(event) == _canonical(event)
    assert _leaf(value) == _canonical(value)


def test_leaf_text_refuses_what_canonical_json_refuses() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    for bad in (deep, {"a": 2**53}, {"a": float("nan")}, {1: "a"}, {"a": b"x"}, {"\ud800": 1}):
        assert _leaf(bad) is CanonicalizationError
        assert _canonical(bad) is CanonicalizationError
    at_limit: Any = "x"
    for _ in range(MAX_DEPTH):
        at_limit = [at_limit]
    assert _leaf(at_limit) == _canonical(at_limit) != CanonicalizationError


def test_an_event_row_is_its_canonical_json() -> None:
    actor = audit.Actor(client_id="c-1", agency_id="a-1", role="caseworker")
    pending = audit.PendingEvent(
        actor, audit.Action.REFERRAL_READ, "referral", "r-1",
        detail={"relation": "recipient", "fids": ["f1", "f2"], "version": 3,
                "odd": _Old.A, "key": "Ab" * 30},
    )
    row = audit._row(pending)
    event = audit.build_event(pending, ts=row["ts"], event_id=row["event_id"])
    assert row["canonical"] == canonical_json(event).decode("utf-8")
    assert json.loads(row["canonical"])["detail"]["key"] == audit.REDACTED
    assert json.loads(row["canonical"])["detail"]["odd"] == "a"


_TIMES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-5, minutes=-30))]),
)


@PROPERTY
@given(_TIMES)
def test_rfc3339_is_the_leaf_time_format(ts: datetime) -> None:
    assert leaf_time_text(ts) == ts.strftime(LEAF_TIME)


def test_rfc3339_of_whole_seconds_keeps_the_fraction() -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert leaf_time_text(ts) == "2026-01-02T03:04:05.000000Z"


@PROPERTY
@given(st.one_of(st.text(max_size=80), st.text(alphabet="aB0+/=_-", max_size=80),
                 st.sampled_from([_Old.A, _Code.B])))
def test_scrub_short_cut_is_the_regular_expression(text: str) -> None:
    scrubbed = audit.scrub_detail(text)
    assert scrubbed == audit._OPAQUE.sub(audit._opaque, text)
    assert type(scrubbed) is str


# ------------------------------------------------------------------ access log


@pytest.fixture
def access_records() -> Any:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("refgate.access")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_the_access_record_is_what_logger_log_made(access_records: Any) -> None:
    fields = {"request_id": "r", "client_request_id": None, "status": 200}

    fast, slow, level = middleware._access_line, middleware.log.log, logging.WARNING

    def _log() -> None:  # the caller's name, as in the middleware; both on one line
        fast(level, fields), slow(level, "request", extra=fields)

    _log()
    made, logged = access_records
    same = {"name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
            "exc_info", "exc_text", "stack_info", "lineno", "funcName", "thread", "threadName",
            "processName", "process", "request_id", "client_request_id", "status"}
    for key in same:
        assert getattr(made, key) == getattr(logged, key), key
    assert (made.funcName, made.pathname) == ("_log", __file__)
    assert list(vars(made)) == list(vars(logged))


def test_json_formatter_line_is_json_dumps_with_str_default() -> None:
    record = logging.LogRecord("refgate.x", logging.INFO, __file__, 1, "m %s", ("a",), None)
    record.when = datetime(2026, 1, 1, tzinfo=UTC)  # not JSON: str() of it
    record.n = 1.5
    line = JsonFormatter().format(record)
    out = json.loads(line)
    assert (out["msg"], out["when"], out["n"]) == ("m a", str(record.when), 1.5)
    assert line == json.dumps(out, default=str)
    assert list(out)[:4] == ["ts", "level", "logger", "msg"]
