"""Inputs that once answered 500: each is now a 4xx problem or a success, never a crash.

Found by a review of the code (issue 19): the audit-detail guard raised on any
long base64-like run, so a long reason code or audit filter failed the request;
times without an offset, out of range or given as a number; a webhook URL whose
host is an invalid IDNA label; an ``OPTIONS`` that named one route's methods.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.crypto import envelope as env
from app.main import create_app
from app.services.audit import REDACTED, scrub_detail
from tests.hardening import assert_problem, quiet_settings
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


async def test_a_long_custom_field_name_is_sealed_read_and_audited(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    name = "household_members_and_dates_of_birth_for_the_intake"  # 51 characters, valid
    assert len(name) > 43
    body = tf.seal("shelter", {"full_name": "M", name: "v"},
                   {"full_name": {"legal": "service_provision"},
                    name: {"legal": "service_provision"}})
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    rid = body["manifest"]["referral_id"]
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))
    assert r.status_code == 200, r.text
    assert await _events(app, "referral:create")


async def test_a_long_resource_id_filter_is_answered(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    resource = "ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210ZyXwVuTsRqPoNm"  # 50, looks like a key
    r = await client.get("/v1/audit/events", params={"resource_id": resource},
                         headers=await tf.headers("office", "auditor"))
    assert r.status_code == 200, r.text
    assert resource not in json.dumps((await _events(app, "audit:query"))[-1])


def _cursor(*parts: str) -> str:
    import base64

    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


BAD_CURSOR_TIMES = [
    "2026-01-01T00:00:00",  # no offset
    "9999-12-31T23:59:59-23:59",  # beyond the last date once made UTC
    "0001-01-01T00:00:00+01:00",  # before the first
    "2.85e-100",  # a number is not a date
]


@pytest.mark.parametrize("moment", BAD_CURSOR_TIMES)
async def test_a_cursor_with_a_bad_time_is_a_400_on_every_list(
    database_url: str, tmp_path: Path, moment: str
) -> None:
    # webhook targets are not resolved in these settings: the test subscribes offline
    app = create_app(quiet_settings(database_url, tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tf = await TaskForce.create(app, client)
            shelter = await tf.headers("shelter")
            r = await client.get(
                "/v1/referrals",
                params={"cursor": _cursor(moment, "00000000-0000-4000-8000-000000000000")},
                headers=shelter,
            )
            assert_problem(r, 400)
            hook = await client.post(
                "/v1/webhooks",
                json={"url": "https://hooks.example.org/c", "event_types": ["grant.added"]},
                headers=shelter,
            )
            assert hook.status_code == 201, hook.text
            r = await client.get(f"/v1/webhooks/{hook.json()['id']}/deliveries",
                                 params={"cursor": _cursor(moment, "msg_x")}, headers=shelter)
            assert_problem(r, 400)
            r = await client.get("/v1/directory/services",
                                 params={"cursor": _cursor("1", moment, "svc")}, headers=shelter)
            assert_problem(r, 400)


@pytest.mark.parametrize("recipients", [4000, 40_000])
async def test_a_grant_update_naming_thousands_of_recipients_is_refused(
    client: httpx.AsyncClient, tf: TaskForce, recipients: int
) -> None:
    """40,000 recipients once reached PostgreSQL's bind-parameter limit (a 500): now the
    body limit answers 413 (9.5 MB), and 4,000 unsigned wrapped keys (0.96 MB) are a 422
    consent mismatch before any query; the referral stays at version 1."""
    body = tf.seal("shelter", {"full_name": "M"}, {"full_name": {"legal": "service_provision"}})
    shelter = await tf.headers("shelter")
    r = await client.post("/v1/referrals", json=body, headers=shelter)
    assert r.status_code == 201, r.text
    rid = body["manifest"]["referral_id"]
    doc = (await client.get(f"/v1/referrals/{rid}", headers=shelter)).json()
    amendment = env.amend(
        doc, sender_agency=tf["shelter"].agency_id, sender_sig_seed=tf["shelter"].keys.sig_seed,
        sender_enc_private=tf["shelter"].keys.enc_private,
        grants=[env.Grant("full_name", tf["police"].agency_id, tf["police"].keys.enc_public,
                          "service_provision", rfc3339(datetime.now(UTC) + timedelta(days=30)))],
        requests=[env.Request(tf["police"].agency_id, ("case_management",), "routine")],
    )
    (template,) = amendment["wrapped_keys"]
    amendment["wrapped_keys"] = [
        {**template, "recipient": f"00000000-0000-4000-8000-{i:012d}"} for i in range(recipients)
    ]
    r = await client.post(f"/v1/referrals/{rid}/grants", json=amendment, headers=shelter)
    assert_problem(r, 400, 404, 413, 422)
    after = (await client.get(f"/v1/referrals/{rid}", headers=shelter)).json()
    assert after["manifest"]["version"] == 1


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/webhooks", {"GET", "POST"}),
        ("/v1/referrals", {"GET", "POST"}),
    ],
)
async def test_options_names_every_method_of_the_path(
    client: httpx.AsyncClient, tf: TaskForce, path: str, methods: set[str]
) -> None:
    r = await client.request("OPTIONS", path, headers=await tf.headers("shelter"))
    assert_problem(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} >= methods


async def test_a_key_rotation_giving_one_key_for_both_uses_is_refused(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """Found by the fuzzer's coverage phase: the same key as enc_key and sign_key was
    registered twice under one kid (an IntegrityError, a 500)."""
    from app.crypto import keys
    from app.crypto.encoding import b64url_encode

    admin = await tf.headers("office", "admin")
    legal = tf["legal"].agency_id
    before = (await client.get(f"/v1/agencies/{legal}", headers=admin)).json()["keys"]
    same = b64url_encode(keys.generate_agency_keys().enc_public)
    r = await client.post(f"/v1/agencies/{legal}/keys",
                          json={"enc_key": same, "sign_key": same}, headers=admin)
    assert_problem(r, 422)
    assert (await client.get(f"/v1/agencies/{legal}", headers=admin)).json()["keys"] == before


async def test_a_database_that_went_away_is_a_503_to_retry_not_a_500(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """With the database unreachable (here: connection refused), a read and a send answer
    503 problem+json with Retry-After, saying what happened, instead of an anonymous 500."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.db import read_sessionmaker, sessionmaker

    headers = await tf.headers("shelter")  # the token is issued while the database is up
    body = tf.seal("shelter", {"full_name": "Maria"}, {"full_name": {"legal": "service_provision"}})
    gone = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/refgate")  # port 1
    saved = app.state.sessionmaker, app.state.read_sessionmaker
    app.state.sessionmaker = sessionmaker(gone)
    app.state.read_sessionmaker = read_sessionmaker(gone)
    try:
        answers = [
            await client.get("/v1/referrals", headers=headers),
            await client.post("/v1/referrals", json=body, headers=headers),
        ]
    finally:
        app.state.sessionmaker, app.state.read_sessionmaker = saved
        await gone.dispose()
    for r in answers:
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.headers["content-type"].split(";")[0] == "application/problem+json"
        assert r.headers["retry-after"] == "2"
        problem = r.json()
        assert problem["type"].endswith("/database-unavailable"), problem
        assert "cannot reach its database" in problem["detail"], problem
    # once the database is back, the same send goes through: nothing half-done was left
    r = await client.post("/v1/referrals", json=body, headers=headers)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_connections_terminated_by_the_server_are_a_503_or_served_never_a_500(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, database_url: str
) -> None:
    """An administrator ends the pool's connections while requests are in flight
    (SQLSTATE 57P01): each request then either goes through on a fresh connection or
    answers 503 to retry, never an anonymous 500. This case already held before the
    SQLSTATE fix; the restart's 500s ("shutting down" while connecting) are caught by
    the restart fault test and by the SQLSTATE test below."""
    import asyncpg

    headers = await tf.headers("shelter")
    name = database_url.rsplit("/", 1)[1]
    admin = database_url.rsplit("/", 1)[0].replace("postgresql+asyncpg://", "postgresql://")
    statuses: list[int] = []

    async def terminate(after: float) -> None:
        await asyncio.sleep(after)
        conn = await asyncpg.connect(admin + "/postgres")
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()", name
            )
        finally:
            await conn.close()

    for round_ in range(12):
        bodies = [
            tf.seal("shelter", {"full_name": f"M {round_} {k}"},
                    {"full_name": {"legal": "service_provision"}})
            for k in range(3)
        ]
        # requests in flight (reads, sends) while the server ends every connection
        rs = await asyncio.gather(
            *(client.get("/v1/referrals", headers=headers) for _ in range(4)),
            *(client.post("/v1/referrals", json=b, headers=headers) for b in bodies),
            terminate(0.002 * (round_ % 4)),
        )
        for r in rs[:-1]:
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["content-type"].split(";")[0] == "application/problem+json"
    assert 500 not in statuses, statuses


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [
        ("57P03", True),  # the database system is starting up / shutting down
        ("57P01", True),  # terminating connection due to administrator command
        ("08006", True),  # connection failure
        ("53300", True),  # too many connections
        ("23505", False),  # a unique violation is a statement refused: a bug, not a 503
        ("42601", False),  # a syntax error likewise
        (None, False),
    ],
)
def test_a_database_error_is_unavailable_by_its_sqlstate(
    sqlstate: str | None, unavailable: bool
) -> None:
    """asyncpg's errors reach SQLAlchemy as the generic DBAPI Error (not OperationalError);
    "shutting down" while connecting during a restart answered 500 until its SQLSTATE
    was looked at (the restart fault test now refuses any 500)."""
    from sqlalchemy import exc as sa_exc

    from app.main import _lost_database

    class DriverError(Exception):
        pass

    orig = DriverError("x")
    orig.sqlstate = sqlstate  # type: ignore[attr-defined]
    error = sa_exc.DBAPIError("SELECT 1", None, orig)
    assert _lost_database(error) is unavailable
