"""The hot paths cost a few set-based statements, whatever the number of rows.

Budgets are what Envelope v2 does (``app/services/referrals/__init__.py`` states them),
counted per backend: PostgreSQL writes a new referral's five tables in one
statement and the audit event with its pending entry in another; SQLite needs
one executemany per table. Authentication (one read of the client) is counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import event

from app.crypto import envelope as env
from app.db import raw_statement_listeners
from tests.taskforce import TaskForce, rfc3339

FIELDS = {f"field_{i}": "x" * 400 for i in range(8)}
WRITE = re.compile(r"\b(INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b")


@contextmanager
def count_statements(app: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        if "rate_limit" not in words[:3]:  # the limiter's own background sharing
            seen.append(" ".join(words).upper())

    # a read's audit event is written on the group commit's own connection (app.db)
    engines = [app.state.engine.sync_engine, app.state.audit_group_commit.engine.sync_engine]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", before)
    # and the hot statements run on asyncpg directly (app.db.Prepared)
    raw_statement_listeners.append(raw := lambda conn, sql, args: before(conn, None, sql, args))
    try:
        yield seen
    finally:
        raw_statement_listeners.remove(raw)
        for engine in engines:
            event.remove(engine, "before_cursor_execute", before)


def _writes(seen: list[str]) -> list[str]:
    """Statements that write (a CTE that inserts counts once; SELECT … FOR UPDATE does not)."""
    return [s for s in seen if WRITE.match(s) or (s.startswith("WITH ") and WRITE.search(s))]


def _short(seen: list[str]) -> list[str]:
    return [s[:60] for s in seen]


def _pg(app: Any) -> bool:
    return bool(app.state.engine.dialect.name == "postgresql")


async def test_create_with_8_fields_and_3_recipients_is_a_few_statements(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await tf.add("clinic", "medical", ["caseworker"])
    consent = {
        f: {"legal": "service_provision", "police": "investigation", "clinic": "service_provision"}
        for f in FIELDS
    }
    body = tf.seal("shelter", FIELDS, consent)
    headers = await tf.headers("shelter")
    with count_statements(app) as seen:
        r = await client.post("/v1/referrals", json=body, headers=headers)
    assert r.status_code == 201, r.text
    # 8 fields x 4 copies = 32 wrapped keys and grants, 3 requests: authentication, one
    # directory read, the five tables (one statement on PostgreSQL, one executemany each
    # on SQLite), the audit event and the webhook subscriptions.
    writes = _writes(seen)
    assert len(writes) <= (2 if _pg(app) else 7), _short(seen)
    assert len(seen) <= (5 if _pg(app) else 10), _short(seen)


async def test_recipient_read_is_a_few_statements(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    consent = {f: {"legal": "service_provision"} for f in FIELDS}
    body = tf.seal("shelter", FIELDS, consent)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201
    headers = await tf.headers("legal")
    with count_statements(app) as seen:
        r = await client.get(f"/v1/referrals/{body['manifest']['referral_id']}", headers=headers)
    assert r.status_code == 200
    assert len(r.json()["ciphertexts"]) == len(FIELDS)
    # authentication, the referral with the caller's own row, its grants with their
    # fields and wrapped keys, and the audit event
    assert len(_writes(seen)) <= (1 if _pg(app) else 2), _short(seen)
    assert len(seen) <= (4 if _pg(app) else 5), _short(seen)


async def test_inbox_page_is_a_few_statements_whatever_its_length(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    consent = {f: {"legal": "service_provision"} for f in FIELDS}
    for _ in range(5):
        body = tf.seal("shelter", FIELDS, consent)
        r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
        assert r.status_code == 201, r.text
    for box, name in (("received", "legal"), ("sent", "shelter")):
        headers = await tf.headers(name)
        with count_statements(app) as seen:
            r = await client.get(f"/v1/referrals?box={box}", headers=headers)
        assert r.status_code == 200
        assert len(r.json()["items"]) == 5
        # authentication (unless the 2 s status cache still holds the client: on a slow
        # machine it may not), the page (and, for the sent box, every recipient's status
        # in one statement), and the audit event (one statement on PostgreSQL, two on SQLite)
        budget = (3 if _pg(app) else 4) + (1 if box == "sent" else 0)
        assert len(seen) <= budget, (box, _short(seen))


async def test_signed_status_change_is_a_few_statements(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    consent = {f: {"legal": "service_provision"} for f in FIELDS}
    body = tf.seal("shelter", FIELDS, consent)
    rid = body["manifest"]["referral_id"]
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201
    legal = tf["legal"]
    status = env.sign_status(
        referral_id=rid, recipient=legal.agency_id, status="accepted", reason=None, note=None,
        signed_at=rfc3339(datetime.now(UTC)), sig_seed=legal.keys.sig_seed,
    )
    headers = await tf.headers("legal")
    with count_statements(app) as seen:
        r = await client.post(f"/v1/referrals/{rid}/status", json=status, headers=headers)
    assert r.status_code == 200, r.text
    # authentication, the locked own row with the referral, the poster's signing key,
    # the update, the audit event and the webhook subscriptions
    assert len(_writes(seen)) <= (2 if _pg(app) else 3), _short(seen)
    assert len(seen) <= (6 if _pg(app) else 7), _short(seen)


async def test_webhook_subscriptions_are_one_sql_text_whatever_the_number_of_recipients(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """On PostgreSQL a new referral's recipients go to the webhook subscriptions read as
    one array parameter: one SQL text (one prepared statement) for any number of them.
    SQLite expands an IN list, one text per number of recipients."""
    await tf.add("clinic", "medical", ["caseworker"])
    texts: list[str] = []
    for recipients in (["legal"], ["legal", "clinic", "ngo"]):
        consent = {f: dict.fromkeys(recipients, "service_provision") for f in FIELDS}
        body = tf.seal("shelter", FIELDS, consent)
        headers = await tf.headers("shelter")
        with count_statements(app) as seen:
            r = await client.post("/v1/referrals", json=body, headers=headers)
        assert r.status_code == 201, r.text
        subscriptions = [s for s in seen if " FROM WEBHOOK " in s]
        assert len(subscriptions) == 1, _short(seen)
        texts += subscriptions
    assert (len(set(texts)) == 1) == _pg(app), texts


async def test_every_get_route_writes_nothing_but_its_audit_event(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """GETs run without an explicit transaction on PostgreSQL (``app.db``): that is
    safe only while a GET's one write is its audit event, which this pins for every
    GET route of the API (the test fails on a GET route it does not know). The
    event goes by group commit, so the read's own connection writes nothing."""
    consent = {f: {"legal": "service_provision"} for f in FIELDS}
    body = tf.seal("shelter", FIELDS, consent)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    hook = await client.post(
        "/v1/webhooks",
        json={"url": "https://93.184.215.14:8443/hook", "event_types": ["referral.received"]},
        headers=await tf.headers("legal"),
    )
    assert hook.status_code == 201, hook.text
    await tf.sequence()
    legal, auditor = await tf.headers("legal"), await tf.headers("office", "auditor")
    agency = tf["legal"].agency_id
    referral = body["manifest"]["referral_id"]
    gets = {
        "/v1/agencies": ("", legal),
        "/v1/agencies/{agency_id}": (f"/v1/agencies/{agency}", legal),
        "/v1/agencies/{agency_id}/keys/proof": (f"/v1/agencies/{agency}/keys/proof", legal),
        "/v1/directory/services": ("?category=legal&language=es", legal),
        "/v1/directory/hsds": ("", auditor),
        "/v1/audit/checkpoint": ("", auditor),
        "/v1/audit/events": ("?limit=5", auditor),
        "/v1/audit/events/{seq}": ("/v1/audit/events/0", auditor),
        "/v1/audit/export": ("", auditor),
        "/v1/audit/log-key": ("", auditor),
        "/v1/audit/proof/consistency": ("?first=1", auditor),
        "/v1/audit/proof/inclusion": ("?seq=0", auditor),
        "/v1/limits": ("", legal),
        "/v1/referrals": ("?box=received", legal),
        "/v1/referrals/{referral_id}": (f"/v1/referrals/{referral}", legal),
        "/v1/webhooks": ("", legal),
        "/v1/webhooks/{webhook_id}/deliveries": (
            f"/v1/webhooks/{hook.json()['id']}/deliveries",
            legal,
        ),
    }
    api_gets = {path for path, ops in app.openapi()["paths"].items() if "get" in ops}
    api_gets = {path for path in api_gets if path.startswith("/v1/")}
    assert api_gets == set(gets), "a GET route this test does not exercise"
    audit_write = re.compile(r"^(WITH written AS \()?INSERT INTO audit_(event|pending)\b")
    for template, (target, headers) in gets.items():
        url = target if target.startswith("/") else template + target
        seen: list[str] = []  # the read's own connection
        grouped: list[str] = []  # the audit group commit's connection

        def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(" ".join(statement.split()))  # noqa: B023 - used within the iteration

        def before_group(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            grouped.append(" ".join(statement.split()))  # noqa: B023 - used within the iteration

        main, group = app.state.engine.sync_engine, app.state.audit_group_commit.engine.sync_engine
        event.listen(main, "before_cursor_execute", before)
        event.listen(group, "before_cursor_execute", before_group)

        def raw(conn: Any, statement: str, args: Any) -> None:
            (before_group if conn.engine is group else before)(conn, None, statement)  # noqa: B023

        raw_statement_listeners.append(raw)
        try:
            r = await client.get(url, headers=headers)
        finally:
            raw_statement_listeners.remove(raw)
            event.remove(main, "before_cursor_execute", before)
            event.remove(group, "before_cursor_execute", before_group)
        assert r.status_code == 200, (url, r.text)
        writes = [
            s
            for s in seen
            if re.search(r"\b(INSERT|UPDATE|DELETE)\b", s)
            # the rate limiter shares its counts in a transaction of its own, in the background
            and not re.match(r"^(INSERT INTO|DELETE FROM) rate_limit\b", s)
        ]
        # the read's own transaction writes nothing: its event goes by group commit
        assert writes == [], (url, writes)
        assert all(audit_write.match(s) for s in grouped), (url, grouped)
        assert len(grouped) <= (1 if app.state.engine.dialect.name == "postgresql" else 2), grouped
