"""Reads' audit events by group commit (``app.services.audit.GroupCommit``).

- events handed over together are written in one batch, and every one of N
  concurrent reads has its own event with its actor, resource and request id;
- a batch that cannot commit fails every read waiting on it with a 503
  problem+json: nothing is served without its event;
- a real ``refgate-server`` worker killed with SIGKILL while reads are in flight
  (some batched, some committed, some answered) leaves no read that a client
  received as 200 without its committed event.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.db import raw_statement_listeners
from app.main import create_app
from app.services import audit
from app.services.audit import Action, Actor, PendingEvent
from tests.hardening import quiet_settings
from tests.hardening.test_faults import Server, _wait_ready, live_server
from tests.taskforce import TaskForce

FIELDS = {"name": "x" * 64, "phone": "y" * 32}


async def _events(engine: Any) -> dict[str, dict[str, Any]]:
    """Committed events by their client request id (``X-Request-ID`` sent by the test)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT e.canonical, p.event_id IS NOT NULL FROM audit_event e "
            "LEFT JOIN audit_pending p ON p.event_id = e.id"
        ))).all()
    found: dict[str, dict[str, Any]] = {}
    for canonical, queued in rows:
        ev = json.loads(canonical)
        if ev["client_request_id"]:
            assert ev["client_request_id"] not in found, ev
            found[ev["client_request_id"]] = {**ev, "queued": queued}
    return found


async def _send(tf: TaskForce, client: httpx.AsyncClient) -> str:
    body = tf.seal("shelter", FIELDS, {f: {"legal": "service_provision"} for f in FIELDS})
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return str(body["manifest"]["referral_id"])


async def test_events_handed_over_together_are_one_batch(app: Any) -> None:
    group: audit.GroupCommit = app.state.audit_group_commit
    writes: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "INSERT INTO audit_event" in statement:
            writes.append(statement)

    actor = Actor(client_id="c-test", agency_id="a-test", role="caseworker")
    rows = [
        [audit._row(PendingEvent(actor, Action.REFERRAL_READ, "referral", f"r-{i}"))]
        for i in range(10)
    ]
    engine = app.state.engine
    event.listen(group.engine.sync_engine, "before_cursor_execute", before)
    # on PostgreSQL the batch runs on asyncpg directly (app.db.Prepared)
    raw_statement_listeners.append(raw := lambda conn, sql, args: before(conn, None, sql, args))
    try:
        await asyncio.gather(*(group.submit(r) for r in rows))
    finally:
        raw_statement_listeners.remove(raw)
        event.remove(group.engine.sync_engine, "before_cursor_execute", before)
    assert len(writes) == 1, writes  # one INSERT (an executemany on SQLite) and one COMMIT
    async with engine.connect() as conn:
        stored = (await conn.execute(text(
            "SELECT e.resource_id FROM audit_event e JOIN audit_pending p ON p.event_id = e.id "
            "WHERE e.actor = 'c-test'"
        ))).scalars().all()
    assert sorted(stored) == sorted(f"r-{i}" for i in range(10))


