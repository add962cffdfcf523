"""The hot paths cost a few set-based statements, whatever the number of rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event

from tests.taskforce import TaskForce

FIELDS = {f"field_{i}": "x" * 400 for i in range(8)}


@contextmanager
def count_statements(app: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()[:3]).upper())

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


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
    # 8 fields x 4 copies = 32 wrapped keys and grants, 3 recipients: still one
    # statement per table (executemany batches), plus reads and the audit event.
    writes = [s for s in seen if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert len(writes) <= 8, "\n".join(seen)
    assert len(seen) <= 16, seen


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
    assert len(seen) <= 12, seen
