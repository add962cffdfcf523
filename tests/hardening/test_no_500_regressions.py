"""Inputs that once answered 500: each is now a 4xx problem or a success, never a crash.

Found by a review of the code (issue 19): the audit-detail guard raised on any
long base64-like run, so a long reason code or audit filter failed the request;
times without an offset, out of range or given as a number; a webhook URL whose
host is an invalid IDNA label; an ``OPTIONS`` that named one route's methods.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.crypto import envelope as env
from app.services.audit import REDACTED, scrub_detail
from tests.hardening import assert_problem
from tests.taskforce import TaskForce, rfc3339


async def _events(app: Any, action: str) -> list[dict[str, Any]]:
    async with app.state.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT canonical FROM audit_event ORDER BY ts"),
        )
        events = [json.loads(r[0]) for r in rows]
    return [e for e in events if e["action"] == action]


async def test_a_long_reason_code_is_accepted_and_audited_as_is(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal("shelter", {"full_name": "Maria"}, {"full_name": {"legal": "service_provision"}})
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    rid = body["manifest"]["referral_id"]
    reason = "no_capacity_for_families_with_children_under_five_1"  # 51 characters, valid
    status = env.sign_status(
        referral_id=rid, recipient=tf["legal"].agency_id, status="rejected", reason=reason,
        note=None, signed_at=rfc3339(datetime.now(UTC)), sig_seed=tf["legal"].keys.sig_seed,
    )
    r = await client.post(f"/v1/referrals/{rid}/status", json=status,
                          headers=await tf.headers("legal"))
    assert r.status_code == 200, r.text
    changes = await _events(app, "referral:status")
    assert reason in json.dumps(changes[-1]["detail"])


async def test_a_long_audit_filter_is_answered_and_redacted_in_the_event(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    actor = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMn"  # 50, looks like a key
    r = await client.get("/v1/audit/events", params={"actor": actor},
                         headers=await tf.headers("office", "auditor"))
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []
    queries = await _events(app, "audit:query")
    assert queries, "the query was audited"
    assert actor not in json.dumps(queries[-1])
    assert REDACTED in json.dumps(queries[-1]["detail"])


def test_scrub_detail_redacts_key_like_runs_and_keeps_lower_case_codes() -> None:
    key = "q0Zf3yXWb9sUj1l2Vd8mKc4Ng7Tr5Ee6Hh0Pp1Aa2Bb3"
    code = "client_moved_out_of_the_service_area_before_intake"
    assert scrub_detail({"a": [f"x {key} y"], "b": code, "n": 3}) == {
        "a": [f"x {REDACTED} y"], "b": code, "n": 3,
    }


@pytest.mark.parametrize(
    "since",
    [
        "2026-01-01T00:00:00",  # no offset
        "2.85e-100",  # a number is not a date
        "1700000000",
        "9999-12-31T23:59:59-23:59",  # beyond the last date once made UTC
        "0001-01-01T00:00:00+01:00",  # before the first
        "2026-02-30T00:00:00Z",
    ],
)
async def test_times_in_queries_must_be_rfc3339_with_an_offset(
    client: httpx.AsyncClient, tf: TaskForce, since: str
) -> None:
    auditor = await tf.headers("office", "auditor")
    for path in ("/v1/audit/events", "/v1/audit/export"):
        assert_problem(await client.get(path, params={"since": since}, headers=auditor), 422)
        assert_problem(await client.get(path, params={"until": since}, headers=auditor), 422)
    r = await client.get("/v1/referrals", params={"since": since},
                         headers=await tf.headers("shelter"))
    assert_problem(r, 422)


async def test_a_time_with_an_offset_is_read_as_utc(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    r = await client.get("/v1/audit/events", params={"since": "2026-01-01T02:00:00+02:00"},
                         headers=await tf.headers("office", "auditor"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "url", ["https://xn--a.com/", "https://" + "a" * 70 + ".example.org/hook"]
)
async def test_a_webhook_url_with_an_invalid_host_is_refused(
    client: httpx.AsyncClient, tf: TaskForce, url: str
) -> None:
    r = await client.post("/v1/webhooks", json={"url": url, "event_types": ["grant.added"]},
                          headers=await tf.headers("shelter"))
    assert_problem(r, 400, 422)


async def test_a_wrong_method_names_every_method_the_path_serves(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    r = await client.request("OPTIONS", "/v1/webhooks", headers=await tf.headers("shelter"))
    assert_problem(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
