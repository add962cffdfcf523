"""The hot routes' fast lane (``app.routers.hot``) answers exactly as FastAPI's router would.

It serves the plain requests of create, inbox, open, status and the inclusion proof;
every other request, and every hot request not in its plain form, goes to FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.routers.hot import HotLane, _plain_arguments
from app.vocab import TaskStatus
from tests.taskforce import TaskForce

CONSENT = {"full_name": {"legal": "service_provision", "police": "investigation"}}


def _lane(app: Any) -> HotLane:
    """The app's HotLane instance (its middleware stack is built on first use)."""
    layer = app.middleware_stack or app.build_middleware_stack()
    app.middleware_stack = layer
    while not isinstance(layer, HotLane):
        layer = layer.app
    return layer


def _scope(method: str, path: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None
           ) -> dict[str, Any]:
    return {
        "type": "http", "method": method, "path": path, "root_path": "",
        "query_string": query.encode(), "headers": headers or [],
    }


def test_the_lane_claims_no_route_but_its_own(settings: Any) -> None:
    """Every documented operation, at a sample path: the lane selects nothing or that very
    route (a new route shadowed by a hot one would fail here)."""
    app = create_app(settings)
    lane = _lane(app)
    claimed = set()
    for template, operations in app.openapi()["paths"].items():
        path = re.sub(r"\{[^}]+\}", "sample-1", template)
        for method in operations:
            selected = lane._select(_scope(method.upper(), path))
            if selected is not None:
                assert (selected[0].route.path, selected[0].method) == (template, method.upper())
                claimed.add(f"{method.upper()} {template}")
    assert claimed == {
        "POST /v1/referrals", "GET /v1/referrals", "GET /v1/referrals/{referral_id}",
        "POST /v1/referrals/{referral_id}/status", "GET /v1/audit/proof/inclusion",
        "GET /v1/audit/events", "GET /v1/directory/services",
    }
    assert lane._select(_scope("GET", "/v1/referrals/a/b")) is None
    assert lane._select(_scope("DELETE", "/v1/referrals/a")) is None


@pytest.mark.parametrize(
    ("query", "plain"),
    [
        ("", True), ("limit=200&box=sent&status=on-hold&urgency=urgent", True),
        ("since=2026-12-01T00:00:00%2B01:00&cursor=", True), ("unknown=1", True),
        ("limit=0", False), ("limit=201", False), ("limit=007", False), ("limit=+5", False),
        ("limit= 5", False), ("status=bogus", False), ("status=", False), ("box=Sent", False),
        ("box=sent&box=received", False), ("since=yesterday", False),
        ("since=2026-12-01T00:00:00", False), ("cursor=" + "x" * 257, False),
    ],
)
def test_inbox_parameters_in_their_plain_form_only(
    settings: Any, query: str, plain: bool
) -> None:
    from starlette.requests import Request

    lane = _lane(create_app(settings))
    scope = _scope("GET", "/v1/referrals", query)
    bound, child = lane._select(scope) or pytest.fail("not selected")
    kwargs = _plain_arguments(bound, Request(scope), child["path_params"])
    assert (kwargs is not None) is plain
    if plain and query.startswith("since="):
        assert kwargs is not None
        assert kwargs["since"] == datetime(2026, 11, 30, 23, tzinfo=UTC)
    if query.startswith("limit=200"):
        assert kwargs is not None
        assert kwargs["status"] is TaskStatus.ON_HOLD
        assert (kwargs["limit"], kwargs["box"], kwargs["cursor"]) == (200, "sent", None)


@pytest.mark.parametrize(
    ("headers", "plain"),
    [
        ([], True), ([(b"idempotency-key", b"k-1")], True),
        ([(b"idempotency-key", b"")], False), ([(b"idempotency-key", b"a b")], False),
        ([(b"idempotency-key", b"x" * 256)], False),
        ([(b"idempotency-key", b"a"), (b"idempotency-key", b"b")], False),
    ],
)
def test_create_idempotency_key_in_its_plain_form_only(
    settings: Any, headers: list[tuple[bytes, bytes]], plain: bool
) -> None:
    from starlette.requests import Request

    lane = _lane(create_app(settings))
    scope = _scope("POST", "/v1/referrals", headers=headers)
    bound, child = lane._select(scope) or pytest.fail("not selected")
    assert (_plain_arguments(bound, Request(scope), child["path_params"]) is not None) is plain


