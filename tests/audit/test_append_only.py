"""The audit tables refuse UPDATE, DELETE and TRUNCATE in the database itself."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.models.tables import APPEND_ONLY_TABLES
from tests.taskforce import TaskForce

# Overrides the backend fixture's parameters: these run against PostgreSQL only.
postgres_only = pytest.mark.parametrize("backend", ["postgresql"])

# A statement that touches at least one existing row of each table.
UPDATES = {
    "audit_event": "UPDATE audit_event SET canonical = canonical "
    "WHERE id IN (SELECT min(id) FROM audit_event)",
    "audit_leaf": "UPDATE audit_leaf SET seq = seq WHERE seq = 0",
    "audit_node": "UPDATE audit_node SET hash = hash WHERE level = 0 AND idx = 0",
    "audit_checkpoint": "UPDATE audit_checkpoint SET note = note",
    "directory_entry": "UPDATE directory_entry SET leaf = leaf",
}
DELETES = {
    "audit_event": "DELETE FROM audit_event",
    "audit_leaf": "DELETE FROM audit_leaf WHERE seq = 0",
    "audit_node": "DELETE FROM audit_node",
    "audit_checkpoint": "DELETE FROM audit_checkpoint",
    "directory_entry": "DELETE FROM directory_entry",
}


async def _count(app: Any, table: str) -> int:
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())  # noqa: S608


async def _run(app: Any, statements: tuple[str, ...]) -> None:
    async with app.state.engine.begin() as conn:
        for stmt in statements:
            await conn.execute(text(stmt))


async def _refused(app: Any, *statements: str) -> str:
    with pytest.raises(DBAPIError) as info:
        await _run(app, statements)
    return str(info.value)


@pytest.fixture
async def sequenced(tf: TaskForce) -> TaskForce:
    assert await tf.sequence() > 0
    for table in APPEND_ONLY_TABLES:
        assert await _count(tf.app, table) > 0, table
    return tf


async def test_update_and_delete_are_refused(sequenced: TaskForce) -> None:
    app = sequenced.app
    for table in APPEND_ONLY_TABLES:
        before = await _count(app, table)
        assert "append-only" in await _refused(app, UPDATES[table]), table
        assert "append-only" in await _refused(app, DELETES[table]), table
        assert await _count(app, table) == before, table


async def test_insert_still_works(sequenced: TaskForce) -> None:
    app = sequenced.app
    async with app.state.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO audit_node (level, idx, hash) VALUES (40, 0, :h)"), {"h": b"\0" * 32}
        )
    async with app.state.engine.connect() as conn:
        found = await conn.execute(text("SELECT count(*) FROM audit_node WHERE level = 40"))
        assert found.scalar_one() == 1
    # And the gateway keeps recording events into the same tables.
    r = await sequenced.http.get("/v1/agencies", headers=await sequenced.headers("legal"))
    assert r.status_code == 200
    assert await sequenced.sequence() > 0


@postgres_only
async def test_truncate_is_refused_on_postgres(sequenced: TaskForce) -> None:
    app = sequenced.app
    for table in APPEND_ONLY_TABLES:
        before = await _count(app, table)
        assert "append-only" in await _refused(app, f"TRUNCATE {table} CASCADE"), table
        assert await _count(app, table) == before, table


@postgres_only
async def test_triggers_fire_under_replica_role_on_postgres(sequenced: TaskForce) -> None:
    """Ordinary triggers are skipped under ``session_replication_role = replica``.

    Ours are ``ENABLE ALWAYS``, so even a superuser replaying as a replica is refused.
    """
    app = sequenced.app
    replica = "SET LOCAL session_replication_role = replica"
    for table in APPEND_ONLY_TABLES:
        before = await _count(app, table)
        assert "append-only" in await _refused(app, replica, UPDATES[table]), table
        assert "append-only" in await _refused(app, replica, DELETES[table]), table
        assert "append-only" in await _refused(app, replica, f"TRUNCATE {table} CASCADE"), table
        assert await _count(app, table) == before, table
