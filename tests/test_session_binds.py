"""Services that pick SQL by dialect work on a session bound per table (``binds=``).

Such a session has no ``session.bind`` (it is None); the dialect comes from
``session.get_bind(model)``. Reading ``session.bind.dialect`` failed there with
AttributeError: mypy found it once the persistence modules were type-checked.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel, col

from app import auth
from app.config import Settings, WitnessEndpoint
from app.crypto import keys
from app.crypto.cosignature import witness_vkey
from app.db import create_engine, database_key, sessionmaker
from app.identity import Principal, Role, Scope
from app.models.tables import Agency, ApiClient, AuditEvent, AuditPending, UsedAssertion
from app.models.witness_tables import WitnessState
from app.services import audit, audit_log, witnesses
from app.services.dbutil import insert_ignore
from app.vocab import AgencyKind


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings)
    yield eng
    await eng.dispose()


def _per_table(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions bound table by table, not as a whole."""
    binds = {table: engine for table in SQLModel.metadata.sorted_tables}
    return async_sessionmaker(binds=binds, expire_on_commit=False)


async def test_insert_ignore_on_a_session_bound_per_table(engine: AsyncEngine) -> None:
    values = {
        "client_id": "binds-client",
        "jti": uuid.uuid4().hex,
        "expires_at": datetime.now(UTC) + timedelta(minutes=5),
    }
    async with _per_table(engine)() as db, db.begin():
        assert db.bind is None
        assert await insert_ignore(db, UsedAssertion, values) is True
        assert await insert_ignore(db, UsedAssertion, values) is False
    async with sessionmaker(engine)() as db:
        stored = await db.scalar(
            select(func.count())
            .select_from(UsedAssertion)
            .where(col(UsedAssertion.jti) == values["jti"])
        )
    assert stored == 1


async def test_witness_state_created_on_a_session_bound_per_table(engine: AsyncEngine) -> None:
    public = keys.sig_public_from_seed(keys.generate_signing_key().seed)
    vkey = witness_vkey("witness.example", public)
    endpoint = WitnessEndpoint(url="https://witness.example/", vkey=vkey)
    state = await witnesses._state(_per_table(engine), endpoint)
    assert (state.witness_vkey, state.witness_name, state.url) == (
        vkey,
        "witness.example",
        "https://witness.example/",
    )
    assert state.consecutive_failures == 0
    async with sessionmaker(engine)() as db:
        stored = await db.get(WitnessState, vkey)
    assert stored is not None
    assert stored.url == endpoint.url


async def test_audit_record_on_a_session_bound_per_table(engine: AsyncEngine) -> None:
    events = [
        audit.PendingEvent(audit.Actor.system(), audit.Action.AGENCY_READ, "agency", f"one-{n}")
        for n in range(3)
    ]
    async with _per_table(engine)() as db, db.begin():
        assert db.bind is None
        await audit.record_pending(db, events[0])  # one event: one statement on PostgreSQL
        await audit.record_pending(db, *events[1:])
    async with sessionmaker(engine)() as db:
        written = (
            await db.scalars(
                select(col(AuditEvent.resource_id))
                .join(AuditPending, col(AuditPending.event_id) == col(AuditEvent.id))
                .where(col(AuditEvent.resource_id).like("one-%"))
                .order_by(col(AuditEvent.id))
            )
        ).all()
    assert written == ["one-0", "one-1", "one-2"]


async def test_audit_export_on_a_session_bound_per_table(engine: AsyncEngine) -> None:
    async with sessionmaker(engine)() as db, db.begin():
        for n in range(3):
            await audit.record(
                db, audit.Actor.system(), audit.Action.AGENCY_READ, "agency", f"binds-{n}"
            )
    who = Principal("auditor", "audit-agency", "ngo", Role.AUDITOR, frozenset({Scope.AUDIT_READ}))

    async def export(maker: async_sessionmaker[AsyncSession]) -> bytes:
        chunks = audit_log.export(maker, who, audit_log.EventFilter(), "ndjson")
        return b"".join([chunk async for chunk in chunks])

    per_table = await export(_per_table(engine))
    assert per_table.count(b'"resource_id":"binds-') == 3
    assert per_table == await export(sessionmaker(engine))


async def test_client_status_cache_is_per_database_on_a_session_bound_per_table(
    engine: AsyncEngine, sqlite_template: Path, tmp_path: Path
) -> None:
    """Such a session has no ``db.bind``: the status cache must still tell databases
    apart (it once keyed on ``id(db.bind)``, the same ``id(None)`` for every one)."""
    client_id = f"binds-{uuid.uuid4().hex[:12]}"
    async with sessionmaker(engine)() as db, db.begin():
        db.add(Agency(id=client_id, name="Binds shelter", kind=AgencyKind.SHELTER))
        await db.flush()
        db.add(
            ApiClient(
                client_id=client_id,
                agency_id=client_id,
                role=Role.CASEWORKER,
                auth_public_key="k" * 43,
                auth_kid="kid",
            )
        )
    async with _per_table(engine)() as db:
        assert db.bind is None
        found = await auth._active_client(db, client_id)
    assert found == (client_id, "shelter", "caseworker")
    assert (database_key(engine.sync_engine), client_id) in auth._status_cache
    # another database (migrated, without that client) is not answered from the cache
    other_file = tmp_path / "other.db"
    shutil.copyfile(sqlite_template, other_file)
    other = create_async_engine(f"sqlite+aiosqlite:///{other_file}")
    try:
        async with _per_table(other)() as db:
            assert await auth._active_client(db, client_id) is None
    finally:
        await other.dispose()
        auth.forget_principals()


def test_database_key_names_the_database_without_its_password() -> None:
    a = create_async_engine("postgresql+asyncpg://refgate:s3cret@db.example/one")
    again = create_async_engine("postgresql+asyncpg://refgate:s3cret@db.example/one")
    two = create_async_engine("postgresql+asyncpg://refgate:s3cret@db.example/two")
    autocommit = a.execution_options(isolation_level="AUTOCOMMIT")
    key = database_key(a.sync_engine)
    assert "s3cret" not in key
    assert key == database_key(again.sync_engine) == database_key(autocommit.sync_engine)
    assert key != database_key(two.sync_engine)
    # each in-memory SQLite database is its own engine's
    memory = [create_async_engine("sqlite+aiosqlite://") for _ in range(2)]
    first = database_key(memory[0].sync_engine)
    assert first == database_key(memory[0].sync_engine) != database_key(memory[1].sync_engine)