@contextmanager
def _counting(app: Any) -> Iterator[list[str]]:
    """The requests the lane passed on to FastAPI, by path."""
    lane = _lane(app)
    inner, passed = lane.app, []

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])
        await inner(scope, receive, send)

    lane.app = counted
    try:
        yield passed
    finally:
        lane.app = inner


@contextmanager
def _without_lane(app: Any) -> Iterator[None]:
    lane = _lane(app)
    select = lane._select
    lane._select = lambda scope: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        lane._select = select  # type: ignore[method-assign]


def _answer(r: httpx.Response) -> tuple[int, str, Any]:
    body = r.json()
    if isinstance(body, dict):
        body.pop("request_id", None)
    return r.status_code, r.headers["content-type"], body


async def test_the_lane_answers_as_fastapi_does(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    shelter, legal = await tf.headers("shelter"), await tf.headers("legal")
    auditor = await tf.headers("office", "auditor")
    json_type = {"content-type": "application/json"}
    body = tf.seal("shelter", {"full_name": "Maria Example"}, CONSENT)
    rid = body["manifest"]["referral_id"]
    with _counting(app) as passed:
        r = await client.post("/v1/referrals", json=body, headers=shelter)
        assert r.status_code == 201, r.text
        assert passed == []  # created by the lane
    await tf.sequence()
    reads = [
        ("GET", f"/v1/referrals/{rid}", legal, None),
        ("GET", f"/v1/referrals/{rid}", shelter, None),
        ("GET", "/v1/referrals?box=received&limit=5", legal, None),
        ("GET", "/v1/referrals?limit=0", legal, None),  # 422, from FastAPI either way
        ("GET", "/v1/referrals/nope", legal, None),  # 404
        ("GET", f"/v1/referrals/{rid}", {}, None),  # 401
        ("GET", f"/v1/referrals/{rid}", auditor, None),  # 403, no scope
        ("GET", "/v1/audit/proof/inclusion?seq=0&tree_size=1", auditor, None),
        ("GET", "/v1/audit/proof/inclusion?seq=5&tree_size=1", auditor, None),  # refused
        ("GET", "/v1/audit/proof/inclusion?seq=0", legal, None),  # not an auditor
        ("GET", f"/v1/audit/events?resource_id={rid}&action=referral:read", auditor, None),
        ("GET", "/v1/audit/events?since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z",
         auditor, None),
        ("GET", "/v1/audit/events?cursor=made-up", auditor, None),  # 400 invalid-cursor
        ("GET", "/v1/audit/events?action=nope", auditor, None),  # 422, from FastAPI
        ("GET", "/v1/directory/services?category=&q=shelter", legal, None),
        ("GET", "/v1/directory/services?limit=1&accepting=yes", legal, None),
        ("POST", f"/v1/referrals/{rid}/status", {**legal, **json_type}, b"{"),  # 400
        ("POST", f"/v1/referrals/{rid}/status", {**legal, "content-type": "text/plain"}, b"x"),
        ("POST", "/v1/referrals", {**shelter, **json_type}, b'{"manifest": 1}'),  # 422
    ]
    for method, url, headers, content in reads:
        with _counting(app) as passed:
            lane = await client.request(method, url, headers=headers, content=content)
        with _without_lane(app):
            router = await client.request(method, url, headers=headers, content=content)
        assert _answer(lane) == _answer(router), url
        assert lane.headers.get("www-authenticate") == router.headers.get("www-authenticate")
        to_fastapi = url.endswith(("limit=0", "action=nope"))
        assert passed == ([url.partition("?")[0]] if to_fastapi else []), url