async def test_n_concurrent_reads_have_n_events_with_their_actors_and_resources(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    referrals = [await _send(tf, client) for _ in range(3)]
    legal, shelter = await tf.headers("legal"), await tf.headers("shelter")
    calls: list[tuple[str, str, dict[str, str], str | None]] = []
    for i in range(24):
        rid = referrals[i % 3]
        if i % 4 == 3:
            calls.append((f"inbox-{i}", "/v1/referrals?box=sent", shelter, None))
        else:
            calls.append((f"read-{i}", f"/v1/referrals/{rid}", legal, rid))

    async def get(rid_header: str, url: str, headers: dict[str, str]) -> httpx.Response:
        return await client.get(url, headers={**headers, "X-Request-ID": rid_header})

    answers = await asyncio.gather(*(get(c[0], c[1], c[2]) for c in calls))
    assert [r.status_code for r in answers] == [200] * len(calls), [r.text for r in answers]
    events = await _events(app.state.engine)
    legal_client, shelter_client = tf["legal"].clients["caseworker"][0], tf[
        "shelter"
    ].clients["caseworker"][0]
    for (request_id, _url, _headers, rid), answer in zip(calls, answers, strict=True):
        ev = events[request_id]
        assert ev["request_id"] == answer.headers["x-request-id"]
        assert ev["queued"], ev  # its queue entry committed with it
        assert ev["outcome"] == "ok"
        if rid is None:
            assert (ev["actor"], ev["action"]) == (shelter_client, "referral:list"), ev
            assert ev["detail"] == {"box": "sent", "count": 3}
        else:
            assert (ev["actor"], ev["action"]) == (legal_client, "referral:read"), ev
            assert (ev["resource_id"], ev["actor_agency"]) == (rid, tf["legal"].agency_id), ev
            assert ev["subject_agency"] == tf["shelter"].agency_id
    ours = [k for k in events if k.startswith(("read-", "inbox-"))]
    assert len(ours) == len(calls), ours


async def test_a_batch_that_cannot_commit_serves_no_read(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    rid = await _send(tf, client)
    legal = await tf.headers("legal")
    async with app.state.engine.begin() as conn:  # every insert into the queue now fails
        await conn.execute(text("ALTER TABLE audit_pending RENAME TO audit_pending_away"))
    answers = await asyncio.gather(*(
        client.get(f"/v1/referrals/{rid}", headers={**legal, "X-Request-ID": f"lost-{i}"})
        for i in range(5)
    ))
    for r in answers:
        body = assert_problem_503(r)
        assert "ciphertexts" not in r.text
        assert body["type"].endswith("/unavailable"), body
        assert r.headers["retry-after"] == "1"
    async with app.state.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_pending_away RENAME TO audit_pending"))
    assert not any(k.startswith("lost-") for k in await _events(app.state.engine))
    r = await client.get(f"/v1/referrals/{rid}", headers={**legal, "X-Request-ID": "back"})
    assert r.status_code == 200, r.text  # the next batch commits again
    assert "back" in await _events(app.state.engine)


def assert_problem_503(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == 503
    return body


# ------------------------------------------------------- a worker killed mid-batch

READERS = 16
KILLS = 3


@pytest.fixture
def kill_settings(database_url: str, tmp_path: Path) -> Settings:
    return quiet_settings(database_url, tmp_path)


@pytest.fixture
async def kill_seeded(kill_settings: Settings) -> AsyncIterator[tuple[TaskForce, list[str]]]:
    app = create_app(kill_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            tf = await TaskForce.create(app, c)
            referrals = [await _send(tf, c) for _ in range(4)]
            await tf.token("legal", "caseworker")
            yield tf, referrals


@pytest.fixture
async def one_worker(
    kill_settings: Settings, kill_seeded: Any, tmp_path: Path
) -> AsyncIterator[Server]:
    env = {
        "REFGATE_DATA_DIR": str(kill_settings.data_dir),
        "REFGATE_DATABASE_URL": str(kill_settings.database_url),
        "REFGATE_AUDIT__SEQUENCER_ENABLED": "false",
        "REFGATE_WEBHOOKS__DISPATCHER_ENABLED": "false",
        "REFGATE_RATELIMIT__ENABLED": "false",
    }
    async with live_server(env, tmp_path / "server.log") as srv:
        yield srv


async def test_a_worker_killed_between_batch_and_response_serves_nothing_unrecorded(
    kill_settings: Settings, kill_seeded: tuple[TaskForce, list[str]], one_worker: Server
) -> None:
    tf, referrals = kill_seeded
    headers = await tf.headers("legal")
    answered: dict[str, int] = {}  # client request id -> status (200 = served)
    lost: list[str] = []
    stop = asyncio.Event()
    progress = asyncio.Event()

    async def answers(more: int) -> None:
        target = len(answered) + more
        while len(answered) < target:
            progress.clear()
            await progress.wait()

    async def reader(n: int) -> None:
        async with httpx.AsyncClient(base_url=one_worker.url, timeout=10.0) as http:
            i = 0
            while not stop.is_set():
                request_id = f"k{n}-{i}-{uuid.uuid4().hex[:8]}"
                i += 1
                url = f"/v1/referrals/{referrals[i % len(referrals)]}" if i % 3 else "/v1/referrals"
                try:
                    r = await http.get(url, headers={**headers, "X-Request-ID": request_id})
                except httpx.HTTPError:
                    lost.append(request_id)  # the worker died with it: served or not, unknown
                    continue
                answered[request_id] = r.status_code
                progress.set()
                if r.status_code == 200:
                    assert r.json(), r.text

    readers = [asyncio.create_task(reader(n)) for n in range(READERS)]
    try:
        for _ in range(KILLS):
            await answers(150)  # a steady stream of batches in flight
            victim = one_worker.workers()[0]
            os.kill(victim, signal.SIGKILL)
            await _wait_ready(one_worker, workers=2)
        await answers(100)  # and the respawned workers serve again
    finally:
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
    for task in readers:
        assert task.exception() is None, task.exception()

    engine = create_async_engine(str(kill_settings.database_url))
    try:
        events = await _events(engine)
    finally:
        await engine.dispose()
    served = [k for k, status in answered.items() if status == 200]
    assert set(answered.values()) <= {200, 503}, sorted(set(answered.values()))
    unrecorded = [k for k in served if k not in events]
    assert not unrecorded, f"{len(unrecorded)} reads served without their event: {unrecorded[:5]}"
    legal_client = tf["legal"].clients["caseworker"][0]
    for k in served:
        assert events[k]["actor"] == legal_client, events[k]
        assert events[k]["queued"], events[k]
    # nothing recorded twice, nothing recorded for requests no client sent
    assert set(events) <= {*answered, *lost}
    assert len(served) >= KILLS * 150
