"""Fixtures for the witness: its own database on both backends, a test log, the app."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.crypto import keys
from app.witness.service import WitnessConfig, create_witness_app, trusted_logs
from tests.conftest import PG_ADMIN_URL, _asyncpg_url, _pg_admin, _pg_reachable
from tests.witness.testlog import TestLog

WITNESS_NAME = "oversight.example.org/witness"


@pytest.fixture
def witness_db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for the witness's own state (its schema is its own)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'witness' / 'witness.db'}"
        return
    if not _pg_reachable():
        pytest.skip("PostgreSQL is not reachable")
    name = f"witness_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    yield _asyncpg_url(PG_ADMIN_URL, name)
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def test_log() -> TestLog:
    return TestLog()


@pytest.fixture
def witness_config(witness_db_url: str, test_log: TestLog, tmp_path: Path) -> WitnessConfig:
    (tmp_path / "witness").mkdir(exist_ok=True)
    return WitnessConfig(
        name=WITNESS_NAME,
        seed=keys.generate_signing_key().seed,
        database_url=witness_db_url,
        logs=trusted_logs([test_log.vkey]),
    )


@pytest.fixture
async def witness_app(witness_config: WitnessConfig) -> AsyncIterator[FastAPI]:
    app = create_witness_app(witness_config)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def witness_http(witness_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=witness_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://witness") as c:
        yield c
