"""A create with an ``Idempotency-Key`` (the SDK sends one, derived from the referral id).

- the same key and body again answer the first 201 (one referral, one event);
- the same key with another body is 409 ``idempotency-key-reused`` and changes nothing;
- two identical posts at once both answer the one 201 (the second waits for the first);
- keys are the client's own: another client's key of the same text replays nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlmodel import col

from app.models.tables import AuditEvent, IdempotencyRecord, Referral
from tests.taskforce import TaskForce

FIELDS = {"full_name": "Maria Example", "phone": "+1 555 0100"}
CONSENT = {f: {"legal": "service_provision"} for f in FIELDS}


async def _created(
    client: httpx.AsyncClient, tf: TaskForce, sender: str, key: str
) -> dict[str, Any]:
    """Post a new envelope of ``sender`` with ``key``: 201; returns the envelope."""
    body = tf.seal(sender, FIELDS, CONSENT)
    headers = {**await tf.headers(sender), "Idempotency-Key": key}
    r = await client.post("/v1/referrals", json=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["referral_id"] == body["manifest"]["referral_id"]
    return body


async def _count(app: Any, model: Any, *where: Any) -> int:
    async with app.state.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(model).where(*where)))


async def test_the_same_key_and_body_answer_the_first_201(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal("shelter", FIELDS, CONSENT)
    rid = body["manifest"]["referral_id"]
    headers = {**await tf.headers("shelter"), "Idempotency-Key": f"create-{rid}"}
    first = await client.post("/v1/referrals", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/referrals", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert await _count(app, Referral, col(Referral.id) == rid) == 1
    created = (col(AuditEvent.action) == "referral:create", col(AuditEvent.resource_id) == rid)
    assert await _count(app, AuditEvent, *created) == 1
    assert await _count(app, IdempotencyRecord, col(IdempotencyRecord.key) == f"create-{rid}") == 1


async def test_the_same_key_with_another_body_is_refused_and_changes_nothing(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await _created(client, tf, "shelter", "one-key")
    headers = {**await tf.headers("shelter"), "Idempotency-Key": "one-key"}
    other = tf.seal("shelter", FIELDS, CONSENT)
    r = await client.post("/v1/referrals", json=other, headers=headers)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("idempotency-key-reused")
    assert await _count(app, Referral, col(Referral.id) == other["manifest"]["referral_id"]) == 0


async def test_two_identical_posts_at_once_answer_the_one_201(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal("shelter", FIELDS, CONSENT)
    headers = {**await tf.headers("shelter"), "Idempotency-Key": "at-once"}
    a, b = await asyncio.gather(
        client.post("/v1/referrals", json=body, headers=headers),
        client.post("/v1/referrals", json=body, headers=headers),
    )
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert a.json() == b.json()
    assert await _count(app, Referral, col(Referral.id) == body["manifest"]["referral_id"]) == 1


async def test_a_key_is_the_clients_own(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await _created(client, tf, "shelter", "shared-text")
    await tf.add("clinic", "medical", ["caseworker"])
    await _created(client, tf, "clinic", "shared-text")  # not the shelter's 201 again
