"""The one answer to "is this PostgreSQL?", and the dialect's INSERT for upserts.

refgate runs on PostgreSQL in production and on SQLite for a single node and
the tests; the few statements that differ (``ON CONFLICT``, array binds,
``FOR UPDATE SKIP LOCKED``, advisory locks, isolation levels) ask here instead
of comparing dialect names themselves. Anything with a dialect can be asked: an
engine, a connection (sync or async), a session (sync or async) or a dialect.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

Bind = AsyncSession | Session | AsyncEngine | Engine | AsyncConnection | Connection | Dialect

POSTGRESQL = "postgresql"


def dialect_of(bind: Bind) -> Dialect:
    if isinstance(bind, Dialect):
        return bind
    if isinstance(bind, AsyncSession | Session):
        return bind.get_bind().dialect  # a session here is always bound
    return bind.dialect


def is_postgres(bind: Bind) -> bool:
    """Whether ``bind`` talks to PostgreSQL (else it is SQLite)."""
    return dialect_of(bind).name == POSTGRESQL


def insert(bind: Bind, table: Any) -> postgresql.Insert | sqlite.Insert:
    """The dialect's ``INSERT`` (with ``on_conflict_do_nothing``/``_do_update``) into ``table``."""
    return postgresql.insert(table) if is_postgres(bind) else sqlite.insert(table)


def url_is_postgres(url: str) -> bool:
    """Whether a database URL (``postgresql+asyncpg://…``, ``sqlite+…``) is PostgreSQL."""
    return make_url(url).get_backend_name() == POSTGRESQL
