"""A referral's rows (fields, recipients, grants, wrapped keys) always have their referral.

On PostgreSQL they refer to it without foreign keys (migration 0010: the per-row
checks were a fifth of PostgreSQL's CPU per create); create writes them in the
statement that inserts the referral, and the referral can never be deleted, not even
under ``session_replication_role = replica``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.taskforce import TaskForce

postgres_only = pytest.mark.parametrize("backend", ["postgresql"])

CHILDREN = ("referral_field", "referral_recipient", "referral_grant", "wrapped_key")
FIELDS = {"full_name": "Maria Example", "phone": "+1 555 0100"}
CONSENT = {f: {"legal": "service_provision", "police": "investigation"} for f in FIELDS}


async def _orphans(app: Any) -> dict[str, int]:
    async with app.state.engine.connect() as conn:
        return {
            t: int((await conn.execute(text(
                f"SELECT count(*) FROM {t} c WHERE NOT EXISTS "  # noqa: S608
                "(SELECT 1 FROM referral r WHERE r.id = c.referral_id)"))).scalar_one())
            for t in CHILDREN
        }


async def _send(tf: TaskForce, client: httpx.AsyncClient) -> dict[str, Any]:
    body = tf.seal("shelter", FIELDS, CONSENT)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return body


async def test_a_duplicate_create_writes_no_row(tf: TaskForce, client: httpx.AsyncClient) -> None:
    body = await _send(tf, client)
    rid = body["manifest"]["referral_id"]
    async with tf.app.state.engine.connect() as conn:
        counts = [
            (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()  # noqa: S608
            for t in CHILDREN
        ]
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 409, r.text
    async with tf.app.state.engine.connect() as conn:
        for t, before in zip(CHILDREN, counts, strict=True):
            after = (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()  # noqa: S608
            assert after == before, t
        rows = (await conn.execute(
            text("SELECT count(*) FROM referral_grant WHERE referral_id = :r"), {"r": rid}
        )).scalar_one()
    assert rows == len(FIELDS) * 3  # the sender's own grant and the two recipients'
    assert set((await _orphans(tf.app)).values()) == {0}


async def _run(app: Any, replica: bool, stmt: str, rid: str) -> None:
    async with app.state.engine.begin() as conn:
        if replica:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text(stmt), {"r": rid} if ":r" in stmt else {})


@postgres_only
@pytest.mark.parametrize("replica", [False, True])
async def test_a_referral_cannot_be_deleted_on_postgres(
    tf: TaskForce, client: httpx.AsyncClient, replica: bool
) -> None:
    rid = (await _send(tf, client))["manifest"]["referral_id"]
    for stmt in ("DELETE FROM referral WHERE id = :r", "TRUNCATE referral CASCADE"):
        with pytest.raises(DBAPIError, match="referrals are never deleted"):
            await _run(tf.app, replica, stmt, rid)
    async with tf.app.state.engine.connect() as conn:
        assert (await conn.execute(
            text("SELECT count(*) FROM referral WHERE id = :r"), {"r": rid}
        )).scalar_one() == 1
    assert set((await _orphans(tf.app)).values()) == {0}
