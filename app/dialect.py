"""The one answer to "is this PostgreSQL?", and the dialect's INSERT for upserts.

refgate runs on PostgreSQL in production and on SQLite for a single node and
the tests; the few statements that differ (``ON CONFLICT``, array binds,
``FOR UPDATE SKIP LOCKED``, advisory locks, isolation levels) ask here instead
of comparing dialect names themselves. Anything with a dialect can be asked: an
engine, a connection (sync or async), a session (sync or async) or a dialect.

A session is asked for the bind of the table the statement touches
(``session.get_bind(model)``), not for ``session.bind``: a session bound table by
table (``binds=...``) has no ``.bind``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, FromClause, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

Bind = AsyncSession | Session | AsyncEngine | Engine | AsyncConnection | Connection | Dialect

POSTGRESQL = "postgresql"


def dialect_of(bind: Bind, table: Any = None) -> Dialect:
    """The dialect of ``bind``; for a session, of the bind serving ``table``.

    ``table`` (a table model or a Core ``Table``) matters only for a session bound
    table by table; without it such a session has no answer (UnboundExecutionError).
    """
    if isinstance(bind, Dialect):
        return bind
    if isinstance(bind, AsyncSession | Session):
        if isinstance(table, FromClause):
            return bind.get_bind(clause=table).dialect
        return bind.get_bind(table).dialect
    return bind.dialect


def is_postgres(bind: Bind, table: Any = None) -> bool:
    """Whether ``bind`` (for a session: its bind for ``table``) talks to PostgreSQL."""
    return dialect_of(bind, table).name == POSTGRESQL


def insert(bind: Bind, table: Any) -> postgresql.Insert | sqlite.Insert:
    """The dialect's ``INSERT`` (with ``on_conflict_do_nothing``/``_do_update``) into ``table``."""
    return postgresql.insert(table) if is_postgres(bind, table) else sqlite.insert(table)


def url_is_postgres(url: str) -> bool:
    """Whether a database URL (``postgresql+asyncpg://…``, ``sqlite+…``) is PostgreSQL."""
    return make_url(url).get_backend_name() == POSTGRESQL
