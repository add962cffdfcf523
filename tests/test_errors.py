"""Every error is RFC 9457 problem+json with type, title, status, detail and request id."""

from __future__ import annotations

import httpx

from tests.taskforce import TaskForce

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "request_id"}


def _is_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert PROBLEM_MEMBERS <= set(body)
    assert body["status"] == status
    assert body["request_id"] == r.headers["x-request-id"]


async def test_errors_are_problem_json(client: httpx.AsyncClient, tf: TaskForce) -> None:
    h = await tf.headers("shelter")
    _is_problem(await client.get("/v1/agencies"), 401)
    _is_problem(
        await client.get("/v1/audit/events", headers=await tf.headers("office", "admin")), 403
    )
    _is_problem(await client.get("/v1/agencies/nope", headers=h), 404)
    _is_problem(await client.get("/no/such/route"), 404)
    _is_problem(await client.delete("/v1/agencies", headers=h), 405)
    _is_problem(await client.get("/v1/referrals?limit=0", headers=h), 422)
    _is_problem(
        await client.post(
            "/v1/referrals", content=b"{", headers={**h, "content-type": "application/json"}
        ),
        400,
    )
    _is_problem(
        await client.post(
            "/v1/referrals",
            content=b"x" * (2 * 1024 * 1024),
            headers={**h, "content-type": "application/json"},
        ),
        413,
    )


async def test_security_headers_and_no_server_header(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/live")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "server" not in r.headers
    assert r.headers["cache-control"] == "no-store"
