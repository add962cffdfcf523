"""Rate limits: per client and per address on /oauth/token, per client on the API.

The database backend runs on both SQLite and PostgreSQL here; two app instances
on one database stand in for two workers and share one budget. Most tests count
exactly (``share_every = 0``: one upsert per request); the default, where each
worker counts in memory and exchanges its counts every half second, has a test
of its own. Windows are
fixed (60 s; 10 s for the API burst), so a test first waits until it is not
about to cross a window edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.client.assertion import client_assertion, token_form
from app.config import RateLimitSettings, Settings
from app.crypto import keys
from app.main import create_app
from tests.hardening import assert_problem, quiet_settings
from tests.taskforce import TaskForce

TOKEN_URL = "http://test/oauth/token"
LIMITS = RateLimitSettings(
    backend="database",
    share_every=0,
    token_per_client=3,
    token_per_address=8,
    api_per_client=50,
    api_burst=5,
    anonymous_per_address=4,
)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return quiet_settings(database_url, tmp_path, ratelimit=LIMITS)


async def _clear_of_window_edge(window: int, needed: float = 4.0) -> None:
    """Sleep past the next window edge when fewer than ``needed`` seconds are left."""
    left = window - time.time() % window
    if left < needed:
        await asyncio.sleep(left + 0.05)


def _form(client_id: str, seed: bytes) -> dict[str, str]:
    return token_form(client_assertion(client_id, seed, TOKEN_URL))


def _assert_429(response: httpx.Response, window: int) -> None:
    body = assert_problem(response, 429)
    assert body["type"].endswith("/rate-limited"), body
    retry = int(response.headers["retry-after"])
    assert 1 <= retry <= window, retry
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_defaults_suit_machine_clients() -> None:
    d = RateLimitSettings()
    assert (d.token_per_client, d.token_per_address) == (30, 120)
    assert (d.api_per_client, d.api_burst, d.anonymous_per_address) == (600, 100, 120)
    assert d.enabled
    assert d.backend == "auto"


async def test_token_requests_are_limited_per_client(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    client_id, auth = tf["legal"].clients["caseworker"]
    other_id, other_auth = tf["ngo"].clients["caseworker"]
    await _clear_of_window_edge(60)
    for _ in range(3):
        r = await client.post("/oauth/token", data=_form(client_id, auth.seed))
        assert r.status_code == 200, r.text
    refused = await client.post("/oauth/token", data=_form(client_id, auth.seed))
    _assert_429(refused, 60)
    # the refusal is a refused log-on in the audit log, and no token was issued for it
    async with app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT outcome, canonical FROM audit_event WHERE action = 'token:issue' "
                    "AND actor = :c ORDER BY id"
                ),
                {"c": client_id},
            )
        ).all()
    assert [o for o, _ in rows][-4:] == ["ok", "ok", "ok", "denied"]
    assert '"reason":"rate_limited"' in rows[-1][1]
    # another client is not affected
    r = await client.post("/oauth/token", data=_form(other_id, other_auth.seed))
    assert r.status_code == 200, r.text


async def test_token_requests_are_limited_per_source_address(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await _clear_of_window_edge(60)
    # tf.token() above used the same address already: count what is left of 8
    stranger = str(uuid.uuid4())
    seed = keys.generate_signing_key().seed
    statuses = []
    for _ in range(10):
        r = await client.post("/oauth/token", data=_form(stranger, seed))
        statuses.append(r.status_code)
    assert statuses.count(401) >= 1
    assert statuses[-1] == 429, statuses
    _assert_429(r, 60)
    # invalid assertions count too, before anything is parsed; another address is not affected
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as elsewhere:
        client_id, auth = tf["ngo"].clients["caseworker"]
        r = await elsewhere.post("/oauth/token", data=_form(client_id, auth.seed))
        assert r.status_code == 200, r.text


async def test_api_requests_are_limited_per_client_with_a_burst_window(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    legal = await tf.headers("legal")
    ngo = await tf.headers("ngo")
    await _clear_of_window_edge(10)
    statuses = [(await client.get("/v1/referrals", headers=legal)).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429], statuses
    r = await client.get("/v1/referrals", headers=legal)
    _assert_429(r, 10)
    assert (await client.get("/v1/referrals", headers=ngo)).status_code == 200


async def test_requests_without_a_valid_token_are_limited_per_address(
    client: httpx.AsyncClient,
) -> None:
    await _clear_of_window_edge(60)
    bad = {"Authorization": "Bearer not-a-token"}
    statuses = [(await client.get("/v1/referrals", headers=bad)).status_code for _ in range(5)]
    assert statuses == [401] * 4 + [429], statuses


@pytest.fixture
async def second_worker(settings: Settings, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Another app instance on the same database and keys: what a second worker is."""
    other = create_app(settings)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_limits_hold_across_workers(
    client: httpx.AsyncClient, second_worker: httpx.AsyncClient, tf: TaskForce
) -> None:
    headers = await tf.headers("legal")
    await _clear_of_window_edge(10)
    statuses = []
    for i in range(6):
        worker = client if i % 2 == 0 else second_worker
        statuses.append((await worker.get("/v1/referrals", headers=headers)).status_code)
    assert statuses == [200] * 5 + [429], statuses


