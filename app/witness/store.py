"""The witness's own state: the latest cosigned checkpoint per log, and refusals.

It lives in the witness's own database (SQLite by default, PostgreSQL
optional), never in the gateway's: a witness is run by someone else, and the
gateway's operator must not be able to roll its state back. The schema is
this module's own (``SCHEMA``, applied in order by ``migrate``; the version
is kept in ``witness_schema``), not part of the gateway's Alembic chain.

Guarantees:
- ``advance`` is the atomic check-and-persist the spec requires: a
  conditional UPDATE (``WHERE size = old AND root = old root``), or an
  INSERT that does nothing when the row exists, so two submissions racing
  from the same old size cannot both move the record: one wins, the other
  finds nothing to update and is answered 409, and no submission ever
  rolls the record back (sizes only grow). This holds across processes on
  PostgreSQL (the UPDATE waits for the row lock and re-checks its condition)
  and on SQLite (writers are serialized).
- ``record_refusal`` keeps a refused submission whose log signature verified
  but which is inconsistent with what was cosigned (evidence of a fork), in a
  transaction of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import dialect
from app.crypto import merkle
from app.dialect import is_postgres
from app.models.types import UTCDateTime

metadata = MetaData()

schema_version = Table(
    "witness_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
)

log_state = Table(
    "witness_log",
    metadata,
    Column("origin", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("checkpoint", Text, nullable=False),
    Column("cosigned_at", UTCDateTime(), nullable=False),
)

refusal = Table(
    "witness_refusal",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("origin", String(1024), nullable=False),
    Column("status", Integer, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("old_size", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("latest_size", BigInteger, nullable=False),
    Column("submission", Text, nullable=False),
)


def _v1(conn: Connection) -> None:
    for table in (log_state, refusal):
        table.create(conn)


SCHEMA: tuple[Callable[[Connection], None], ...] = (_v1,)
"""Schema steps; step ``i`` brings the database to version ``i + 1``. Append only."""


def _migrate(conn: Connection) -> None:
    if is_postgres(conn):  # two witness processes starting together
        conn.execute(text("SELECT pg_advisory_xact_lock(7265667731)"))
    schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(schema_version.c.version)).scalar()
    if current is None:
        conn.execute(insert(schema_version).values(id=1, version=0))
        current = 0
    if current > len(SCHEMA):
        raise RuntimeError(
            f"the witness database is at schema version {current}, newer than this "
            f"refgate ({len(SCHEMA)}); upgrade refgate"
        )
    for step in SCHEMA[current:]:
        step(conn)
    conn.execute(update(schema_version).values(version=len(SCHEMA)))


async def open_store(url: str) -> AsyncEngine:
    """An engine on the witness database, its schema brought up to date."""
    args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        args["connect_args"] = {"timeout": 30}
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_async_engine(url, **args)
    async with engine.begin() as conn:
        await conn.run_sync(_migrate)
    return engine


@dataclass(frozen=True, slots=True)
class Latest:
    size: int
    root: bytes
    exists: bool


async def latest(engine: AsyncEngine, origin: str) -> Latest:
    """The latest cosigned (size, root) of ``origin``; (0, empty root) if none."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(log_state.c.size, log_state.c.root).where(log_state.c.origin == origin)
            )
        ).first()
    if row is None:
        return Latest(0, merkle.EMPTY_ROOT, False)
    return Latest(int(row[0]), bytes(row[1]), True)


async def advance(
    engine: AsyncEngine, origin: str, old: Latest, size: int, root: bytes, checkpoint: str
) -> bool:
    """Move ``origin`` from ``old`` to ``(size, root)`` if nobody moved it since; atomic."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        if old.exists:
            result = await conn.execute(
                update(log_state)
                .where(
                    log_state.c.origin == origin,
                    log_state.c.size == old.size,
                    log_state.c.root == old.root,
                )
                .values(size=size, root=root, checkpoint=checkpoint, cosigned_at=now)
            )
        else:
            result = await conn.execute(
                dialect.insert(conn, log_state)
                .values(origin=origin, size=size, root=root, checkpoint=checkpoint, cosigned_at=now)
                .on_conflict_do_nothing(index_elements=["origin"])
            )
        return bool(result.rowcount == 1)


async def record_refusal(
    engine: AsyncEngine,
    *,
    origin: str,
    status: int,
    reason: str,
    old_size: int,
    size: int,
    latest_size: int,
    submission: str,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(refusal).values(
                received_at=datetime.now(UTC),
                origin=origin,
                status=status,
                reason=reason,
                old_size=old_size,
                size=size,
                latest_size=latest_size,
                submission=submission,
            )
        )