async def test_workers_exchange_counts_at_intervals(app: FastAPI) -> None:
    """The default: each worker counts in memory and shares its counts every
    ``share_every`` seconds; once they are shared, the budget is one for all."""
    from app.ratelimit import RateLimiter

    shared = LIMITS.model_copy(update={"share_every": 0.2})
    settings = app.state.settings.model_copy(update={"ratelimit": shared})
    engine = app.state.engine
    first, second = RateLimiter(settings), RateLimiter(settings)
    hits = first.api_hits("client-shared")
    await _clear_of_window_edge(10)
    for _ in range(3):
        assert await first.hit(hits, engine=engine) is None
    await first.close()  # the first hit started an exchange; wait for it
    await first.share(engine)  # and share the other two
    # the second worker has not exchanged yet: it judges on its own count
    assert await second.hit(hits, engine=engine) is None
    await second.close()  # its first exchange brings back the three of the first worker
    assert await second.hit(hits, engine=engine) is None  # 3 + 1 shared, + 1: the 5th
    exceeded = await second.hit(hits, engine=engine)  # the 6th of a burst of 5
    assert exceeded is not None
    assert exceeded.limit.name == "api-burst"
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT count FROM rate_limit WHERE key = 'api-burst:client-shared'")
            )
        ).scalar_one()
    assert stored == 4  # what the two workers have shared so far


async def test_a_failed_exchange_keeps_counting_in_memory(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    from app.ratelimit import RateLimiter

    shared = LIMITS.model_copy(update={"share_every": 0.2})
    limiter = RateLimiter(app.state.settings.model_copy(update={"ratelimit": shared}))
    engine = app.state.engine
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE rate_limit"))
    hits = limiter.api_hits("client-offline")
    await _clear_of_window_edge(10)
    logger: Any = logging.getLogger("refgate")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="refgate.ratelimit"):
            results = [await limiter.hit(hits, engine=engine) for _ in range(6)]
            await limiter.close()
    finally:
        logger.removeHandler(caplog.handler)
    assert results[:5] == [None] * 5
    refused = results[5]
    assert refused is not None
    assert refused.limit.name == "api-burst"
    assert any("could not share" in rec.getMessage() for rec in caplog.records)


async def test_memory_backend_counts_per_process(
    database_url: str, tmp_path: Path, tf: TaskForce
) -> None:
    """``memory`` (the default on SQLite) keeps each worker's own count."""
    limits = LIMITS.model_copy(update={"backend": "memory"})
    settings = quiet_settings(database_url, tmp_path / "mem", ratelimit=limits)
    settings = settings.model_copy(update={"data_dir": tf.app.state.settings.data_dir})
    headers = await tf.headers("legal")
    apps = [create_app(settings), create_app(settings)]
    await _clear_of_window_edge(10)
    seen: list[list[int]] = []
    for one in apps:
        async with one.router.lifespan_context(one):
            transport = httpx.ASGITransport(app=one)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                seen.append(
                    [(await c.get("/v1/referrals", headers=headers)).status_code for _ in range(6)]
                )
    assert seen == [[200] * 5 + [429]] * 2, seen


def test_auto_backend_is_database_on_postgresql_and_memory_on_sqlite(tmp_path: Path) -> None:
    from app.ratelimit import RateLimiter

    pg = Settings(env="test", database_url="postgresql+asyncpg://x@h/db", data_dir=tmp_path)
    lite = Settings(env="test", data_dir=tmp_path)
    assert RateLimiter(pg).backend == "database"
    assert RateLimiter(lite).backend == "memory"


async def test_the_limiter_fails_open_when_its_table_is_unreachable(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce, caplog: pytest.LogCaptureFixture
) -> None:
    headers = await tf.headers("legal")
    async with app.state.engine.begin() as conn:
        await conn.execute(text("DROP TABLE rate_limit"))
    logger: Any = logging.getLogger("refgate")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="refgate.ratelimit"):
            r = await client.get("/v1/referrals", headers=headers)
    finally:
        logger.removeHandler(caplog.handler)
    assert r.status_code == 200, r.text
    assert any("rate limiter unavailable" in rec.getMessage() for rec in caplog.records)
